"""How the bot's python-telegram-bot ``Bot`` reaches the Bot API over HTTP: a registry of backends.

python-telegram-bot does every Bot API call through a ``telegram.request.BaseRequest``; its
default, ``HTTPXRequest``, costs about 2.5 ms of CPU per call here, a quarter of the bot's
CPU per photo (a photo takes four or five calls: chat action, getFile, the download, the
answer and its share of getUpdates). ``AiohttpRequest`` is the same contract on aiohttp's
client (already a dependency for the playground) at about 0.6 ms per call. PTB still builds
every request, parses every answer and maps Bot API errors (``BaseRequest.post``/``retrieve``);
only the transport differs. ``SNEAKERBOT_TELEGRAM_HTTP=httpx`` switches back to PTB's own.

``HttpOptions.retry`` wraps either backend in ``bot.telegram_retry.RetryingRequest``: which
failed calls and downloads are tried again, and why a send whose answer was lost is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from telegram._utils.defaultvalue import DefaultValue  # do_request's timeout types: PTB has them only here
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, HTTPXRequest, RequestData

from bot.telegram_retry import RetryingRequest, RetryPolicy


@dataclass(frozen=True)
class HttpOptions:
    """Connection settings shared by the backends."""

    pool_size: int = 8
    read_timeout: float | None = 5.0
    connect_timeout: float | None = 5.0
    pool_timeout: float | None = 30.0
    retry: RetryPolicy | None = None  # None: every call is attempted once


RequestFactory = Callable[[HttpOptions], BaseRequest]
HTTP_BACKENDS: dict[str, RequestFactory] = {}


def http_backend(name: str) -> Callable[[RequestFactory], RequestFactory]:
    """Register a factory of ``BaseRequest`` under ``name``."""

    def decorate(factory: RequestFactory) -> RequestFactory:
        HTTP_BACKENDS[name] = factory
        return factory

    return decorate


def make_request(backend: str, options: HttpOptions) -> BaseRequest:
    """A request object of the named backend (under ``options.retry``, if set).

    Unknown names fail with the valid ones.
    """
    try:
        factory = HTTP_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown Telegram HTTP backend {backend!r}; use one of {', '.join(HTTP_BACKENDS)}") from None
    request = factory(options)
    return request if options.retry is None else RetryingRequest(request, options.retry)


@http_backend("httpx")
def _httpx(options: HttpOptions) -> BaseRequest:
    return HTTPXRequest(connection_pool_size=options.pool_size, read_timeout=options.read_timeout,
                        connect_timeout=options.connect_timeout, pool_timeout=options.pool_timeout)


@http_backend("aiohttp")
def _aiohttp(options: HttpOptions) -> BaseRequest:
    return AiohttpRequest(options)


def _given(value: ODVInput[float], default: float | None) -> float | None:
    """A per-call timeout, or the default when the caller left it unset."""
    return default if value is BaseRequest.DEFAULT_NONE else DefaultValue.get_value(value)


class AiohttpRequest(BaseRequest):
    """``BaseRequest`` on one keep-alive ``aiohttp.ClientSession`` (HTTP/1.1, ``pool_size`` connections).

    Timeouts: ``read_timeout`` bounds each socket read, ``connect_timeout`` the TCP connect and
    ``pool_timeout`` plus ``connect_timeout`` the wait for a free connection. aiohttp has no write
    timeout; a stalled upload ends with the read timeout of its answer.
    """

    __slots__ = ("_options", "_session")

    def __init__(self, options: HttpOptions = HttpOptions()) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        """The default read timeout (PTB adds the long-poll time to it for getUpdates)."""
        return self._options.read_timeout

    async def initialize(self) -> None:
        """Open the session (inside the running event loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._options.pool_size, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("Accept-Encoding",))

    async def shutdown(self) -> None:
        """Close the session and its connections."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """One HTTP exchange; PTB turns the status and body into a result or an error."""
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        connect = _given(connect_timeout, self._options.connect_timeout)
        pool = _given(pool_timeout, self._options.pool_timeout)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=_given(read_timeout, self._options.read_timeout),
        )
        try:
            async with self._session.request(method, url, data=_body(request_data), timeout=timeout,
                                             headers={"User-Agent": self.USER_AGENT}) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


def _body(request_data: RequestData | None) -> aiohttp.FormData | dict[str, str] | None:
    """Form fields, or a multipart body when the call uploads files (as ``HTTPXRequest`` sends them)."""
    if request_data is None:
        return None
    fields = request_data.json_parameters
    if not request_data.contains_files:
        return fields
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, content, mime_type) in request_data.multipart_data.items():
        form.add_field(name, content, filename=filename, content_type=mime_type)
    return form
