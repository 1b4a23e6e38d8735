"""The sources' pure parsers on saved result pages.

Real Bing captures, Google's real CAPTCHA, hand-written Google pages.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from bs4 import BeautifulSoup

from scraper.catalogue import AIR_JORDAN_NUMBERS, BUILTIN_CATALOGUE, builtin_entry, is_valid_label
from scraper.sources import available_sources, bing, create_source, google
from scraper.sources.base import SourceSettings

from scraper_support import FIXTURES


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def mediaurls(page: bytes) -> set[str]:
    """Every full-size URL the page carries in its percent-encoded detail links (an independent reading)."""
    soup = BeautifulSoup(page, "lxml")
    return {u for a in soup.find_all(href=True) for u in parse_qs(urlparse(a["href"]).query).get("mediaurl", [])}


@pytest.mark.parametrize(("name", "expected"), [("bing_full_page.html", 27), ("bing_full_page_rtl.html", 35)])
def test_bing_parse_gets_every_full_size_url_once(name: str, expected: int) -> None:
    page = read(name)
    items = bing.parse(page)
    urls = [item.url for item in items]
    assert len(urls) == expected
    assert len(set(urls)) == expected
    assert set(urls) == mediaurls(page)
    assert all(url.startswith(("http://", "https://")) for url in urls)
    # Thumbnails are Bing's own; the full-size URLs are not.
    assert all(item.thumbnail_url and ".bing.net/th" in item.thumbnail_url for item in items)
    assert not any("bing.net" in url or "bing.com" in url for url in urls)


def test_bing_parse_keeps_page_order_and_metadata() -> None:
    first = bing.parse(read("bing_full_page.html"))[0]
    assert first.url == (
        "https://fbi.cults3d.com/uploaders/20060779/illustration-file/"
        "9407aa86-1de0-4ed5-8e44-9118c39ee156/GolangGopher.png"
    )
    assert first.page_url == "https://cults3d.com/en/3d-model/art/go-golang-gopher-mascots"
    assert first.title and "Gopher" in first.title


def test_bing_parse_unescapes_query_strings_in_urls() -> None:
    urls = [item.url for item in bing.parse(read("bing_full_page.html"))]
    linkedin = [u for u in urls if "media.licdn.com" in u]
    assert linkedin and all("&amp;" not in u and "&v=beta&t=" in u for u in linkedin)


def test_bing_real_pages_are_not_blocked() -> None:
    assert not bing.is_blocked(read("bing_full_page.html"))
    assert bing.is_blocked(b"<html><div id='b_captcha'>verify</div></html>")
    assert bing.is_blocked(b"", status=429)


def test_google_captcha_page_is_blocked_not_empty() -> None:
    page = read("google_blocked_captcha.html")
    assert google.parse(page) == []
    assert google.is_blocked(page)


def test_google_javascript_wall_is_blocked() -> None:
    page = read("google_js_wall_handwritten.html")
    assert google.parse(page) == []
    assert google.is_blocked(page)


def test_google_sorry_redirect_and_429_are_blocked() -> None:
    assert google.is_blocked(b"<html></html>", url="https://www.google.com/sorry/index?continue=x")
    assert google.is_blocked(b"<html></html>", status=429)


def test_google_parse_results_page() -> None:
    page = read("google_results_handwritten.html")
    items = google.parse(page)
    assert [item.url for item in items] == [
        "https://cdn.example.com/aj11/concord.jpg",
        "https://img.example.org/shoes/aj11-bred.png",
        "https://images.example.com/aj11/cool-grey.jpg?w=1200&q=90",
        "https://legacy.example.net/aj11-space-jam.jpg",
    ]
    assert items[0].page_url == "https://shop.example.com/aj11-concord"
    assert items[0].title == "Air Jordan 11 Concord"
    assert not google.is_blocked(page)


def test_google_empty_results_page_is_not_blocked() -> None:
    assert not google.is_blocked(b"<html><body><div id='islrg'></div>No results</body></html>")


def test_registry_builds_every_source_and_rejects_unknown() -> None:
    assert available_sources() == ["bing", "google", "google-selenium"]
    for name in available_sources():
        source = create_source(name, SourceSettings())
        assert source.name == name
        source.close()  # the browser source starts Chromium lazily: nothing to quit here
    with pytest.raises(ValueError, match="available: bing, google, google-selenium"):
        create_source("yahoo", SourceSettings())


def test_catalogue_has_the_starter_classes() -> None:
    labels = [entry.label for entry in BUILTIN_CATALOGUE]
    assert len(labels) == len(set(labels)) == 32
    assert labels[0] == "air_jordan_1" and labels[-1] == "air_jordan_2012"
    assert {n for n in AIR_JORDAN_NUMBERS} == {*range(1, 24), *range(28, 33), 2009, 2010, 2011, 2012}
    entry = builtin_entry("air_jordan_11")
    assert entry is not None and entry.display_name == "Air Jordan 11"
    assert entry.queries and all("jordan 11" in q for q in entry.queries)
    assert all(is_valid_label(label) for label in labels)
    assert builtin_entry("air_jordan_24") is None
    assert not is_valid_label("../etc") and not is_valid_label("Air Jordan")


def test_building_the_bing_source_does_not_import_selenium() -> None:
    import subprocess
    import sys

    code = ("import sys; from scraper.sources import SourceSettings, available_sources, create_source; "
            "create_source('bing', SourceSettings()); "
            "assert 'selenium' not in sys.modules, 'selenium imported'; "
            "assert available_sources() == ['bing', 'google', 'google-selenium']")
    subprocess.run([sys.executable, "-c", code], check=True)
