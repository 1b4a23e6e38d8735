"""Safe downloads against a real local HTTP server: limits, sniffing, retries, redirects, address checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from scraper.errors import (
    FetchTimeout,
    HTTPStatusError,
    NotAnImage,
    RefusedAddress,
    RefusedURL,
    TooLarge,
    TooManyRedirects,
)
from scraper.fetch import Fetcher, FetchSettings, is_public_address, resolve_host, sniff_image

from scraper_support import (
    Handler,
    LocalServer,
    encode,
    endless,
    flaky,
    never_finishes,
    picture,
    redirect,
    running_server,
    send,
)

JPEG = encode(picture("astronaut"), "JPEG", quality=90)
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        srv.add("/img/good.jpg", JPEG, "image/jpeg")
        srv.add("/img/good-no-type", JPEG, "text/html")  # wrong type, right bytes: accepted
        srv.add("/img/page.jpg", "<!doctype html><html><body>a shop page</body></html>", "image/jpeg")
        srv.add_handler("/img/huge-declared.jpg", endless(JPEG[:64], LIMIT * 3, declare_length=True))
        srv.add_handler("/img/huge-streamed.jpg", endless(JPEG[:64], LIMIT * 3, declare_length=False))
        srv.add_handler("/img/hangs.jpg", never_finishes(JPEG[:2000]))
        srv.add_handler("/img/flaky-twice.jpg", flaky(2, JPEG, "image/jpeg"))
        srv.add_handler("/img/flaky-once-no-retry.jpg", flaky(1, JPEG, "image/jpeg"))
        srv.add_handler("/loop/a.jpg", redirect("/loop/b.jpg"))
        srv.add_handler("/loop/b.jpg", redirect("/loop/a.jpg"))
        srv.add_handler("/hop/1", redirect("/hop/2"))
        srv.add_handler("/hop/2", redirect("/img/good.jpg"))
        for i in range(8):
            srv.add_handler(f"/chain/{i}", redirect(f"/chain/{i + 1}"))
        yield srv


def fetcher(**overrides: object) -> Fetcher:
    options: dict[str, object] = {
        "timeout_s": 1.0, "max_bytes": LIMIT, "allow_private": True, "retries": 2, "backoff_s": 0.01,
        "host_delay_s": 0.0,
    }
    options.update(overrides)
    return Fetcher(FetchSettings(**options))  # type: ignore[arg-type]


def test_downloads_an_image_and_trusts_bytes_not_headers(server: LocalServer) -> None:
    result = fetcher().fetch(server.url("/img/good.jpg"))
    assert result.content == JPEG and result.kind == "jpeg"
    assert fetcher().fetch(server.url("/img/good-no-type")).content == JPEG


def test_chunked_bodies_are_read_whole(server: LocalServer) -> None:
    def chunked(req, _srv) -> None:  # noqa: ANN001
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()
        for start in range(0, len(JPEG), 7000):
            part = JPEG[start : start + 7000]
            req.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            req.wfile.flush()
        req.wfile.write(b"0\r\n\r\n")

    server.add_handler("/img/chunked.jpg", chunked)
    assert fetcher().fetch(server.url("/img/chunked.jpg")).content == JPEG


def test_html_behind_a_jpg_url_is_not_an_image(server: LocalServer) -> None:
    with pytest.raises(NotAnImage):
        fetcher().fetch(server.url("/img/page.jpg"))


@pytest.mark.parametrize("path", ["/img/huge-declared.jpg", "/img/huge-streamed.jpg"])
def test_bodies_over_the_limit_are_refused(server: LocalServer, path: str) -> None:
    with pytest.raises(TooLarge):
        fetcher().fetch(server.url(path))


def test_a_download_that_never_finishes_times_out_without_retry(server: LocalServer) -> None:
    before = server.hits["/img/hangs.jpg"]
    with pytest.raises(FetchTimeout):
        fetcher(timeout_s=0.5).fetch(server.url("/img/hangs.jpg"))
    assert server.hits["/img/hangs.jpg"] == before + 1


def test_404_is_reported_with_its_status_and_not_retried(server: LocalServer) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        fetcher().fetch(server.url("/img/missing.jpg"))
    assert caught.value.reason == "http_404"
    assert server.hits["/img/missing.jpg"] == 1


def test_server_errors_are_retried_with_backoff(server: LocalServer) -> None:
    assert fetcher(retries=2).fetch(server.url("/img/flaky-twice.jpg")).content == JPEG
    assert server.hits["/img/flaky-twice.jpg"] == 3
    with pytest.raises(HTTPStatusError) as caught:
        fetcher(retries=0).fetch(server.url("/img/flaky-once-no-retry.jpg"))
    assert caught.value.reason == "http_503"


def test_redirects_are_followed_and_loops_end(server: LocalServer) -> None:
    result = fetcher().fetch(server.url("/hop/1"))
    assert result.final_url == server.url("/img/good.jpg") and result.content == JPEG
    with pytest.raises(TooManyRedirects):
        fetcher().fetch(server.url("/loop/a.jpg"))
    with pytest.raises(TooManyRedirects):
        fetcher(max_redirects=5).fetch(server.url("/chain/0"))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA", "http:///x.jpg"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(RefusedURL):
        fetcher().fetch(url)


def test_loopback_is_refused_unless_allowed(server: LocalServer) -> None:
    before = server.hits["/img/good.jpg"]
    with pytest.raises(RefusedAddress):
        fetcher(allow_private=False).fetch(server.url("/img/good.jpg"))
    assert server.hits["/img/good.jpg"] == before  # never contacted


def test_every_redirect_hop_is_checked(server: LocalServer) -> None:
    """A public-looking host that redirects to a loopback address is stopped at the second hop."""

    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"] if host == "localhost" else resolve_host(host, port)

    port = server.base.rsplit(":", 1)[1]
    server.add_handler("/to-loopback", redirect(server.url("/img/good.jpg")))
    before = server.hits["/img/good.jpg"]
    strict = Fetcher(FetchSettings(allow_private=False, host_delay_s=0, timeout_s=2), resolver=resolver)
    with pytest.raises(RefusedAddress):
        strict.fetch(f"http://localhost:{port}/to-loopback")
    assert server.hits["/to-loopback"] == 1 and server.hits["/img/good.jpg"] == before


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
        ("192.168.0.10", False), ("172.16.5.4", False), ("169.254.169.254", False), ("100.64.0.1", False),
        ("0.0.0.0", False), ("::1", False), ("::ffff:127.0.0.1", False), ("fe80::1", False), ("224.0.0.1", False),
    ],
)
def test_public_address_check(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tiff")],
)
def test_sniffing_recognises_image_formats(fmt: str, kind: str) -> None:
    data = encode(picture("chelsea"), fmt)
    assert sniff_image(data[:16]) == kind


@pytest.mark.parametrize("head", [b"<!doctype html>", b"%PDF-1.7\n", b"{\"a\": 1}", b"GIF8", b""])
def test_sniffing_rejects_other_bytes(head: bytes) -> None:
    assert sniff_image(head) is None


# --- retries: urllib3's Retry on the session, held to the download's bounds -------------------------


def answers(*steps: tuple[int, dict[str, str]], then: bytes = JPEG) -> tuple[Handler, list[float]]:
    """A handler that answers ``steps`` (status, headers) in turn, then ``then``; and when each hit came."""
    hits: list[float] = []

    def handler(req: BaseHTTPRequestHandler, _srv: LocalServer) -> None:
        hits.append(time.monotonic())
        if len(hits) <= len(steps):
            status, headers = steps[len(hits) - 1]
            send(req, status, b"busy", "text/plain", headers)
        else:
            send(req, 200, then, "image/jpeg")

    return handler, hits


def test_a_429_is_retried_after_the_wait_its_retry_after_asks_for(server: LocalServer) -> None:
    handler, hits = answers((429, {"Retry-After": "1"}))
    server.add_handler("/img/rate-limited.jpg", handler)
    assert fetcher(timeout_s=5.0, backoff_s=0.01).fetch(server.url("/img/rate-limited.jpg")).content == JPEG
    assert len(hits) == 2
    assert hits[1] - hits[0] >= 0.95  # waited the second it asked for, not the 0.01 s backoff


def test_retries_stop_at_the_configured_count(server: LocalServer) -> None:
    handler, hits = answers(*[(429, {"Retry-After": "0"})] * 10)
    server.add_handler("/img/always-429.jpg", handler)
    with pytest.raises(HTTPStatusError) as caught:
        fetcher(retries=3).fetch(server.url("/img/always-429.jpg"))
    assert caught.value.reason == "http_429"
    assert len(hits) == 4  # the first attempt and 3 retries


def test_a_retry_after_past_the_deadline_is_not_waited(server: LocalServer) -> None:
    handler, hits = answers((429, {"Retry-After": "120"}), (503, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    server.add_handler("/img/come-back-later.jpg", handler)
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as caught:
        fetcher(timeout_s=2.0).fetch(server.url("/img/come-back-later.jpg"))
    assert caught.value.reason == "http_429" and len(hits) == 1
    assert time.monotonic() - started < 1.0


def test_an_unreadable_retry_after_falls_back_to_the_backoff(server: LocalServer) -> None:
    handler, hits = answers((503, {"Retry-After": "soon-ish"}))
    server.add_handler("/img/odd-retry-after.jpg", handler)
    assert fetcher().fetch(server.url("/img/odd-retry-after.jpg")).content == JPEG
    assert len(hits) == 2


def test_the_endless_body_of_an_answer_to_retry_is_not_read(server: LocalServer) -> None:
    """urllib3 reads a retried answer's body to the end: ours is closed unread, within the deadline."""
    hits: list[float] = []

    def endless_503(req: BaseHTTPRequestHandler, _srv: LocalServer) -> None:
        hits.append(time.monotonic())
        req.send_response(503)
        req.send_header("Content-Type", "text/plain")
        req.send_header("Connection", "close")
        req.end_headers()
        req.close_connection = True
        while True:  # until the client hangs up (BrokenPipeError ends the handler)
            req.wfile.write(b"\0" * 65536)

    server.add_handler("/img/endless-503.jpg", endless_503)
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as caught:
        fetcher(timeout_s=3.0, retries=2).fetch(server.url("/img/endless-503.jpg"))
    assert caught.value.reason == "http_503" and len(hits) == 3
    assert time.monotonic() - started < 2.0


def test_a_dropped_connection_is_retried(server: LocalServer) -> None:
    hits: list[float] = []

    def hang_up_once(req: BaseHTTPRequestHandler, _srv: LocalServer) -> None:
        hits.append(time.monotonic())
        if len(hits) == 1:
            req.close_connection = True  # no answer at all: the client sees the connection end
            return
        send(req, 200, JPEG, "image/jpeg")

    server.add_handler("/img/hang-up-once.jpg", hang_up_once)
    assert fetcher().fetch(server.url("/img/hang-up-once.jpg")).content == JPEG
    assert len(hits) == 2


def test_a_server_that_never_answers_times_out_without_retry(server: LocalServer) -> None:
    hits: list[float] = []

    def silent(req: BaseHTTPRequestHandler, srv: LocalServer) -> None:
        hits.append(time.monotonic())
        srv.release.wait(30)
        req.close_connection = True

    server.add_handler("/img/silent.jpg", silent)
    with pytest.raises(FetchTimeout):
        fetcher(timeout_s=0.5).fetch(server.url("/img/silent.jpg"))
    assert len(hits) == 1
