"""The browser source in real headless Chromium against a local infinite-scroll results page.

The page shows 20 results at first, 20 more each time the window reaches the bottom,
stops at 100 until "Show more results" is pressed, then goes on to 250. Collecting
150 therefore needs scrolling and the button. Also run through chromedriver as a
remote WebDriver endpoint, the way a Selenium Grid is used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scraper.sources.base import SourceSettings
from scraper.sources.google_selenium import GoogleSeleniumSource

from scraper_support import FIXTURES, LocalServer, running_server

pytestmark = [pytest.mark.chromium, pytest.mark.slow]

INFINITE_PAGE = """<!doctype html>
<html><head><title>air jordan 11 - Google Search</title>
<style>a.r { display: block; height: 120px; border-bottom: 1px solid #ccc; }</style></head>
<body>
<div id="results"></div>
<input type="button" class="mye4qd" value="Show more results" style="display:none">
<div id="end" style="display:none">Looks like you've reached the end</div>
<script>
const results = document.getElementById('results');
const button = document.querySelector('input.mye4qd');
let shown = 0, limit = 100;
const total = 250;
function add(count) {
  for (let i = 0; i < count && shown < limit; i++, shown++) {
    const a = document.createElement('a');
    a.className = 'r';
    a.href = '/imgres?imgurl=' + encodeURIComponent(location.origin + '/img/' + shown + '.jpg')
           + '&imgrefurl=' + encodeURIComponent('https://shop.example.com/' + shown);
    const img = document.createElement('img');
    img.src = 'data:image/gif;base64,R0lGODlhAQABAAAAACw=';
    a.appendChild(img);
    a.appendChild(document.createTextNode('result ' + shown));
    results.appendChild(a);
  }
  if (shown >= limit && limit < total) button.style.display = 'block';
  if (shown >= total) document.getElementById('end').style.display = 'block';
}
add(20);
window.addEventListener('scroll', () => {
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 50) setTimeout(() => add(20), 100);
});
button.addEventListener('click', () => { button.style.display = 'none'; limit = total; add(20); });
</script>
</body></html>
"""


def binary(env: str, default: str) -> str:
    path = os.environ.get(env) or default
    if not shutil.which(path):
        pytest.fail(f"{path} not found: install chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        srv.add("/selenium/search", INFINITE_PAGE, "text/html; charset=utf-8")
        srv.add("/captcha/search", (FIXTURES / "google_blocked_captcha.html").read_bytes(), "text/html")
        yield srv


def settings(server: LocalServer, path: str = "/selenium/search", selenium_url: str | None = None) -> SourceSettings:
    return SourceSettings(
        google_url=server.url(path),
        selenium_url=selenium_url,
        chromium_path=binary("SNEAKERBOT_TEST_CHROMIUM", "/usr/bin/chromium"),
        chromedriver_path=binary("SNEAKERBOT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"),
        timeout_s=20,
        selenium_settle_s=1.0,
    )


def assert_collected_past_show_more(result, server: LocalServer, count: int) -> None:  # noqa: ANN001
    urls = [item.url for item in result.items]
    assert not result.blocked
    assert len(urls) == len(set(urls)) == count
    assert urls == [server.url(f"/img/{i}.jpg") for i in range(count)]  # in page order, past the first 100
    assert result.items[0].page_url == "https://shop.example.com/0"


def test_scrolls_and_presses_show_more_in_headless_chromium(server: LocalServer) -> None:
    source = GoogleSeleniumSource(settings(server))
    try:
        assert_collected_past_show_more(source.search("air jordan 11", 150), server, 150)
        # Asking for more than the page has ends at the page's end (250), not in an endless loop.
        everything = source.search("air jordan 11", 1000)
        assert len(everything.items) == 250 and not everything.blocked
    finally:
        source.close()


def test_captcha_in_the_browser_is_blocked(server: LocalServer) -> None:
    source = GoogleSeleniumSource(settings(server, "/captcha/search"))
    try:
        result = source.search("air jordan 11", 50)
    finally:
        source.close()
    assert result.blocked and result.items == []


@pytest.fixture()
def remote_endpoint(tmp_path: Path) -> Iterator[str]:
    """chromedriver speaking WebDriver on a local port: a one-node stand-in for a Selenium Grid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    driver = binary("SNEAKERBOT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
    process = subprocess.Popen(
        [driver, f"--port={port}", "--allowed-ips=127.0.0.1", f"--log-path={tmp_path / 'chromedriver.log'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_remote_webdriver_when_selenium_url_is_set(server: LocalServer, remote_endpoint: str) -> None:
    source = GoogleSeleniumSource(settings(server, selenium_url=remote_endpoint))
    try:
        assert_collected_past_show_more(source.search("air jordan 11", 120), server, 120)
    finally:
        source.close()
