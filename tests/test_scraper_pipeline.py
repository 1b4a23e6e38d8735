"""The whole scrape against a local server: search pages, good and bad images, dedupe, review, sinks.

Every outcome is asserted: which files are on disk, which records the sink got, and
each counter of the report. The database sinks run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import select as socket_select
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.store.image_sink import DbImageSink
from bot.store.models import Image, ScrapeRun
from scraper.errors import SourceError
from scraper.fetch import FetchSettings
from scraper.images import phash_distance
from scraper.pipeline import ImageRecord, KnownImage, Pipeline, ScrapeConfig
from scraper.sinks import MemorySink
from scraper.sources import create_source
from scraper.sources.base import SearchResult, SourceSettings
from scraper.sources.bing import BingSource

from scraper_support import (
    FIXTURES,
    Handler,
    LocalServer,
    bing_page,
    colour_only,
    encode,
    endless,
    flaky,
    google_page,
    picture,
    redirect,
    running_server,
    send,
)

LABEL = "air_jordan_11"
MAX_BYTES = 2_000_000
# A bound for every download and search request, never reached: no route of the full scenario hangs,
# so however busy the machine, a good download is not cut short and the exact counts hold. The one
# route that does hang has its own test, where it is the only download.
WAIT_S = 60.0


def _chelsea_near() -> bytes:
    image = picture("chelsea")
    return encode(image.resize((int(image.width * 0.9), int(image.height * 0.9))), "JPEG", quality=75)


ASTRONAUT = encode(picture("astronaut"), "JPEG", quality=90)
ROCKET = encode(picture("rocket"), "JPEG", quality=90)
GOOD = {  # path -> (bytes, content type)
    "/img/astronaut.jpg": (ASTRONAUT, "image/jpeg"),
    "/img/chelsea.png": (encode(picture("chelsea"), "PNG"), "image/png"),
    "/img/coffee.webp": (encode(picture("coffee"), "WEBP", quality=90), "image/webp"),
    "/img/rocket.jpg": (ROCKET, "image/jpeg"),
    "/img/logo.png": (encode(picture("logo"), "PNG"), "image/png"),  # RGBA: composited on white
    "/img/colorwheel.gif": (encode(picture("colorwheel").convert("P"), "GIF"), "image/gif"),
    "/img/immuno.jpg": (encode(picture("immunohistochemistry"), "JPEG"), "image/jpeg"),  # behind a redirect
    "/img/hubble.jpg": (encode(picture("hubble_deep_field"), "JPEG"), "image/jpeg"),  # 503 first: retried
}
# The order the search page lists them in.
RESULT_PATHS = [
    "/img/astronaut.jpg",
    "/img/chelsea.png",
    "/img/coffee.webp",
    "/img/rocket.jpg",
    "/img/logo.png",
    "/img/colorwheel.gif",
    "/go/immuno",
    "/img/flaky-hubble.jpg",
    "/img/camera.jpg",  # grey: the test classifier says "not footwear" -> review
    "/img/chelsea-near.jpg",  # near-duplicate of chelsea
    "/img/astronaut-copy.jpg",  # exact duplicate of astronaut
    "/img/corrupt.jpg",
    "/img/tiny.png",
    "/img/page.jpg",  # HTML behind a .jpg URL
    "/img/huge.jpg",
    "/img/huge-stream.jpg",
    "/img/missing.jpg",  # 404
    "/loop/a.jpg",
]
EXPECTED_FAILED = {
    "corrupt": 1, "too_small": 1, "not_image": 1, "too_large": 2, "http_404": 1, "redirects": 1,
}


def add_image_routes(server: LocalServer) -> None:
    """Every image the result pages point to, good and bad."""
    for path, (body, content_type) in GOOD.items():
        if path not in ("/img/hubble.jpg",):
            server.add(path, body, content_type)
    server.add_handler("/go/immuno", redirect("/img/immuno.jpg"))
    arm_flaky(server)
    server.add("/img/camera.jpg", encode(picture("camera"), "JPEG", quality=90), "image/jpeg")
    server.add("/img/chelsea-near.jpg", _chelsea_near(), "image/jpeg")
    server.add("/img/astronaut-copy.jpg", ASTRONAUT, "image/jpeg")
    server.add("/img/corrupt.jpg", ROCKET[: len(ROCKET) // 2], "image/jpeg")
    server.add("/img/tiny.png", encode(picture("coffee").resize((16, 12)), "PNG"), "image/png")
    server.add("/img/page.jpg", "<!doctype html><html><body><h1>Shop</h1></body></html>", "image/jpeg")
    server.add_handler("/img/huge.jpg", endless(ROCKET[:64], MAX_BYTES * 2, declare_length=True))
    server.add_handler("/img/huge-stream.jpg", endless(ROCKET[:64], MAX_BYTES * 2, declare_length=False))
    server.add_handler("/loop/a.jpg", redirect("/loop/b.jpg"))
    server.add_handler("/loop/b.jpg", redirect("/loop/a.jpg"))


def hangs_until_the_client_leaves(head: bytes, left: threading.Event) -> Handler:
    """Announce a body, send its first bytes, then nothing more; ``left`` is set when the client closes
    the connection: the server's sign that the client gave up on it (the server never ends it)."""

    def handler(req: BaseHTTPRequestHandler, srv: LocalServer) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", str(len(head) * 10))
        req.end_headers()
        req.wfile.write(head)
        req.wfile.flush()
        req.close_connection = True
        while not srv.release.is_set():  # until the server closes
            readable, _, _ = socket_select.select([req.connection], [], [], 0.1)
            if readable:
                try:
                    if req.connection.recv(1):
                        continue  # the client sent more (it does not): keep waiting
                except ConnectionError:
                    pass
                left.set()  # end of stream or reset: the client closed the connection
                return

    return handler


