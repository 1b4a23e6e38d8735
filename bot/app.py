"""Build the running bot: database, model, services and the python-telegram-bot Application.

``build_runtime`` wires everything from one ``Settings``: ``build_services`` makes every
service once (identify, feedback, the learning memory, admin, the learning loop, ...) into
the typed ``BotServices`` the handlers get, and ``build_application`` registers every
handler. ``start_bot``/``stop_bot`` run long polling, or a webhook on the bot's own web
server (``bot.web``), inside the caller's event loop (the CLI and the tests use the same two
calls). Updates are handled concurrently; inference runs on the identify service's thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import native_memory, render
from bot.handlers import admin, commands, fallback, feedback, photos
from bot.handlers.context import SERVICES_KEY, BotContext, BotLimits, BotServices
from bot.learning_loop import LearningLoop
from bot.metrics import METRICS_KEY, BotMetrics
from bot.registry import registry_for
from bot.services.admin import AdminService
from bot.services.decoding import PhotoDecoder
from bot.services.feedback import FeedbackService
from bot.services.identify import IdentifyService
from bot.services.learning import MemoryRules, learning_service_for
from bot.services.models import ModelHolder, ServedModel, load_served_model
from bot.services.ratelimit import RateLimiter
from bot.services.retention import RetentionService
from bot.services.updates import UpdateClaims
from bot.settings import Settings
from bot.store.db import init_db, session_factory
from bot.telegram_http import HttpOptions, make_request
from bot.telegram_retry import RetryPolicy, stop_after_uncertain_delivery
from bot.web import BotWebServer, WebhookConfig, register_webhook

log = logging.getLogger(__name__)

MESSAGES = filters.UpdateType.MESSAGE  # edited messages are not answered again
IMAGE_FILES = filters.Document.IMAGE | functools.reduce(
    operator.or_, (filters.Document.FileExtension(ext) for ext in ("jpg", "jpeg", "png", "webp", "heic", "heif"))
)


@dataclass
class BotRuntime:
    """Everything ``sneakerbot run`` keeps alive."""

    engine: Engine
    sessions: sessionmaker[Session]
    services: BotServices
    application: Application
    metrics: BotMetrics = field(default_factory=BotMetrics)  # its own registry: several runtimes may share a process
    web: BotWebServer | None = None  # health, metrics and the webhook, when served
    claims: UpdateClaims | None = None  # webhook mode: each update handled by one replica


def build_services(settings: Settings, sessions: sessionmaker[Session], served: ServedModel) -> BotServices:
    """Every service of the bot, each built once here from plain settings values, and wired together:
    the learning memory refines identify's answers and hears feedback's corrections."""
    models = ModelHolder(served)
    registry = registry_for(settings, sessions)
    identify = IdentifyService(sessions, models, PhotoDecoder(max_pixels=settings.max_image_pixels),
                               data_dir=settings.data_dir, admin_ids=settings.admin_ids, top_k=settings.top_k,
                               threads=settings.inference_threads)
    feedback = FeedbackService(sessions, data_dir=settings.data_dir, retention_days=settings.retention_days,
                               known_label=models.knows, admin_ids=settings.admin_ids)
    learning = learning_service_for(sessions, models, _stored_photo_decoder(settings), MemoryRules(
        admin_ids=settings.admin_ids,
        agree_users=settings.memory_agree_users,
        match_threshold=settings.memory_match_threshold,
        max_weight=settings.memory_max_weight,
    ))
    identify.refiners.append(learning)
    feedback.listeners.append(learning)
    return BotServices(
        limits=BotLimits(settings.max_download_bytes, settings.rate_limit_per_minute, settings.retention_days,
                         settings.search_url_template, settings.admin_ids, settings.retention_interval_s,
                         settings.model_poll_seconds),
        models=models,
        identify=identify,
        feedback=feedback,
        rate_limit=RateLimiter(sessions, settings.rate_limit_per_minute),
        retention=RetentionService(sessions, settings.retention_days),
        learning=learning,
        admin=AdminService(sessions, registry, admin_ids=settings.admin_ids,
                           retrain_min_corrections=settings.retrain_min_corrections),
        loop=LearningLoop(sessions, registry, models, thresholds=settings.threshold_overrides()),
    )


def _stored_photo_decoder(settings: Settings) -> Callable[[bytes], Any]:
    """How the memory opens a stored photo to embed it (imported here: ``ml.images`` is only needed then)."""
    from ml.images import open_image

    return functools.partial(open_image, max_pixels=settings.max_image_pixels)


def build_application(settings: Settings, services: BotServices, *, api_root: str | None = None,
                      token: str | None = None, metrics: BotMetrics | None = None) -> Application:
    """The PTB Application talking to ``<api_root>/bot<token>/``, with every handler registered."""
    root = (api_root or settings.bot_api_url).rstrip("/")
    token = token or (settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else None)
    if not token:
        raise ValueError("no Telegram bot token: set TELEGRAM_BOT_TOKEN or use the playground")
    application = (
        ApplicationBuilder()
        .token(token)
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .context_types(ContextTypes(context=BotContext))
        .concurrent_updates(settings.concurrent_updates)
        # A small pool: httpx scans every pooled connection on each request.
        .request(make_request(settings.telegram_http, bot_api_http_options(settings)))
        # getUpdates has its own connection; PTB adds the long-poll timeout to this read timeout.
        .get_updates_request(make_request(settings.telegram_http, HttpOptions(pool_size=1, read_timeout=10)))
        # 429s are retried after retry_after by the request itself (bot/telegram_retry.py), downloads too.
        .rate_limiter(AIORateLimiter(overall_max_rate=settings.telegram_overall_rate, max_retries=0))
        .build()
    )
    application.bot_data[SERVICES_KEY] = services
    if metrics is not None:  # every update counted first, in its own group: the others still run
        application.bot_data[METRICS_KEY] = metrics
        application.add_handler(TypeHandler(Update, metrics.on_update), group=-1)
    register_handlers(application)
    application.add_error_handler(stop_after_uncertain_delivery)  # first: no apology after a maybe-sent message
    application.add_error_handler(fallback.on_error)
    return application


def bot_api_http_options(settings: Settings) -> HttpOptions:
    """Connection pool, timeouts and retry policy of the bot's Bot API calls and downloads."""
    retry = RetryPolicy(retries=settings.telegram_retries, backoff=settings.telegram_retry_backoff_s,
                        max_retry_after=settings.telegram_max_retry_after_s)
    return HttpOptions(pool_size=settings.telegram_connection_pool, read_timeout=settings.telegram_read_timeout_s,
                       connect_timeout=settings.telegram_connect_timeout_s, retry=retry)


