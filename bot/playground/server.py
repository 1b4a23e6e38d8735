"""The playground's aiohttp application and a small start/stop wrapper around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pillow_heif import register_heif_opener

import bot.playground.userapi as userapi
from bot.playground.botapi import call_method, method_of
from bot.playground.state import DOWNLOAD, STATE, WEBHOOK, BotApiError, Fault, PlaygroundState

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
BOT_ID = 7000000001
HOLD_CHECK_S = 0.05  # how often a held request looks whether its client is still there
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
GATEWAY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"


def bot_user(token: str) -> dict[str, Any]:
    """The bot's user object; its id is the number before the token's colon, as on Telegram."""
    head = token.split(":", 1)[0]
    bot_id = int(head) if head.isdigit() else BOT_ID
    return {"id": bot_id, "is_bot": True, "first_name": "Sneakerbot", "username": "sneakerbot_playground_bot",
            "can_join_groups": False, "can_read_all_group_messages": False, "supports_inline_queries": False}


async def read_params(request: web.Request, state: PlaygroundState) -> dict[str, Any]:
    """Bot API parameters from the query string and a JSON, form or multipart body."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        params.update(await request.json())
    elif request.content_type == "multipart/form-data":
        files: dict[str, bytes] = {}
        async for part in userapi.body_parts(request):
            data = await part.read()
            if part.filename:
                files[part.name or ""] = bytes(data)
            params[part.name or ""] = bytes(data) if part.filename else data.decode()
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                params[key] = files.get(value.removeprefix("attach://"), value)
    elif request.can_read_body:
        params.update(await request.post())
    return params


async def bot_api(request: web.Request) -> web.StreamResponse:
    """``/bot<token>/<method>``: the Bot API itself (with the failures injected for this method, if any)."""
    state: PlaygroundState = request.app[STATE]
    if request.match_info["token"] != state.token:
        raise BotApiError(401, "Unauthorized")
    name = request.match_info["method"]
    method_of(name)  # an unknown method is a 404 and spends no injected failure
    params = await read_params(request, state)

    async def perform() -> web.Response:
        return web.json_response({"ok": True, "result": await call_method(state, name, params)})

    return await answer(request, state.take_fault(name), perform)


async def download(request: web.Request) -> web.StreamResponse:
    """``/file/bot<token>/<file_path>``: file downloads, as on Telegram (faults name this route ``file``)."""
    state: PlaygroundState = request.app[STATE]
    if request.match_info["token"] != state.token:
        raise BotApiError(401, "Unauthorized")
    stored = state.file_by_path(request.match_info["path"])
    if stored is None:
        raise BotApiError(404, "Not Found")
    data, mime_type = stored.data, stored.mime_type

    async def perform() -> web.Response:
        return web.Response(body=data, content_type=mime_type)

    return await answer(request, state.take_fault(DOWNLOAD), perform)


async def answer(request: web.Request, fault: Fault | None,
                 perform: Callable[[], Awaitable[web.Response]]) -> web.StreamResponse:
    """``perform`` the call and send its answer, or fail the way ``fault`` says.

    With ``after_accept`` the call is performed first (its message is sent, its edit made) and
    only the answer fails. "429" and a plain "500" are the Bot API's own error bodies; "500"
    after the call was performed is a gateway's bare 502 page; "timeout" holds the request
    until ``hold`` seconds pass or the client gives up, then closes the connection; "drop"
    closes it at once. Neither sends a byte of an answer.
    """
    if fault is None:
        return await perform()
    if fault.after_accept:
        await perform()  # the call's own error (a 400, say) is answered as it is, and the fault is spent
    if fault.kind == "429":
        raise BotApiError(429, f"Too Many Requests: retry after {fault.retry_after}", retry_after=fault.retry_after)
    if fault.kind == "500":
        if fault.after_accept:
            return web.Response(status=502, text=GATEWAY_PAGE, content_type="text/html")
        raise BotApiError(500, "Internal Server Error")
    if fault.kind == "timeout":
        await hold(request, fault.hold)
    if request.transport is not None:
        request.transport.close()
    return web.Response()  # never reaches the client: its connection is closed