def arm_flaky(server: LocalServer) -> int:
    """(Re)set the route that fails once with 503; returns its hit count so far."""
    server.add_handler("/img/flaky-hubble.jpg", flaky(1, GOOD["/img/hubble.jpg"][0], "image/jpeg"))
    return server.hits["/img/flaky-hubble.jpg"]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        add_image_routes(srv)
        srv.add("/bing/images/search", bing_page([srv.url(p) for p in RESULT_PATHS]), "text/html; charset=utf-8")
        srv.add("/google/search", google_page([srv.url(p) for p in RESULT_PATHS[:4]]), "text/html")
        srv.add("/google-captcha/search", (FIXTURES / "google_blocked_captcha.html").read_bytes(), "text/html")
        srv.add("/google-jswall/search", (FIXTURES / "google_js_wall_handwritten.html").read_bytes(), "text/html")
        srv.add("/bing-down/images/search", "oops", "text/plain", status=500)
        yield srv


def config(server: LocalServer, images_dir: Path, *, sources: tuple[str, ...] = ("bing",),
           google: str = "/google/search", bing: str = "/bing/images/search",
           timeout_s: float = WAIT_S) -> ScrapeConfig:
    return ScrapeConfig(
        images_dir=images_dir,
        sources=sources,
        source_settings=SourceSettings(
            bing_url=server.url(bing), google_url=server.url(google), timeout_s=WAIT_S, max_pages=3
        ),
        fetch=FetchSettings(
            timeout_s=timeout_s, max_bytes=MAX_BYTES, allow_private=True, retries=1, backoff_s=0.05, host_delay_s=0.0
        ),
        concurrency=4,
        min_side=32,
    )


