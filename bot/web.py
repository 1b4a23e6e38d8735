"""The bot's own HTTP server: Telegram's webhook, health and metrics, on one small aiohttp app.

- ``POST <path of SNEAKERBOT_WEBHOOK_URL>`` (webhook mode only): checks the
  ``X-Telegram-Bot-Api-Secret-Token`` header (403 otherwise, nothing processed), parses the
  update and puts it on the PTB Application's ``update_queue``, then answers 200 at once; the
  Application handles it like a polled one. While no started bot is attached (starting,
  stopping) it answers 503, and Telegram delivers the update again later.
- ``GET /healthz``: 200 while the process serves HTTP (liveness).
- ``GET /readyz``: 200 only when a model is loaded, the bot is running and the database answers
  ``SELECT 1``; 503 otherwise, with a short JSON reason.
- ``GET /metrics``: the runtime's metrics in Prometheus' text format (``bot.metrics``).

The server can start before the runtime exists (``attach`` it later): the CLI starts it first,
so /healthz answers and /readyz says "model not loaded" while the model loads. Stopping stops
accepting connections and waits for requests in flight (aiohttp's graceful shutdown); the
updates already queued are then finished by ``Application.stop`` (``bot.app.stop_bot``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from telegram import Bot, Update
from telegram.ext import Application

from bot.metrics import CONTENT_TYPE, BotMetrics
from bot.services.models import ServedModel

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)


class ServedModels(Protocol):
    """Where the model being served is read (``bot.services.models.ModelHolder``)."""

    def current(self) -> ServedModel: ...


class ServedServices(Protocol):
    """The part of the bot's services the web server reads."""

    @property
    def models(self) -> ServedModels: ...


class Runtime(Protocol):
    """What the web server needs of a running bot (``bot.app.BotRuntime``), named here so that this
    module does not import the app that builds it."""

    @property
    def engine(self) -> Engine: ...

    @property
    def services(self) -> ServedServices: ...

    @property
    def application(self) -> Application[Any, Any, Any, Any, Any, Any]: ...

    @property
    def metrics(self) -> BotMetrics: ...


SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram accepts 1-256 of these; we ask for 16 at least (a guessable secret lets anyone post updates,
# and the log redaction leaves values under 8 characters alone).
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,256}")
MAX_UPDATE_BYTES = 1024 * 1024  # an update is a few KB: files come by file_id, never inline
READY_DB_TIMEOUT_S = 2.0


class WebhookConfigError(ValueError):
    """Webhook mode is asked for with settings it cannot run with (the message says which)."""


@dataclass(frozen=True)
class WebhookConfig:
    """Where Telegram sends updates and where the bot listens for them."""

    url: str  # the public URL given to setWebhook
    secret: str = field(repr=False)  # never printed, never logged
    host: str = "127.0.0.1"  # the listening address (behind a TLS-terminating proxy)
    port: int = 8443
    claim_lease_s: float = 60.0  # replicas: an unfinished claim on an update is taken over after this

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise WebhookConfigError(f"the webhook URL must be an absolute https:// URL, not {self.url!r}")
        if not SECRET_PATTERN.fullmatch(self.secret):
            raise WebhookConfigError("SNEAKERBOT_WEBHOOK_SECRET must be 16-256 characters of A-Z, a-z, 0-9, _ and -")

    @property
    def path(self) -> str:
        """The URL's path: where the bot's server takes the POSTs."""
        return urlsplit(self.url).path or "/"

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> WebhookConfig:
        """From ``SNEAKERBOT_WEBHOOK_*`` (``url`` overrides the setting); the secret is required."""
        url = url or settings.webhook_url
        if not url:
            raise WebhookConfigError("no webhook URL: pass --webhook URL or set SNEAKERBOT_WEBHOOK_URL")
        if settings.webhook_secret is None:
            raise WebhookConfigError("webhook mode needs SNEAKERBOT_WEBHOOK_SECRET (sent with each update)")
        return cls(url, settings.webhook_secret.get_secret_value(), settings.webhook_listen_host,
                   settings.webhook_listen_port, settings.webhook_claim_lease_s)