async def hold(request: web.Request, seconds: float) -> None:
    """Wait ``seconds``, or less when the client closes the connection first (it timed out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline and request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(HOLD_CHECK_S)


async def deliver_webhooks(state: PlaygroundState, session: aiohttp.ClientSession) -> None:
    """While a webhook is set, POST queued updates to it as Telegram does: JSON with the secret header,
    the oldest update of each chat at a time (a chat's order is kept, chats go in parallel), a failed
    POST (refused or dropped connection, timeout, an answer that is not 2xx) tried again after a
    pause that doubles up to ``webhook_max_backoff``. An update leaves the queue when a POST succeeds."""
    loop = asyncio.get_running_loop()
    posting: set[asyncio.Task[None]] = set()
    try:
        while True:
            async with state.changed:
                ready, next_retry = state.deliverable(loop.time())
                if not ready:
                    wait = None if next_retry is None else max(0.0, next_retry - loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(state.changed.wait(), wait)
                    continue
            for update in ready:
                task = asyncio.create_task(_post_update(state, session, update))
                posting.add(task)
                task.add_done_callback(posting.discard)
    finally:
        for task in posting:
            task.cancel()


async def _post_update(state: PlaygroundState, session: aiohttp.ClientSession, update: dict[str, Any]) -> None:
    """One delivery attempt; its outcome goes to ``state.delivered``."""
    hook = state.webhook
    error: str | None = "webhook was deleted"
    fault = state.take_fault(WEBHOOK)
    if hook is not None and fault is not None and not fault.after_accept:
        error = f"Delivery failed (injected {fault.kind})"
    elif hook is not None:
        headers = {SECRET_HEADER: hook.secret_token} if hook.secret_token else {}
        try:
            async with session.post(hook.url, json=update, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=state.webhook_timeout)) as response:
                await response.read()
                ok = 200 <= response.status < 300
                error = None if ok else f"Wrong response from the webhook: {response.status} {response.reason}"
        except TimeoutError:
            error = "Read timeout expired"
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            error = "Connection refused" if refused else f"Connection failed: {exc}"
        except aiohttp.ClientError as exc:
            error = f"Connection closed: {type(exc).__name__}"
        except Exception as exc:  # noqa: BLE001 - a bad URL and the like: a failed delivery, never a stuck one
            error = f"Delivery failed: {type(exc).__name__}"
        if fault is not None and error is None:  # the bot answered, but the answer never reached "Telegram"
            error = "Read timeout expired (injected: the answer was lost)"
    async with state.changed:
        state.delivered(update, error, asyncio.get_running_loop().time())
        state.changed.notify_all()
    if error is not None:
        log.info("webhook delivery of update %s failed: %s", update["update_id"], error)


async def _webhook_delivery(app: web.Application) -> AsyncIterator[None]:
    """Run ``deliver_webhooks`` for as long as the server runs (``cleanup_ctx``)."""
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(deliver_webhooks(app[STATE], session))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def index(request: web.Request) -> web.FileResponse:
    """The web chat page."""
    return web.FileResponse(STATIC_DIR / "index.html")


def build_app(token: str, *, max_download_bytes: int = 20 * 1024 * 1024, webhook_backoff: float = 0.1,
              webhook_max_backoff: float = 5.0, webhook_timeout: float = 10.0) -> web.Application:
    """The aiohttp application: Bot API, downloads, user API, the page, and webhook delivery."""
    register_heif_opener()  # iPhone photos: Telegram's apps turn HEIC into JPEG, so does the playground
    app = web.Application(middlewares=[userapi.bot_api_errors], client_max_size=64 * 1024 * 1024)
    app[STATE] = PlaygroundState(token=token, bot_user=bot_user(token), max_download_bytes=max_download_bytes,
                                 webhook_backoff=webhook_backoff, webhook_max_backoff=webhook_max_backoff,
                                 webhook_timeout=webhook_timeout)
    app.cleanup_ctx.append(_webhook_delivery)
    app.router.add_route("*", "/bot{token}/{method}", bot_api)
    app.router.add_get("/file/bot{token}/{path:.+}", download)
    app.router.add_get("/", index)
    app.router.add_routes(userapi.routes)
    return app


class PlaygroundServer:
    """Runs the playground on ``host:port`` (port 0 picks a free one) inside the current event loop."""

    def __init__(self, token: str, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.app = build_app(token, **options)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> PlaygroundState:
        """The in-memory world (tests may read it)."""
        return self.app[STATE]

    @property
    def url(self) -> str:
        """The root URL: the Bot API is at ``<url>/bot<token>/``, the page at ``<url>/``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("playground listening on %s", self.url)

    async def stop(self) -> None:
        """Stop serving (waiting long polls end)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