def register_handlers(application: Application) -> None:
    """Commands first (the admins' included, with their buttons), then photos, buttons, text and the catch-alls."""
    for handler in [*command_handlers(), *admin.handlers(), *message_handlers()]:
        application.add_handler(handler)


def command_handlers() -> list[BaseHandler]:
    """/start and /help."""
    return [CommandHandler("start", commands.start), CommandHandler("help", commands.help_command)]


def message_handlers() -> list[BaseHandler]:
    """Photos, image files, buttons, text, unknown commands and everything else, in that order."""
    return [
        MessageHandler(MESSAGES & filters.PHOTO, photos.on_photo),
        MessageHandler(MESSAGES & IMAGE_FILES, photos.on_image_file),
        CallbackQueryHandler(feedback.on_button),
        MessageHandler(MESSAGES & filters.TEXT & ~filters.COMMAND, feedback.on_text),
        MessageHandler(MESSAGES & filters.COMMAND, commands.unknown_command),
        MessageHandler(MESSAGES & filters.Document.ALL, fallback.not_an_image_file),
        MessageHandler(MESSAGES, fallback.anything_else),
    ]


async def _on_started(application: Application) -> None:
    """Register the command menu (a failure is logged, not fatal), the retention job and the learning loop's."""
    try:
        await application.bot.set_my_commands(render.COMMANDS)
    except TelegramError as exc:
        log.warning("setMyCommands failed: %s", exc)
    services: BotServices = application.bot_data[SERVICES_KEY]
    if application.job_queue is not None:  # in-process and built once per start: no duplicates
        application.job_queue.run_repeating(_retention_job, interval=services.limits.retention_interval_s,
                                            first=5, name="retention")
        application.job_queue.run_repeating(services.loop.tick, interval=services.limits.model_poll_seconds,
                                            first=1, name="learning_loop")
        application.job_queue.run_repeating(_trim_job, interval=native_memory.TRIM_INTERVAL_S,
                                            first=native_memory.TRIM_INTERVAL_S, name="memory_trim")


