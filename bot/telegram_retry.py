"""Retries of Bot API calls and file downloads: which failures, how often, and what a send must not do.

One policy, in one place: ``RetryingRequest`` wraps whichever ``BaseRequest`` backend
``bot.telegram_http.make_request`` builds (aiohttp or httpx), below python-telegram-bot's own
parsing, so every call and download of the bot goes through it.

* **Repeatable calls** change nothing when done twice: reads (every ``get*`` method, getFile
  among them, and file downloads) and sendChatAction, the edits, answerCallbackQuery,
  setMyCommands, deleteWebhook. Every transient failure is retried: a 429 after its
  ``retry_after``, any 5xx, timeouts, dropped or refused connections.
* **Sends** (sendMessage, sendPhoto and every other method) create something each time, and
  Telegram has no idempotency key. A send whose answer never came (a read timeout after the
  request was written, a connection closed without an answer, a gateway's 5xx page instead of
  the Bot API's) may or may not have been performed, and no Bot API method lets the bot look.
  So a send is retried only when the failure is known to have come before Telegram accepted
  it: a 429, a 5xx carrying the Bot API's own ``{"ok": false}`` body (the Bot API answers an
  error only for a method it did not perform), a refused or timed-out connect, no free
  connection in the pool. After the ambiguous failures a send is **at most once**:
  ``DeliveryUncertain`` is raised and logged, and the caller must not send the same thing, nor
  an apology, again (``stop_after_uncertain_delivery`` keeps the error handler's apology back).
  A timed-out send was usually delivered (Telegram answers late rather than never), and a
  double answer with two live keyboards is what this rules out; the price is that a send
  really lost in that window stays lost, and the warning names its method and chat.
* A repeatable call retried after an ambiguous failure may find its work done: "message is not
  modified" for an edit, "query is too old" for a callback answer. That answer then means
  success, and the caller gets ``True`` (what the Bot API returns for these when there is no
  message to return).
* Bounds: at most ``1 + retries`` attempts; between them an exponential backoff with jitter
  from ``backoff`` seconds up to ``max_backoff``; a 429 waits its ``retry_after`` instead,
  unless that is longer than ``max_retry_after``: then the 429 is returned at once (a handler
  should not hang on a long flood wait). getUpdates is passed through untouched: the Updater
  has its own retry loop, and a long poll must not be repeated behind its back.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from telegram.error import NetworkError
from telegram.ext import ApplicationHandlerStop, CallbackContext
from telegram.request import BaseRequest, RequestData

log = logging.getLogger(__name__)

DOWNLOAD = "file"  # the name a file download gets here (and in the playground's faults)
PASSED_THROUGH = frozenset({"getupdates"})
REPEATABLE = frozenset({
    "sendchataction", "editmessagetext", "editmessagecaption", "editmessagemedia", "editmessagereplymarkup",
    "answercallbackquery", "setmycommands", "deletemycommands", "deletewebhook", "setwebhook",
})
# What a repeatable call's retry hears when its earlier, unanswered attempt did the work.
ALREADY_DONE = {
    "editmessagetext": "message is not modified",
    "editmessagecaption": "message is not modified",
    "editmessagemedia": "message is not modified",
    "editmessagereplymarkup": "message is not modified",
    "answercallbackquery": "query is too old",
}
DONE = json.dumps({"ok": True, "result": True}).encode()
# Transport failures that happen before a byte of the request reaches the server.
NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
            httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class CallKind(enum.Enum):
    """How a call may be retried."""

    PASS = "pass"  # not retried here
    REPEATABLE = "repeatable"  # done twice is done once: retried after any transient failure
    ONCE = "once"  # creates something: retried only after failures known to precede acceptance


def call_name(url: str) -> str:
    """The Bot API method a URL calls, lower case, or ``DOWNLOAD`` for ``<root>/file/bot<token>/<path>``."""
    path = urlsplit(url).path
    if "/file/bot" in path:
        return DOWNLOAD
    return path.rstrip("/").rsplit("/", 1)[-1].lower()


def call_kind(name: str) -> CallKind:
    """Reads and the calls in ``REPEATABLE`` may repeat; getUpdates is the Updater's; the rest are sends."""
    if name in PASSED_THROUGH:
        return CallKind.PASS
    if name == DOWNLOAD or name.startswith("get") or name in REPEATABLE:
        return CallKind.REPEATABLE
    return CallKind.ONCE


def may_have_arrived(error: BaseException) -> bool:
    """Whether a request that failed in the transport may have reached the server.

    False only when the cause is known to come first: no connection, or none free in the pool.
    Read timeouts, resets and connections closed without an answer may come after the server
    got (and performed) the request.
    """
    return not isinstance(error.__cause__, NOT_SENT)


