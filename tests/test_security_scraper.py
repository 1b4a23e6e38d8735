"""The scraper reaches only public http(s) addresses, on every redirect hop (SSRF).

Without internet, "a public first hop" is made with the fetcher's injectable resolver: the
address check sees ``localhost`` as a public address while requests still connects to the
local test server, which then redirects to a private, loopback, link-local or non-http
target. That hop must be refused before any connection. ``Fetcher.check_url`` (the check
of one hop) is also tested directly, and the default of ``SNEAKERBOT_SCRAPER_ALLOW_PRIVATE``
is checked to be off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from scraper.errors import ConnectionFailed, RefusedAddress, RefusedURL
from scraper.fetch import Fetcher, FetchSettings, is_public_address, resolve_host
from scraper.pipeline import Pipeline, ScrapeConfig
from scraper.sinks import MemorySink
from scraper.sources.base import ImageItem, SearchResult

from scraper_support import LocalServer, encode, picture, redirect, running_server

JPEG = encode(picture("astronaut").resize((120, 120)), "JPEG")
PUBLIC = "93.184.216.34"  # what the injected resolver answers for the "public" first hop

# Where a redirect from a public host must never lead. {port} is the local server's.
FORBIDDEN_TARGETS = [
    ("http://127.0.0.1:{port}/img.jpg", RefusedAddress),
    ("http://127.1:{port}/img.jpg", RefusedAddress),  # short IPv4 form
    ("http://2130706433:{port}/img.jpg", RefusedAddress),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001:{port}/img.jpg", RefusedAddress),  # and in hex
    ("http://[::1]:{port}/img.jpg", RefusedAddress),
    ("http://[::ffff:127.0.0.1]:{port}/img.jpg", RefusedAddress),
    ("http://[64:ff9b::7f00:1]:{port}/img.jpg", RefusedAddress),  # NAT64 of 127.0.0.1
    ("http://0.0.0.0:{port}/img.jpg", RefusedAddress),
    ("http://10.1.2.3/img.jpg", RefusedAddress),
    ("http://192.168.1.1/img.jpg", RefusedAddress),
    ("http://172.16.0.1/img.jpg", RefusedAddress),
    ("http://100.64.0.1/img.jpg", RefusedAddress),  # carrier-grade NAT
    ("http://169.254.169.254/latest/meta-data/", RefusedAddress),  # cloud metadata
    ("http://[fe80::1]/img.jpg", RefusedAddress),
    ("http://[fd00::1]/img.jpg", RefusedAddress),
    ("file:///etc/passwd", RefusedURL),
    ("ftp://127.0.0.1/img.jpg", RefusedURL),
    ("ftp://example.com/img.jpg", RefusedURL),
    ("gopher://127.0.0.1:6379/_INFO", RefusedURL),
    ("dict://127.0.0.1:11211/stats", RefusedURL),
    ("data:image/jpeg;base64,/9j/4AAQ", RefusedURL),
    ("javascript:alert(1)", RefusedURL),
    ("http://127.0.0.1\\@localhost:{port}/img.jpg", RefusedURL),  # urllib.parse sees localhost, urllib3 127.0.0.1
    ("http://[::1/img.jpg", RefusedURL),  # no URL parser accepts it
]


class RecordingFetcher(Fetcher):
    """A fetcher that records every URL it actually requests (to prove a refused hop is never contacted)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.requested: list[str] = []

    def _get(self, url: str, deadline: float) -> requests.Response:
        self.requested.append(url)
        return super()._get(url, deadline)


def localhost_is_public(host: str, port: int) -> list[str]:
    """The address check's view: ``localhost`` looks public; every other name resolves for real."""
    return [PUBLIC] if host == "localhost" else resolve_host(host, port)


def strict(**overrides: object) -> RecordingFetcher:
    options: dict[str, object] = {"allow_private": False, "timeout_s": 2.0, "retries": 0, "host_delay_s": 0.0}
    options.update(overrides)
    return RecordingFetcher(FetchSettings(**options), resolver=localhost_is_public)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        srv.add("/img.jpg", JPEG, "image/jpeg")
        yield srv


