"""Shared pieces of the scraper tests and benchmark: a real local HTTP server and real test images.

The server is a ``ThreadingHTTPServer`` on 127.0.0.1 with a random port. Routes are
registered per path; the special ones misbehave on purpose (never finish, stream
forever, loop redirects, fail once). Images are real pictures from ``skimage.data``
encoded in several formats, plus broken and tricky variants of them.
"""

from __future__ import annotations

import html
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
from PIL import Image
from skimage import data as skdata

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "search-pages"

Handler = Callable[[BaseHTTPRequestHandler, "LocalServer"], None]


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (timeouts, size limits) are expected: no tracebacks for them."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP server whose routes tests add; counts hits per path."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.routes: dict[str, Handler] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[str] = []  # every request line's path with its query
        self.release = threading.Event()  # lets "never finishes" handlers end at shutdown
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path``."""
        return self.base + path

    def add(
        self, path: str, body: bytes | str, content_type: str = "application/octet-stream", status: int = 200
    ) -> None:
        """A plain response with a Content-Length."""
        payload = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda req, _srv: send(req, status, payload, content_type)

    def add_handler(self, path: str, handler: Handler) -> None:
        """A custom response."""
        self.routes[path] = handler

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = urlsplit(self.path).path
                with server._lock:
                    server.hits[path] += 1
                    server.requests.append(self.path)
                if server.latency_s:
                    time.sleep(server.latency_s)
                handler = server.routes.get(path)
                if handler is None:
                    send(self, 404, b"not found", "text/plain")
                    return
                try:
                    handler(self, server)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                """Quiet."""

        return RequestHandler


def send(
    req: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    """Write a complete response."""
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        req.send_header(key, value)
    req.end_headers()
    req.wfile.write(body)


def redirect(to: str) -> Handler:
    """A 302 to ``to``."""
    return lambda req, _srv: send(req, 302, b"", "text/plain", {"Location": to})


def never_finishes(head: bytes) -> Handler:
    """Announce a body, send its first bytes, then hang until the server closes."""

    def handler(req: BaseHTTPRequestHandler, srv: LocalServer) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", str(len(head) * 10))
        req.end_headers()
        req.wfile.write(head)
        req.wfile.flush()
        srv.release.wait(60)
        req.close_connection = True

    return handler


def endless(head: bytes, total: int, declare_length: bool) -> Handler:
    """``total`` bytes starting with ``head`` (a real image header), with or without a Content-Length."""

    def handler(req: BaseHTTPRequestHandler, _srv: LocalServer) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "image/jpeg")
        if declare_length:
            req.send_header("Content-Length", str(total))
        req.send_header("Connection", "close")
        req.end_headers()
        req.close_connection = True
        req.wfile.write(head)
        sent, chunk = len(head), b"\0" * 65536
        while sent < total:
            req.wfile.write(chunk)
            sent += len(chunk)

    return handler


def flaky(failures: int, body: bytes, content_type: str) -> Handler:
    """503 for the first ``failures`` hits, then ``body``."""
    count = Counter[str]()

    def handler(req: BaseHTTPRequestHandler, _srv: LocalServer) -> None:
        count["n"] += 1
        if count["n"] <= failures:
            send(req, 503, b"try later", "text/plain")
        else:
            send(req, 200, body, content_type)

    return handler


@contextmanager
def running_server(latency_s: float = 0.0) -> Iterator[LocalServer]:
    """A started server, closed afterwards."""
    server = LocalServer(latency_s).start()
    try:
        yield server
    finally:
        server.close()


# --- images -------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Image bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def picture(name: str) -> Image.Image:
    """A real picture from skimage.data as a PIL image (RGB, RGBA or L)."""
    return Image.fromarray(np.asarray(getattr(skdata, name)()))


def is_grayscale(image: Image.Image) -> bool:
    """The property the tests' footwear classifier rejects: no colour at all."""
    array = np.asarray(image.convert("RGB")).astype(np.int16)
    return bool(np.abs(array[..., 0] - array[..., 1]).max() <= 2 and np.abs(array[..., 1] - array[..., 2]).max() <= 2)


def colour_only(image: Image.Image) -> bool:
    """A real classifier for tests: grey pictures are "not footwear"."""
    return not is_grayscale(image)


# --- search pages ---------------------------------------------------------------


def bing_page(urls: list[str], query: str = "air jordan 11") -> str:
    """A results page in Bing's markup (``a.iusc`` with HTML-escaped JSON ``m``, mediaurl links, lazy thumbs)."""
    results = []
    for i, url in enumerate(urls):
        meta = {"purl": f"https://shop.example.com/p/{i}", "murl": url,
                "turl": f"https://tse1.mm.bing.net/th?id=OIP.{i}", "t": f"{query} {i}"}
        results.append(
            f'<li><div class="iuscp"><a class="iusc" m="{html.escape(json.dumps(meta))}" '
            f'href="/images/search?view=detailV2&amp;mediaurl={quote(url, safe="")}&amp;q={quote(query)}">'
            f'<img class="mimg" data-src="{meta["turl"]}" alt="{html.escape(query)}"></a></div>'
            f'<a href="/images/search?view=detailV2&amp;mediaurl={quote(url, safe="")}">more</a></li>'
        )
    return (f"<!doctype html><html><head><title>{html.escape(query)} - Search Images</title></head>"
            f"<body><ul>{''.join(results)}</ul></body></html>")


def google_page(urls: list[str]) -> str:
    """A results page in Google's classic markup (``/imgres?imgurl=`` links)."""
    links = "".join(
        f'<div data-ri="{i}"><a href="/imgres?imgurl={quote(url, safe="")}'
        f'&amp;imgrefurl=https%3A%2F%2Fshop.example.com%2F{i}">'
        f'<img src="https://encrypted-tbn0.gstatic.com/images?q=tbn:{i}"></a></div>'
        for i, url in enumerate(urls)
    )
    return f"<!doctype html><html><body><div id='islrg'>{links}</div></body></html>"