@dataclass(frozen=True)
class RetryPolicy:
    """The bounds.

    From ``bot.settings``: ``telegram_retries``, ``telegram_retry_backoff_s``, ``telegram_max_retry_after_s``.
    """

    retries: int = 3  # extra attempts after a failure that may be retried
    backoff: float = 0.5  # seconds before the first retry; doubles for each next one
    max_backoff: float = 8.0
    max_retry_after: float = 30.0  # a 429 asking for a longer wait is returned, not waited for

    def pause(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1, 2, ...): half fixed, half random, so callers spread out."""
        step = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return step / 2 + random.uniform(0, step / 2)


class DeliveryUncertain(NetworkError):
    """A send failed after its request may have reached Telegram: it may or may not have been performed.

    Not retried (at most once). Whoever catches it must not send the same thing, nor anything
    in its place, again: the first may well have arrived.
    """

    def __init__(self, method: str, chat_id: object, reason: str) -> None:
        super().__init__(f"{method} to chat {chat_id}: {reason}; it may or may not have been performed")
        self.method = method
        self.chat_id = chat_id
        self.reason = reason


async def stop_after_uncertain_delivery(update: object, context: CallbackContext[Any, Any, Any, Any]) -> None:
    """An error handler for before the others: after ``DeliveryUncertain`` the bot says nothing more.

    The general error handler's apology would be a second message whenever the uncertain one
    did arrive; the warning is already logged by ``RetryingRequest``.
    """
    if isinstance(context.error, DeliveryUncertain):
        raise ApplicationHandlerStop


def _retry_after(payload: bytes) -> float | None:
    """``parameters.retry_after`` of an error body, if it has one."""
    body = _json(payload)
    parameters = body.get("parameters") if body else None
    value = parameters.get("retry_after") if isinstance(parameters, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _bot_api_error(payload: bytes) -> dict[str, Any] | None:
    """The Bot API's own error body (``{"ok": false, "error_code", "description"}``), or None for anything else."""
    body = _json(payload)
    return body if body and body.get("ok") is False and isinstance(body.get("error_code"), int) else None


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _chat_of(request_data: RequestData | None) -> object:
    """The chat a call is for, to name it in the log."""
    return request_data.parameters.get("chat_id") if request_data is not None else None


class RetryingRequest(BaseRequest):
    """A ``BaseRequest`` that runs another one's ``do_request`` under ``RetryPolicy`` (see the module's docstring)."""

    __slots__ = ("_inner", "_policy")

    def __init__(self, inner: BaseRequest, policy: RetryPolicy) -> None:
        self._inner = inner
        self._policy = policy

    @property
    def read_timeout(self) -> float | None:
        """The wrapped backend's default read timeout (PTB adds the long-poll time to it for getUpdates)."""
        return self._inner.read_timeout

    async def initialize(self) -> None:
        """Initialise the wrapped backend."""
        await self._inner.initialize()

    async def shutdown(self) -> None:
        """Shut the wrapped backend down."""
        await self._inner.shutdown()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,  # passed on as given: the backend resolves its defaults
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """The wrapped exchange, attempted again while the policy allows; PTB parses what it returns."""
        name = call_name(url)
        kind = call_kind(name)
        attempts = 1 + max(0, self._policy.retries)
        uncertain = False  # an earlier attempt of this call may have been performed
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                status, payload = await self._inner.do_request(
                    url, method, request_data, read_timeout=read_timeout, write_timeout=write_timeout,
                    connect_timeout=connect_timeout, pool_timeout=pool_timeout)
            except NetworkError as exc:  # TimedOut too: the transports raise nothing else for network trouble
                if kind is CallKind.PASS:
                    raise
                arrived = may_have_arrived(exc)
                if arrived and kind is CallKind.ONCE:
                    raise self._uncertain(name, request_data, f"no answer ({exc.message})") from exc
                if last:
                    raise
                uncertain = uncertain or arrived
                await self._wait(name, attempt, attempts, self._policy.pause(attempt), exc.message)
                continue
            if kind is CallKind.PASS:
                return status, payload
            if status == 429:
                wait = _retry_after(payload)
                if last or (wait is not None and wait > self._policy.max_retry_after):
                    return status, payload
                await self._wait(name, attempt, attempts, self._policy.pause(attempt) if wait is None else wait,
                                 f"429, retry after {wait}")
                continue
            if status >= 500:
                from_bot_api = _bot_api_error(payload) is not None
                if not from_bot_api and kind is CallKind.ONCE:
                    raise self._uncertain(name, request_data, f"HTTP {status} from a gateway, not the Bot API")
                if last:
                    return status, payload
                uncertain = uncertain or not from_bot_api
                await self._wait(name, attempt, attempts, self._policy.pause(attempt), f"HTTP {status}")
                continue
            if uncertain and status == 400 and self._already_done(name, payload):
                log.info("Bot API %s: an earlier unanswered attempt was performed; taken as done", name)
                return 200, DONE
            return status, payload
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _already_done(name: str, payload: bytes) -> bool:
        """Whether a 400 says this repeatable call's work is already there."""
        body = _bot_api_error(payload)
        marker = ALREADY_DONE.get(name)
        return body is not None and marker is not None and marker in str(body.get("description", ""))

    @staticmethod
    async def _wait(name: str, attempt: int, attempts: int, seconds: float, reason: str) -> None:
        log.info("Bot API %s failed (%s); attempt %d of %d in %.2f s", name, reason, attempt + 1, attempts, seconds)
        await asyncio.sleep(seconds)

    @staticmethod
    def _uncertain(name: str, request_data: RequestData | None, reason: str) -> DeliveryUncertain:
        error = DeliveryUncertain(name, _chat_of(request_data), reason)
        log.warning("Bot API %s; not sent again (sends are at most once when their outcome is unknown)", error)
        return error