def stored_files(images_dir: Path) -> dict[str, list[Path]]:
    """Files per folder relative to images_dir (temporary files would show up here too)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(images_dir.rglob("*")):
        if path.is_file():
            out.setdefault(path.parent.relative_to(images_dir).as_posix(), []).append(path)
    return out


def assert_full_scenario(report_dict: dict, records: list, images_dir: Path, server: LocalServer,
                         flaky_hits: int) -> None:
    """The exact outcome of the scenario behind ``RESULT_PATHS``."""
    assert report_dict["found"] == len(RESULT_PATHS) == 18
    assert report_dict["failed"] == EXPECTED_FAILED
    assert report_dict["downloaded"] == 13  # everything that came back as image bytes
    assert report_dict["duplicates"] == 2 and report_dict["near_duplicates"] == 1
    assert report_dict["rejected"] == 1
    assert report_dict["stored"] == 8
    assert report_dict["sources"]["bing"] == {"blocked": False, "found": 18, "error": None, "tried": True}

    by_url = {r.source_url.removeprefix(server.base): r for r in records}
    stored_urls = {u for u, r in by_url.items() if r.status == "train"}
    expected_stored = {
        "/img/astronaut.jpg", "/img/coffee.webp", "/img/rocket.jpg", "/img/logo.png",
        "/img/colorwheel.gif", "/go/immuno", "/img/flaky-hubble.jpg",
    }
    assert expected_stored < stored_urls
    # Chelsea and its near-duplicate: exactly one of them, whichever finished first.
    assert len(stored_urls - expected_stored) == 1
    assert (stored_urls - expected_stored) <= {"/img/chelsea.png", "/img/chelsea-near.jpg"}
    assert {u for u, r in by_url.items() if r.status == "review"} == {"/img/camera.jpg"}
    assert server.hits["/img/flaky-hubble.jpg"] - flaky_hits == 2  # the 503 was retried once

    files = stored_files(images_dir)
    assert set(files) == {LABEL, f"_review/{LABEL}"}
    assert len(files[LABEL]) == 8 and len(files[f"_review/{LABEL}"]) == 1
    for record in records:
        path = images_dir / record.path
        data = path.read_bytes()
        assert path.name == f"{hashlib.sha1(data).hexdigest()}.jpg" == f"{record.sha1}.jpg"
        with PILImage.open(path) as image:
            image.load()
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (record.width, record.height)
        assert record.label == LABEL and record.scraper_source == "bing" and record.query == "air jordan 11"
    phashes = [r.phash for r in records]
    assert all(phash_distance(a, b) > 6 for i, a in enumerate(phashes) for b in phashes[i + 1 :])


def test_full_scrape_into_memory_sink(server: LocalServer, tmp_path: Path) -> None:
    sink = MemorySink()
    seen: list[int] = []
    flaky_hits = arm_flaky(server)
    report = Pipeline(config(server, tmp_path), sink, classifier=colour_only).run(
        LABEL, ["air jordan 11"], 50, progress=lambda r: seen.append(r.processed)
    )
    assert_full_scenario(report.to_dict(), sink.images, tmp_path, server, flaky_hits)
    assert sink.runs == [report]
    assert seen[0] == 0 and seen[-1] == 18 and seen == sorted(seen)
    # RGBA logo composited on white, not black.
    logo = next(r for r in sink.images if r.source_url.endswith("/img/logo.png"))
    with PILImage.open(tmp_path / logo.path) as image:
        assert image.convert("RGB").getpixel((0, 0)) == pytest.approx((255, 255, 255), abs=3)

    # A second run stores nothing new: every image is now a duplicate of the first run's.
    again = Pipeline(config(server, tmp_path), sink, classifier=colour_only).run(LABEL, ["air jordan 11"], 50)
    assert again.stored == 0 and again.rejected == 0 and again.duplicates == 11
    assert len(sink.images) == 9 and len(stored_files(tmp_path)[LABEL]) == 8


def test_without_classifier_nothing_goes_to_review(server: LocalServer, tmp_path: Path) -> None:
    sink = MemorySink()
    report = Pipeline(config(server, tmp_path), sink).run(LABEL, ["air jordan 11"], 4)
    assert report.found == 4 and report.stored == 4 and report.rejected == 0 and not report.failed
    assert all(r.status == "train" for r in sink.images)


def test_known_images_from_earlier_are_duplicates(server: LocalServer, tmp_path: Path) -> None:
    first = MemorySink()
    Pipeline(config(server, tmp_path / "a"), first).run(LABEL, ["air jordan 11"], 2)
    known = [KnownImage(r.sha1, r.phash) for r in first.images]
    sink = MemorySink(known)
    report = Pipeline(config(server, tmp_path / "b"), sink).run("air_jordan_1", ["air jordan 1"], 2)
    assert report.duplicates == 2 and report.stored == 0 and sink.images == []
    assert not (tmp_path / "b").exists() or stored_files(tmp_path / "b") == {}


def test_blocked_google_falls_back_to_bing(server: LocalServer, tmp_path: Path) -> None:
    for wall in ("/google-captcha/search", "/google-jswall/search"):
        sink = MemorySink()
        cfg = config(server, tmp_path / wall.strip("/"), sources=("google", "bing"), google=wall)
        report = Pipeline(cfg, sink).run(LABEL, ["air jordan 11"], 3)
        data = report.to_dict()
        assert data["sources"]["google"] == {"blocked": True, "found": 0, "error": None, "tried": True}
        assert data["sources"]["bing"]["found"] == 3 and not data["sources"]["bing"]["blocked"]
        assert report.stored == 3 and {r.scraper_source for r in sink.images} == {"bing"}


def test_google_results_are_used_and_bing_not_asked(server: LocalServer, tmp_path: Path) -> None:
    sink = MemorySink()
    before = server.hits["/bing/images/search"]
    report = Pipeline(config(server, tmp_path, sources=("google", "bing")), sink).run(LABEL, ["air jordan 11"], 10)
    assert report.found == 4 and report.stored == 4
    assert report.sources["google"].found == 4 and not report.sources["bing"].tried
    assert server.hits["/bing/images/search"] == before


def test_every_source_blocked_reports_blocked_not_empty(server: LocalServer, tmp_path: Path) -> None:
    cfg = config(server, tmp_path, sources=("google",), google="/google-captcha/search")
    report = Pipeline(cfg, MemorySink()).run(LABEL, ["air jordan 11"], 10)
    assert report.found == 0 and report.blocked
    assert report.to_dict()["sources"] == {"google": {"blocked": True, "found": 0, "error": None, "tried": True}}


def test_a_failing_source_is_reported_and_skipped(server: LocalServer, tmp_path: Path) -> None:
    cfg = config(server, tmp_path, sources=("bing", "google"), bing="/bing-down/images/search")
    report = Pipeline(cfg, MemorySink()).run(LABEL, ["air jordan 11"], 10)
    assert report.sources["bing"].error and "HTTP 500" in report.sources["bing"].error
    assert report.sources["google"].found == 4 and report.stored == 4


def test_a_download_that_never_finishes_is_counted_as_a_timeout(server: LocalServer, tmp_path: Path) -> None:
    """The only download of this run hangs, so the short deadline can cut nothing else short."""
    left = threading.Event()
    server.add_handler("/img/hangs.jpg", hangs_until_the_client_leaves(ROCKET[:3000], left))
    server.add("/bing-hangs/images/search", bing_page([server.url("/img/hangs.jpg")]), "text/html; charset=utf-8")
    cfg = config(server, tmp_path, bing="/bing-hangs/images/search", timeout_s=0.5)
    report = Pipeline(cfg, MemorySink()).run(LABEL, ["air jordan 11"], 5)
    data = report.to_dict()
    assert (data["found"], data["downloaded"], data["stored"]) == (1, 0, 0)
    assert data["failed"] == {"timeout": 1}
    assert server.hits["/img/hangs.jpg"] == 1  # a timeout is not retried
    assert left.wait(WAIT_S), "the client never closed the hanging download"
    assert stored_files(tmp_path) == {}


def test_invalid_label_is_refused(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid label"):
        Pipeline(config(server, tmp_path), MemorySink()).run("../../etc", ["x"], 1)


# --- the database sink ------------------------------------------------------------


def test_full_scrape_into_the_database(server: LocalServer, tmp_path: Path,
                                       db_sessions: sessionmaker[Session]) -> None:
    """On SQLite and PostgreSQL, the schema made by the migrations (``db_sessions``), as the bot's."""
    sessions = db_sessions
    data_dir = tmp_path / "var"
    images_dir = data_dir / "images"
    sink = DbImageSink(sessions, data_dir=data_dir, images_dir=images_dir)
    flaky_hits = arm_flaky(server)
    report = Pipeline(config(server, images_dir), sink, classifier=colour_only).run(LABEL, ["air jordan 11"], 50)

    with sessions() as session:
        rows = session.scalars(select(Image).order_by(Image.id)).all()
        runs = session.scalars(select(ScrapeRun)).all()
    assert all(row.path.startswith("images/") and row.source == "scraper" for row in rows)
    records = [
        ImageRecord(r.sha1, r.phash, r.path.removeprefix("images/"), r.label, r.status, r.source_url, r.query,
                    r.scraper_source, r.width, r.height)
        for r in rows
    ]
    assert_full_scenario(report.to_dict(), records, images_dir, server, flaky_hits)
    assert len(runs) == 1 and runs[0].label == LABEL and runs[0].report == report.to_dict()
    assert runs[0].finished_at is not None

    # The database remembers across runs, and refuses a second row with the same sha1.
    again = Pipeline(config(server, images_dir), sink, classifier=colour_only).run(LABEL, ["air jordan 11"], 50)
    assert again.stored == 0 and again.duplicates == 11
    assert sink.add_image(records[0]) is False