def port_of(server: LocalServer) -> str:
    return server.base.rsplit(":", 1)[1]


# --- end to end: a public first hop, a forbidden second one ---------------------------------
def test_a_public_first_hop_is_followed(server: LocalServer) -> None:
    """The control case: the injected resolver really makes the first hop pass the check."""
    server.add_handler("/to-public", redirect(f"http://localhost:{port_of(server)}/img.jpg"))
    fetcher = strict()
    result = fetcher.fetch(f"http://localhost:{port_of(server)}/to-public")
    assert result.content == JPEG and len(fetcher.requested) == 2


@pytest.mark.parametrize(("target", "error"), FORBIDDEN_TARGETS)
def test_a_redirect_to_a_forbidden_target_is_refused_before_connecting(
    server: LocalServer, target: str, error: type[Exception]
) -> None:
    port = port_of(server)
    path = f"/to-{abs(hash(target))}"
    server.add_handler(path, redirect(target.format(port=port)))
    before = server.hits["/img.jpg"]
    fetcher = strict()
    with pytest.raises(error):
        fetcher.fetch(f"http://localhost:{port}{path}")
    assert server.hits[path] == 1  # the public hop was fetched ...
    assert fetcher.requested == [f"http://localhost:{port}{path}"]  # ... and nothing after it
    assert server.hits["/img.jpg"] == before


def test_every_hop_of_a_longer_chain_is_checked(server: LocalServer) -> None:
    """Two public hops, then loopback: refused at the third."""
    port = port_of(server)
    server.add_handler("/chain-a", redirect(f"http://localhost:{port}/chain-b"))
    server.add_handler("/chain-b", redirect(f"http://127.0.0.1:{port}/img.jpg"))
    fetcher = strict()
    with pytest.raises(RefusedAddress):
        fetcher.fetch(f"http://localhost:{port}/chain-a")
    assert fetcher.requested == [f"http://localhost:{port}/chain-a", f"http://localhost:{port}/chain-b"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.1", "2130706433"])
def test_a_loopback_first_url_is_refused_before_connecting(server: LocalServer, host: str) -> None:
    """The real resolver, allow_private off: the local server is never contacted."""
    before = server.hits["/img.jpg"]
    fetcher = RecordingFetcher(FetchSettings(allow_private=False, timeout_s=2.0, retries=0, host_delay_s=0.0))
    with pytest.raises(RefusedAddress):
        fetcher.fetch(f"http://{host}:{port_of(server)}/img.jpg")
    assert fetcher.requested == [] and server.hits["/img.jpg"] == before


def test_allow_private_lets_tests_reach_the_local_server(server: LocalServer) -> None:
    fetcher = RecordingFetcher(FetchSettings(allow_private=True, timeout_s=2.0, retries=0, host_delay_s=0.0))
    assert fetcher.fetch(f"http://127.0.0.1:{port_of(server)}/img.jpg").content == JPEG


def test_the_pipeline_uses_the_check(server: LocalServer, tmp_path: Path) -> None:
    """Search results pointing at the local network are counted as refused and nothing is stored."""

    class Results:
        name = "static"

        def search(self, query: str, max_items: int) -> SearchResult:
            return SearchResult([ImageItem(f"http://127.0.0.1:{port_of(server)}/img.jpg"),
                                 ImageItem("http://169.254.169.254/latest/meta-data/"),
                                 ImageItem("file:///etc/passwd")])

        def close(self) -> None:
            pass

    before = server.hits["/img.jpg"]
    config = ScrapeConfig(images_dir=tmp_path / "images", sources=("static",), concurrency=2,
                          fetch=FetchSettings(allow_private=False, timeout_s=2.0, retries=0, host_delay_s=0.0))
    sink = MemorySink()
    report = Pipeline(config, sink, source_factory=lambda name, settings: Results()).run("air_jordan_1", ["q"], 5)
    assert report.stored == 0 and sink.images == []
    assert report.failed == {"private_address": 2, "bad_scheme": 1}, report.to_dict()
    assert server.hits["/img.jpg"] == before and not (tmp_path / "images").exists()


# --- one hop's check, directly -------------------------------------------------------------------
RESOLVES = {
    "cdn.example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:4700:4700::1111"],
    "internal.example.com": ["10.0.0.5"],
    "metadata.example.com": ["169.254.169.254"],
    "half.example.com": ["93.184.216.34", "192.168.0.7"],  # one private answer is enough to refuse
    "nat64.example.com": ["64:ff9b::a00:1"],  # 10.0.0.1 behind a NAT64 prefix
    "sixtofour.example.com": ["2002:7f00:1::1"],  # 127.0.0.1 inside 6to4
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "sitelocal.example.com": ["fec0::1"],
    "nothing.example.com": [],
}