async def _trim_job(context: BotContext) -> None:
    """Give the allocator's free pages back (``bot.native_memory``), off the loop."""
    await asyncio.to_thread(native_memory.trim)


async def _retention_job(context: BotContext) -> None:
    """Delete pending photos past their retention, and old update claims (off the loop)."""
    await asyncio.to_thread(context.services.retention.purge)


def build_runtime(settings: Settings, *, served: ServedModel | None = None, api_root: str | None = None,
                  token: str | None = None, metrics: BotMetrics | None = None) -> BotRuntime:
    """Database (migrated), model (starter installed on first start), services, metrics and Application."""
    native_memory.tune_allocator()  # before the model's and the pool's threads allocate
    settings.ensure_dirs()
    engine = init_db(settings.db_url, retry_seconds=settings.db_retry_seconds)
    sessions = session_factory(engine)
    if served is None:
        served = load_served_model(sessions, starter_dir=settings.starter_model_dir, models_dir=settings.models_path,
                                   thresholds=settings.threshold_overrides())
    services = build_services(settings, sessions, served)
    metrics = metrics or BotMetrics()
    metrics.watch_model(services.models)
    application = build_application(settings, services, api_root=api_root, token=token, metrics=metrics)
    return BotRuntime(engine, sessions, services, application, metrics)


async def start_bot(runtime: BotRuntime, *, poll_timeout: int = 10, webhook: WebhookConfig | None = None,
                    web: BotWebServer | None = None) -> None:
    """Initialise and start the Application in the running event loop (pending updates are kept), then
    long polling, or with ``webhook`` setWebhook to our own server (``bot.web``; one is made on the
    config's host and port unless ``web`` is given). ``web`` alone serves health and metrics."""
    application = runtime.application
    if webhook is not None and runtime.claims is None:  # replicas may get the same update: claim each one
        runtime.claims = UpdateClaims(runtime.sessions, lease_s=webhook.claim_lease_s)
        runtime.claims.install(application)
    await application.initialize()
    await application.start()
    await _on_started(application)
    if webhook is not None and web is None:
        web = BotWebServer(webhook.host, webhook.port, webhook=webhook)
    if web is not None:
        runtime.web = web
        web.attach(runtime)
        await web.start()  # a no-op when it already served /healthz while the model loaded
    if webhook is None:  # PTB deletes a webhook set before
        assert application.updater is not None
        await application.updater.start_polling(timeout=poll_timeout, poll_interval=0.0,
                                                allowed_updates=Update.ALL_TYPES, drop_pending_updates=False)
    else:
        await register_webhook(application.bot, webhook)


async def stop_bot(runtime: BotRuntime) -> None:
    """Stop taking updates (polling, or the web server: requests in flight finish), finish the updates
    taken and the running handlers, release the database. The webhook stays set: Telegram keeps the
    updates that come meanwhile for the next start."""
    application = runtime.application
    if runtime.web is not None:
        await runtime.web.stop()
    assert application.updater is not None
    if application.updater.running:
        await application.updater.stop()
    if application.running:
        await application.stop()
    await application.shutdown()
    runtime.services.identify.close()
    runtime.engine.dispose()