def test_a_crashing_classifier_sends_to_review_and_duplicates_skip_it(server: LocalServer, tmp_path: Path) -> None:
    calls: list[tuple[tuple[int, int], str]] = []

    def broken(image: PILImage.Image) -> bool:
        calls.append((image.size, image.mode))
        raise RuntimeError("model not loaded")

    sink = MemorySink()
    cfg = config(server, tmp_path)
    report = Pipeline(cfg, sink, classifier=broken).run(LABEL, ["air jordan 11"], 1)
    assert report.rejected == 1 and report.stored == 0
    assert [r.path for r in sink.images] == [f"_review/{LABEL}/{sink.images[0].sha1}.jpg"]
    assert calls == [((512, 512), "RGB")]  # astronaut, handed over decoded, in RGB

    # The exact copy elsewhere on the page is found a duplicate before the classifier runs.
    again = Pipeline(cfg, sink, classifier=broken).run(LABEL, ["air jordan 11"], 1)
    assert again.duplicates == 1 and len(calls) == 1


def test_unknown_source_names_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sources \\['yahoo'\\]"):
        Pipeline(ScrapeConfig(images_dir=tmp_path, sources=("bing", "yahoo")), MemorySink())


def test_bing_source_pages_with_first_until_enough(server: LocalServer) -> None:
    def paged(req, _srv) -> None:  # noqa: ANN001
        first = int(parse_qs(urlsplit(req.path).query)["first"][0])
        urls = [f"https://img.example.com/{n}.jpg" for n in range(first - 1, first - 1 + 35)]
        send(req, 200, bing_page(urls).encode(), "text/html")

    server.add_handler("/paged/images/search", paged)
    server.requests.clear()
    source = BingSource(SourceSettings(bing_url=server.url("/paged/images/search"), timeout_s=5))
    result = source.search("air jordan 11", 80)
    source.close()
    assert [item.url for item in result.items] == [f"https://img.example.com/{n}.jpg" for n in range(80)]
    firsts = [parse_qs(urlsplit(r).query)["first"][0] for r in server.requests if r.startswith("/paged/")]
    assert firsts == ["1", "36", "71"]


