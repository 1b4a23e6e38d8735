"""Bounded, safe image downloads.

Why requests in a thread pool (and not httpx/asyncio): every step after the
download (full decode, perceptual hash, JPEG encode, the footwear model) is
blocking CPU work that needs a worker thread anyway, and the search sources use
requests too; one thread pool bounds both the sockets and the CPU work, and one
HTTP library keeps the error mapping in one place. Each worker thread keeps its
own ``requests.Session`` (keep-alive per host; sessions are not thread-safe).

Safety, because the original project hung forever on some downloads and trusted
whatever came back:

- only http/https; hosts resolving to private, loopback, link-local or other
  non-global addresses are refused unless ``allow_private`` (tests turn it on);
  every redirect hop is checked again and redirects are capped (loops end). The
  host checked is the one requests connects to: the URL is prepared as requests
  prepares it and refused when Python's and urllib3's parsers disagree on the host
  (``http://127.0.0.1\\@example.com/`` is example.com to one, 127.0.0.1 to the
  other); IPv6 addresses that carry an IPv4 one (mapped, NAT64, 6to4,
  IPv4-compatible) are judged by the IPv4 address;
- a connect timeout and one deadline per download (every hop, retry and wait);
  the body is read with ``read1`` so the deadline is checked after every socket
  read, and a server that trickles bytes cannot keep us forever;
- ``Content-Length`` and the bytes actually read are both capped at ``max_bytes``;
- content sniffing: the first bytes must be a known image format, whatever the
  URL's extension or the ``Content-Type`` say;
- retries by urllib3's ``Retry`` on the session's adapter (``BoundedRetry``): connection
  errors, 429 and 5xx, GET only, with exponential backoff, waiting as long as a 429 or 503
  says in ``Retry-After``. Bounded: a wait that would end past the download's deadline is
  not taken (the answer is reported as it is), a timeout is not retried (a host that hung
  once usually hangs again), and the body of an answer about to be retried is never read
  (the connection is closed: a 503 with an endless body cannot hold us). A redirect hop is
  its own request with its own retries; a failure while reading the image's body, or in
  the address check's own name resolution, is not retried;
- a per-host delay between request starts, so parallel workers stay polite (a retry
  inside urllib3 waits its backoff or ``Retry-After`` instead).

Known limit: the address check resolves the name before requests does, so a DNS
answer that changes between the two (rebinding) is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scraper.errors import (
    ConnectionFailed,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    NotAnImage,
    RefusedAddress,
    RefusedURL,
    TooLarge,
    TooManyRedirects,
)
from scraper.sources.base import DEFAULT_USER_AGENT

Resolver = Callable[[str, int], list[str]]
_READ_SIZE = 64 * 1024
_SNIFF_BYTES = 16
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


@dataclass(frozen=True)
class FetchSettings:
    """Limits for one download; entry points fill it from their settings."""

    timeout_s: float = 15.0
    connect_timeout_s: float = 5.0
    max_bytes: int = 15 * 1024 * 1024
    allow_private: bool = False
    retries: int = 2  # extra attempts after a connection error, 429 or 5xx
    backoff_s: float = 0.5  # urllib3's backoff factor: the first retry at once, then 2x, 4x... this
    host_delay_s: float = 0.2
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT


@dataclass(frozen=True)
class Download:
    """The bytes of one image and where they finally came from."""

    url: str
    final_url: str
    content: bytes
    kind: str  # sniffed format: jpeg, png, gif, webp, bmp, tiff, heif


def sniff_image(head: bytes) -> str | None:
    """The image format the first bytes announce, or None when they are not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; failures become ``ConnectionFailed``."""
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, UnicodeError) as exc:
        raise ConnectionFailed(f"cannot resolve {host}: {exc}") from exc


_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"),)
_NON_PUBLIC_V6 = (
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.ip_network("fec0::/10"),  # deprecated site-local, which ``is_global`` calls global
)
_V4_IN_V6 = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))  # IPv4-compatible, SIIT


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4, IPv4-compatible,
    SIIT) is public only if that IPv4 address is: ``64:ff9b::7f00:1`` is 127.0.0.1.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_public(ip.ipv4_mapped)
        if any(ip in net for net in _NON_PUBLIC_V6):
            return False
        embedded = [ip.sixtofour] if ip.sixtofour is not None else []
        if any(ip in net for net in (*_NAT64_PREFIXES, *_V4_IN_V6)):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if not all(_is_public(v4) for v4 in embedded):
            return False
    return _is_public(ip)


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


class HostThrottle:
    """Spaces request starts to the same host by at least ``delay_s`` across threads."""

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        """Reserve the next slot for ``host`` and sleep until it."""
        if self._delay_s <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self._delay_s
        if slot > now:
            time.sleep(slot - now)


class Deadline:
    """When the download under way must end (``time.monotonic``); each thread's session has one."""

    at: float = float("inf")