def table_resolver(host: str, port: int) -> list[str]:
    if host not in RESOLVES:
        raise AssertionError(f"resolved an unexpected host {host!r}")
    return RESOLVES[host]


def hop_checker(allow_private: bool = False) -> Fetcher:
    return Fetcher(FetchSettings(allow_private=allow_private), resolver=table_resolver)


@pytest.mark.parametrize("url", ["https://cdn.example.com/a.jpg", "http://cdn.example.com:8080/a b.jpg",
                                 "https://v6.example.com/x.png?size=large#top", "HTTPS://CDN.example.com/A.JPG"])
def test_public_hosts_pass_the_hop_check(url: str) -> None:
    prepared, host = hop_checker().check_url(url)
    assert host in RESOLVES and prepared.lower().startswith(("http://", "https://"))


@pytest.mark.parametrize("host", ["internal.example.com", "metadata.example.com", "half.example.com",
                                  "nat64.example.com", "sixtofour.example.com", "mapped.example.com",
                                  "sitelocal.example.com"])
def test_hosts_resolving_to_non_public_addresses_fail_the_hop_check(host: str) -> None:
    with pytest.raises(RefusedAddress):
        hop_checker().check_url(f"https://{host}/a.jpg")
    assert hop_checker(allow_private=True).check_url(f"https://{host}/a.jpg")[1] == host


def test_a_host_without_addresses_fails_closed() -> None:
    with pytest.raises(ConnectionFailed):
        hop_checker().check_url("https://nothing.example.com/a.jpg")


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://cdn.example.com/a.jpg", "gopher://cdn.example.com/", "data:,x", "javascript:x",
    "//cdn.example.com/a.jpg", "cdn.example.com/a.jpg", "http:///a.jpg", "http://cdn.example.com:99999/a.jpg",
    "http://[::1/a.jpg", "http://cdn.example.com\\@internal.example.com/", "http://internal.example.com\\@cdn.example.com/",
    "http://cdn.example.com\t@internal.example.com/", "http://cdn.example.com\r\n@internal.example.com/",
])
def test_malformed_ambiguous_or_non_http_urls_fail_the_hop_check_even_when_private_is_allowed(url: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(RefusedURL):
            hop_checker(allow_private).check_url(url)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True), ("2606:4700:4700::1111", True), ("64:ff9b::5db8:d822", True),  # NAT64 of a public one
        ("64:ff9b::7f00:1", False), ("64:ff9b::a00:1", False), ("64:ff9b:1::a00:1", False),
        ("2002:7f00:1::1", False), ("2002:a00:1::1", False), ("::7f00:1", False), ("::a00:1", False),
        ("::ffff:0:7f00:1", False), ("fec0::1", False), ("fe80::1%eth0", False), ("ff02::1", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False), ("not an address", False), ("", False),
    ],
)
def test_addresses_that_carry_a_private_ipv4_one_are_not_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_private_addresses_are_refused_by_default() -> None:
    """``SNEAKERBOT_SCRAPER_ALLOW_PRIVATE`` is off unless set, and so is the fetcher's own default."""
    from bot.settings import Settings

    assert Settings.model_fields["scraper_allow_private"].default is False
    assert FetchSettings().allow_private is False