async def register_webhook(bot: Bot, config: WebhookConfig) -> None:
    """Tell the Bot API to POST updates to ``config.url`` with the secret (updates waiting are kept)."""
    await bot.set_webhook(config.url, secret_token=config.secret, allowed_updates=Update.ALL_TYPES,
                          drop_pending_updates=False)
    log.info("webhook set: Telegram delivers updates to %s", config.url)


def _select_one(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _json(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda value: json.dumps(value, separators=(",", ":")))


class BotWebServer:
    """Serves health, metrics and (with ``webhook``) the webhook on ``host:port`` in the running loop.

    ``port`` 0 picks a free port (``url`` tells which). ``metrics`` is what /metrics shows
    before a runtime is attached; afterwards the runtime's own.
    """

    def __init__(self, host: str, port: int, *, metrics: BotMetrics | None = None,
                 webhook: WebhookConfig | None = None, shutdown_timeout: float = 10.0,
                 db_timeout: float = READY_DB_TIMEOUT_S) -> None:
        self.host, self.port = host, port
        self.webhook = webhook
        self.runtime: Runtime | None = None
        self.refused = 0  # webhook POSTs refused for a missing or wrong secret
        self._metrics = metrics
        self._shutdown_timeout = shutdown_timeout
        self._db_timeout = db_timeout
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=MAX_UPDATE_BYTES)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        if webhook is not None:
            self.app.router.add_post(webhook.path, self.receive)

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening server."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    def attach(self, runtime: Runtime) -> None:
        """Serve this runtime: its readiness, its metrics and (webhook mode) its update queue."""
        self.runtime = runtime

    async def start(self) -> None:
        """Bind and serve (nothing happens when already serving)."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("serving /healthz, /readyz, /metrics%s on %s", " and the webhook" if self.webhook else "", self.url)

    async def stop(self) -> None:
        """Stop accepting connections, let the requests in flight finish, close."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- routes -------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """Alive."""
        return _json({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready to answer photos: a model loaded, the bot running, the database answering."""
        runtime = self.runtime
        if runtime is None:
            return _json({"ready": False, "reason": "model not loaded"}, 503)
        served = runtime.services.models.current()
        if served is None or served.identifier is None:
            return _json({"ready": False, "reason": "model not loaded"}, 503)
        if not runtime.application.running:
            return _json({"ready": False, "reason": "bot not running"}, 503)
        try:
            await asyncio.wait_for(asyncio.to_thread(_select_one, runtime.engine), self._db_timeout)
        except TimeoutError:
            return _json({"ready": False, "reason": f"database: no answer within {self._db_timeout:g}s"}, 503)
        except (SQLAlchemyError, OSError) as exc:  # the class only: messages may name hosts and users
            return _json({"ready": False, "reason": f"database: {type(exc).__name__}"}, 503)
        return _json({"ready": True, "model_version": served.version})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus' text format."""
        metrics = self.runtime.metrics if self.runtime is not None else self._metrics
        if metrics is None:
            return web.Response(status=503, text="no metrics yet\n")
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def receive(self, request: web.Request) -> web.Response:
        """One update from Telegram: checked, queued for the Application, answered at once."""
        assert self.webhook is not None
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.webhook.secret.encode()):
            self.refused += 1
            log.warning("webhook POST from %s refused: %s secret token", request.remote,
                        "wrong" if given else "no")
            return _json({"ok": False, "reason": "forbidden"}, 403)
        runtime = self.runtime
        if runtime is None or not runtime.application.running:  # starting or stopping: Telegram retries
            return _json({"ok": False, "reason": "not running"}, 503)
        try:
            data = await request.json()
            update = Update.de_json(data, runtime.application.bot) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("webhook POST with an unreadable update: %s", exc)
            update = None
        if update is None:
            return _json({"ok": False, "reason": "not an update"}, 400)
        await runtime.application.update_queue.put(update)
        return web.Response(status=200)