class BoundedRetry(Retry):
    """urllib3's ``Retry`` held to one download's deadline, never retrying a timeout.

    Why a subclass: the retry counts, backoff and ``Retry-After`` parsing are urllib3's, but
    three of our bounds are not in its options. A wait (backoff or ``Retry-After``) that
    would end past the deadline gives up instead, so the server's last answer is reported
    (a 429 asking for an hour is a 429 now, not an hour's sleep). A timeout is raised, not
    retried. And an answer about to be retried is closed unread, because urllib3 would
    otherwise read its body to the end before retrying, with no limit on size or time.
    """

    # 413 (which urllib3 also honours Retry-After for) is not a GET's problem.
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})
    deadline: Deadline

    @classmethod
    def for_settings(cls, settings: FetchSettings, deadline: Deadline) -> BoundedRetry:
        """The retry policy of ``settings``, held to ``deadline``."""
        retry = cls(
            total=settings.retries,
            redirect=False,  # redirects come back to ``fetch``, which checks every hop
            status_forcelist=frozenset({429, *range(500, 600)}),
            allowed_methods=frozenset({"GET"}),
            backoff_factor=settings.backoff_s,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last 429/5xx comes back as a response: ``HTTPStatusError``
        )
        retry.deadline = deadline
        return retry

    def new(self, **kw: object) -> BoundedRetry:
        """urllib3 makes a new ``Retry`` per attempt: it keeps the same deadline."""
        retry = super().new(**kw)
        retry.deadline = self.deadline
        return retry

    def get_retry_after(self, response: urllib3.BaseHTTPResponse) -> float | None:
        """Seconds a ``Retry-After`` asks for; None for one no one can read (urllib3 raises): the backoff applies."""
        try:
            return super().get_retry_after(response)
        except urllib3.exceptions.InvalidHeader:
            return None

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: urllib3.BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: urllib3.connectionpool.ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> BoundedRetry:
        """urllib3's count, then our bounds (see the class)."""
        if _is_timeout(error):
            raise urllib3.exceptions.MaxRetryError(_pool, url, error) from error  # type: ignore[arg-type]
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        wait = retry.get_retry_after(response) if response is not None else None
        if not wait:  # what ``Retry.sleep`` does: Retry-After when it asks for a wait, else the backoff
            wait = retry.get_backoff_time()
        if time.monotonic() + wait >= self.deadline.at:
            reason = error or urllib3.exceptions.ResponseError(f"a retry in {wait:.1f}s would pass the deadline")
            raise urllib3.exceptions.MaxRetryError(_pool, url, reason)  # type: ignore[arg-type]
        if response is not None:
            response.close()  # urllib3 would read the whole body before retrying
        return retry


def _is_timeout(error: Exception | None) -> bool:
    """A connect or read timeout (urllib3's ``NewConnectionError``, refused or unresolved, is one by inheritance)."""
    timeouts = (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError)
    return isinstance(error, timeouts) and not isinstance(error, urllib3.exceptions.NewConnectionError)