@pytest.mark.parametrize("name", ["bing", "google"])
def test_http_sources_stop_at_nothing_new_report_blocks_and_raise_on_errors(server: LocalServer, name: str) -> None:
    """The paging rules ``PagedHttpSource`` gives both plain HTTP engines."""
    urls = [f"https://img.example.com/{n}.jpg" for n in range(3)]
    page = bing_page(urls) if name == "bing" else google_page(urls)
    refusal = "<html><div id='b_captcha'>verify you are a human</div></html>"
    answers: dict[str, list[tuple[int, str]]] = {
        "same": [(200, page), (200, page), (200, page)],  # page 2 adds nothing: stop there
        "blocked": [(200, page), (429, refusal)],  # refused after page 1: keep what came before
        "broken": [(500, "<html>oops</html>")],
    }

    def scripted(req, _srv) -> None:  # noqa: ANN001
        path = urlsplit(req.path).path  # /scripted/<script>/search
        calls = sum(r.startswith(path) for r in server.requests)  # this request included
        status, body = answers[path.split("/")[2]][calls - 1]
        send(req, status, body.encode(), "text/html")

    def search(script: str) -> SearchResult:
        server.add_handler(f"/scripted/{script}/search", scripted)
        source = create_source(name, SourceSettings(bing_url=server.url(f"/scripted/{script}/search"),
                                                    google_url=server.url(f"/scripted/{script}/search"), timeout_s=5))
        try:
            return source.search("air jordan 11", 100)
        finally:
            source.close()

    server.requests.clear()
    same = search("same")
    assert not same.blocked and [i.url for i in same.items] == urls
    assert sum(r.startswith("/scripted/same/") for r in server.requests) == 2
    blocked = search("blocked")
    assert blocked.blocked and [i.url for i in blocked.items] == urls
    with pytest.raises(SourceError, match="HTTP 500"):
        search("broken")
