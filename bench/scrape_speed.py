"""Scrape throughput: images stored per second from a local server with 50 ms latency per response.

    .venv/bin/python -m bench.scrape_speed [--images 200] [--concurrency 8] [--latency 0.05]

A threaded HTTP server on 127.0.0.1 serves one Bing-style results page and the
images it lists: distinct generated photos-like pictures (smooth colour fields with
texture, ~400x400 JPEG), plus exact duplicates and corrupt files mixed in. The
whole pipeline runs (search, download, full decode, phash dedupe, JPEG re-encode,
atomic write) into a memory sink; afterwards every stored file is checked: it
decodes, its name is its sha1, and no two stored images are near-duplicates.

All images come from one host, so the per-host delay is off by default (it would
cap a single host at 1/delay requests per second); ``--host-delay`` shows that cap.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from scraper.fetch import FetchSettings
from scraper.images import phash_distance
from scraper.pipeline import Pipeline, ScrapeConfig
from scraper.sinks import MemorySink
from scraper.sources.base import SourceSettings

TARGET_PER_S = 30.0


def make_picture(rng: np.random.Generator, side: int = 400) -> bytes:
    """A photo-like JPEG: a smooth random colour field with fine texture (distinct perceptual hashes)."""
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
    texture = rng.integers(-12, 13, size=(side, side, 1), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(field + texture, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def build_routes(count: int, seed: int = 0) -> tuple[dict[str, bytes], list[str], dict[str, int]]:
    """Image routes, the result list, and how many of each kind (good, duplicate, corrupt)."""
    rng = np.random.default_rng(seed)
    routes: dict[str, bytes] = {}
    paths: list[str] = []
    kinds = {"good": 0, "duplicate": 0, "corrupt": 0}
    for i in range(count):
        path = f"/img/{i}.jpg"
        if i % 10 == 9 and i > 0:  # every tenth: a copy of an earlier picture
            routes[path] = routes[f"/img/{i - 3}.jpg"]
            kinds["duplicate"] += 1
        elif i % 20 == 14:  # every twentieth: truncated
            routes[path] = make_picture(rng)[:3000]
            kinds["corrupt"] += 1
        else:
            routes[path] = make_picture(rng)
            kinds["good"] += 1
        paths.append(path)
    return routes, paths, kinds


def bing_page(urls: list[str]) -> bytes:
    """Bing's result markup: ``a.iusc`` with the full-size URL in the ``m`` JSON."""
    items = "".join(f'<a class="iusc" m="{html.escape(json.dumps({"murl": u}))}"></a>' for u in urls)
    return f"<html><body>{items}</body></html>".encode()


def serve(routes: dict[str, bytes], latency_s: float) -> ThreadingHTTPServer:
    """Start the server in a thread; every response waits ``latency_s`` first."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(latency_s)
            body = routes.get(self.path.split("?", 1)[0])
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html" if self.path.startswith("/search") else "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def check_stored(images_dir: Path, sink: MemorySink, max_distance: int) -> tuple[int, int]:
    """(corrupt files, duplicate pairs) among what was stored: both must be 0."""
    corrupt = 0
    for record in sink.images:
        data = (images_dir / record.path).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
            corrupt += hashlib.sha1(data).hexdigest() != record.sha1
        except OSError:
            corrupt += 1
    hashes = [r.phash for r in sink.images]
    pairs = sum(phash_distance(a, b) <= max_distance for i, a in enumerate(hashes) for b in hashes[i + 1 :])
    return corrupt, pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per response")
    parser.add_argument("--host-delay", type=float, default=0.0)
    parser.add_argument("--footwear", action="store_true", help="run the ML footwear detector on every new image")
    parser.add_argument("--classifier-concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    classifier = None
    if args.footwear:  # the generated pictures are no shoes: they all go to review, which is stored too
        from ml.footwear import FootwearDetector

        classifier = FootwearDetector.create().is_footwear

    routes, paths, kinds = build_routes(args.images)
    httpd = serve(routes, args.latency)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    routes["/search"] = bing_page([base + p for p in paths])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = ScrapeConfig(
                images_dir=Path(tmp),
                sources=("bing",),
                source_settings=SourceSettings(bing_url=base + "/search", max_pages=1),
                fetch=FetchSettings(allow_private=True, host_delay_s=args.host_delay, timeout_s=10),
                concurrency=args.concurrency,
                classifier_concurrency=args.classifier_concurrency,
            )
            sink = MemorySink()
            start = time.perf_counter()
            report = Pipeline(config, sink, classifier=classifier).run("bench_label", ["bench"], args.images)
            elapsed = time.perf_counter() - start
            corrupt, duplicate_pairs = check_stored(Path(tmp), sink, config.phash_distance)
    finally:
        httpd.shutdown()
        httpd.server_close()

    kept = report.stored + report.rejected  # written to disk, to training data or to review
    rate = kept / elapsed
    print(f"served: {args.images} results ({kinds['good']} good, {kinds['duplicate']} duplicates, "
          f"{kinds['corrupt']} corrupt), {args.latency * 1000:.0f} ms latency per response")
    print(f"concurrency {args.concurrency}, host delay {args.host_delay:g}s, "
          f"footwear check {'on' if classifier else 'off'}")
    print(f"stored {report.stored}, to review {report.rejected}, duplicates {report.duplicates}, "
          f"failed {dict(report.failed)} in {elapsed:.2f}s")
    print(f"images stored per second: {rate:.1f} (target >= {TARGET_PER_S:.0f}); "
          f"results processed per second: {report.processed / elapsed:.1f}")
    print(f"stored files checked: {corrupt} corrupt, {duplicate_pairs} near/exact duplicate pairs")
    ok = corrupt == 0 and duplicate_pairs == 0 and kept == kinds["good"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