class Fetcher:
    """Thread-safe downloader; call ``fetch`` from any number of worker threads."""

    def __init__(self, settings: FetchSettings, resolver: Resolver = resolve_host) -> None:
        self._settings = settings
        self._resolver = resolver
        self._throttle = HostThrottle(settings.host_delay_s)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def fetch(self, url: str) -> Download:
        """Download one image; raises a ``FetchError`` subclass.

        Redirects are followed by hand so every hop is checked; the session's adapter
        retries each request (``BoundedRetry``), all within one deadline.
        """
        deadline = time.monotonic() + self._settings.timeout_s
        current, seen = url, {url}
        for _ in range(self._settings.max_redirects + 1):
            prepared, host = self.check_url(current)
            self._throttle.wait(host)
            response = self._get(prepared, deadline)
            with response:
                if response.is_redirect:
                    current = _redirect_target(current, response.headers["location"])
                    if current in seen:
                        raise TooManyRedirects(f"redirect loop at {current}")
                    seen.add(current)
                    continue
                if response.status_code != 200:
                    raise HTTPStatusError(response.status_code, current)
                content, kind = self._read_body(response, deadline)
                return Download(url=url, final_url=current, content=content, kind=kind)
        raise TooManyRedirects(f"more than {self._settings.max_redirects} redirects from {url}")

    def check_url(self, url: str) -> tuple[str, str]:
        """One hop's check: ``(the URL as requests will send it, its host)``.

        Raises ``RefusedURL`` for anything but a well-formed http(s) URL whose host every
        parser agrees on, and, unless ``allow_private``, ``RefusedAddress`` when the host
        resolves to any non-public address. ``fetch`` calls it before every request, the
        first one and each redirect's.
        """
        prepared, _scheme, host, port = _split_url(url)
        if not self._settings.allow_private:
            addresses = self._resolver(host, port)
            if not addresses:
                raise ConnectionFailed(f"cannot resolve {host}: no addresses")
            for address in addresses:
                if not is_public_address(address):
                    raise RefusedAddress(f"{host} resolves to non-public {address}")
        return prepared, host

    def _get(self, url: str, deadline: float) -> requests.Response:
        """Start the request (headers only); map requests' errors to ours."""
        remaining = max(0.01, deadline - time.monotonic())
        timeout = (min(self._settings.connect_timeout_s, remaining), remaining)
        session = self._session()
        self._local.deadline.at = deadline  # this thread's session, this thread's download
        try:
            return session.get(url, stream=True, allow_redirects=False, timeout=timeout)
        except requests.RequestException as exc:
            raise _map_error(exc, url) from exc
        except ValueError as exc:  # even without following, requests parses a Location ("http://[::1" raises)
            raise RefusedURL(f"{url}: unusable redirect: {exc}") from exc

    def _read_body(self, response: requests.Response, deadline: float) -> tuple[bytes, str]:
        """Read the whole body within the deadline and size cap, sniffing the first bytes."""
        limit = self._settings.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"Content-Length {declared} > {limit}")
        body = bytearray()
        kind: str | None = None
        try:
            while chunk := response.raw.read1(_READ_SIZE):
                body += chunk
                if len(body) > limit:
                    raise TooLarge(f"more than {limit} bytes from {response.url}")
                if kind is None and len(body) >= _SNIFF_BYTES:
                    kind = _sniff_or_raise(bytes(body), response.url)
                if time.monotonic() > deadline:
                    raise FetchTimeout(f"{response.url} did not finish within {self._settings.timeout_s}s")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _map_error(exc, response.url) from exc
        return bytes(body), kind or _sniff_or_raise(bytes(body), response.url)

    def _session(self) -> requests.Session:
        """This thread's session, created on first use."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.deadline = Deadline()
            adapter = HTTPAdapter(max_retries=BoundedRetry.for_settings(self._settings, self._local.deadline))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # identity: the size cap and the sniffing apply to the bytes as sent, no decompression surprises.
            session.headers.update(
                {"User-Agent": self._settings.user_agent, "Accept": "image/*,*/*;q=0.8", "Accept-Encoding": "identity"}
            )
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every thread's session."""
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def _split_url(url: str) -> tuple[str, str, str, int]:
    """``(prepared URL, scheme, host, port)`` of an http(s) URL, or ``RefusedURL``.

    The URL is prepared exactly as requests prepares it (percent-quoting, IDNA), and the
    host is read from that prepared URL by both urllib.parse (what requests' adapter picks
    the connection by) and urllib3 (what it connects to); they must agree, and agree with
    the host of the URL as given, or the URL is refused.
    """
    try:
        if any(ord(c) < 0x20 or c == "\x7f" for c in url):  # urllib.parse drops some, urllib3 quotes them
            raise ValueError("control characters")
        given = urlsplit(url)
        prepared = _prepare(url)
        if _prepare(prepared) != prepared:  # requests prepares it again when sending
            raise ValueError("preparing it again changes it")
        parts = urlsplit(prepared)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        pool_host = urllib3.util.parse_url(prepared).host
    except (ValueError, requests.RequestException, urllib3.exceptions.HTTPError, UnicodeError) as exc:
        raise RefusedURL(f"refused URL {url!r}: {exc}") from exc
    host = parts.hostname
    if given.scheme.lower() not in ("http", "https") or parts.scheme not in ("http", "https") or not host:
        raise RefusedURL(f"refused URL {url!r}")
    if (pool_host or "").strip("[]").lower() != host or not _same_host(given.hostname, host):
        raise RefusedURL(f"refused URL {url!r}: its host is ambiguous")
    return prepared, parts.scheme, host, port


def _redirect_target(current: str, location: str) -> str:
    """Where a redirect points, absolute; a Location no URL parser accepts is ``RefusedURL``."""
    try:
        return urljoin(current, location)
    except ValueError as exc:
        raise RefusedURL(f"refused redirect from {current} to {location!r}: {exc}") from exc


def _prepare(url: str) -> str:
    """``url`` as requests sends it."""
    return requests.Request("GET", url).prepare().url or ""


def _same_host(given: str | None, prepared: str) -> bool:
    """The host as written and as prepared name the same thing (prepared is IDNA-encoded)."""
    if not given:
        return False
    if given == prepared:
        return True
    try:
        return _prepare(f"http://{given}/").removeprefix("http://").rstrip("/").lower() == prepared
    except (ValueError, requests.RequestException, UnicodeError):
        return False


def _sniff_or_raise(head: bytes, url: str) -> str:
    """The sniffed format or ``NotAnImage``."""
    kind = sniff_image(head[:_SNIFF_BYTES])
    if kind is None:
        raise NotAnImage(f"{url} is not an image (starts with {head[:8]!r})")
    return kind


def _map_error(exc: Exception, url: str) -> FetchError:
    """requests/urllib3 errors to our hierarchy; timeouts hide inside ConnectionError too."""
    text = f"{url}: {exc}"
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)):
        return FetchTimeout(text)
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, urllib3.exceptions.MaxRetryError):  # what BoundedRetry gave up on
        cause = cause.reason
    if isinstance(cause, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError by inheritance only
        return ConnectionFailed(text)
    if isinstance(cause, (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ConnectTimeoutError)):
        return FetchTimeout(text)
    if isinstance(exc, requests.TooManyRedirects):
        return TooManyRedirects(text)
    return ConnectionFailed(text)
