"""Wires the learning loop into a running bot.

``install`` (an ``EXTENSIONS`` entry of ``bot.app``) adds, to an Application built by
``bot.app.build_application``:

- the instant-learning memory as the identify service's refiner and the feedback
  service's listener;
- the admin commands and their service;
- one repeating job (every ``model_poll_seconds``) that swaps in the registry's current
  model when it changed (a promotion or rollback, by any process) and sends what the
  worker left in the notifications outbox.

Retraining and scraping never run here: they are the worker's (``sneakerbot worker``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from telegram.error import TelegramError
from telegram.ext import Application

from bot.handlers import admin as admin_handlers
from bot.handlers.context import SERVICES_KEY, BotContext, BotServices
from bot.jobs.context import registry_for
from bot.registry import ModelRegistry
from bot.services.admin import AdminService
from bot.services.learning import LearningService, MemoryRules, learning_service_for
from bot.services.models import ServedModel, open_predictor
from bot.settings import Settings
from bot.store.models import Notification, utcnow

log = logging.getLogger(__name__)

SETTINGS_KEY = "settings"
LOOP_KEY = "learning_loop"


@dataclass
class LearningLoop:
    """The bot side of the loop: follows the registry, delivers the outbox."""

    sessions: sessionmaker[Session]
    registry: ModelRegistry
    services: BotServices
    learning: LearningService
    thresholds: dict[str, float | None] | None = None  # the settings' overrides, as at start
    backend: str = "onnx"

    def refresh_model(self) -> bool:
        """Serve the registry's current version if it is not the one served; True when swapped."""
        current = self.registry.current_version()
        served = self.services.models.current()
        if current is None or current == served.version:
            return False
        info = self.registry.get(current)
        predictor = open_predictor(info.path, backend=self.backend, thresholds=self.thresholds)
        self.services.models.swap(ServedModel(current, predictor))
        return True

    def claim_notifications(self, limit: int = 20) -> list[tuple[int, int, str]]:
        """Unsent notifications, each claimed by this process (two bots never send one twice)."""
        with self.sessions() as session:
            rows = session.execute(
                select(Notification.id, Notification.chat_id, Notification.text)
                .where(Notification.sent_at.is_(None)).order_by(Notification.id).limit(limit)
            ).all()
        claimed = []
        for note_id, chat_id, text in rows:
            with self.sessions.begin() as session:
                result = session.execute(
                    update(Notification).where(Notification.id == note_id, Notification.sent_at.is_(None))
                    .values(sent_at=utcnow())
                )
            if result.rowcount == 1:
                claimed.append((note_id, chat_id, text))
        return claimed

    def unclaim(self, note_id: int) -> None:
        """Put a notification back for the next round (sending it failed)."""
        with self.sessions.begin() as session:
            session.execute(update(Notification).where(Notification.id == note_id).values(sent_at=None))


def install(application: Application) -> None:
    """Add the learning loop to an Application (settings under ``bot_data["settings"]``)."""
    settings: Settings = application.bot_data[SETTINGS_KEY]
    services: BotServices = application.bot_data[SERVICES_KEY]
    sessions = services.identify.sessions
    engine = sessions.kw["bind"]
    registry = registry_for(settings, sessions)
    learning = learning_service_for(sessions, services.models, _decoder(settings), MemoryRules(
        admin_ids=settings.admin_ids,
        agree_users=settings.memory_agree_users,
        match_threshold=settings.memory_match_threshold,
        max_weight=settings.memory_max_weight,
    ))
    services.identify.refiners.append(learning)
    services.feedback.listeners.append(learning)
    services.extra[admin_handlers.ADMIN_KEY] = AdminService(
        sessions, engine, registry, admin_ids=settings.admin_ids,
        retrain_min_corrections=settings.retrain_min_corrections,
    )
    services.extra[LOOP_KEY] = LearningLoop(sessions, registry, services, learning, settings.threshold_overrides())
    admin_handlers.register(application)
    if application.job_queue is not None:
        application.job_queue.run_repeating(_follow, interval=settings.model_poll_seconds, first=1,
                                            name="learning_loop")


async def _follow(context: BotContext) -> None:
    """Swap in a newly promoted or rolled-back model; send the worker's messages."""
    loop: LearningLoop = context.services.extra[LOOP_KEY]
    try:
        await asyncio.to_thread(loop.refresh_model)
    except Exception:  # a broken model dir must not stop the bot: keep serving the old one
        log.exception("could not load the registry's current model; still serving the old one")
    for note_id, chat_id, text in await asyncio.to_thread(loop.claim_notifications):
        try:
            await context.bot.send_message(chat_id, text)
        except TelegramError as exc:
            log.warning("notification %d to %d not sent: %s", note_id, chat_id, exc)
            await asyncio.to_thread(loop.unclaim, note_id)


def _decoder(settings: Settings) -> Any:
    import functools

    from ml.images import open_image

    return functools.partial(open_image, max_pixels=settings.max_image_pixels)


def start_worker_process(health_port: int | None = None) -> subprocess.Popen:
    """For ``sneakerbot run`` on one machine: ``sneakerbot worker`` as a child process.

    A child, not threads of the bot: training is CPU-heavy Python that would compete with
    the bot's event loop for the GIL. The child reads the same environment and ``.env``; when
    the bot serves health on ``health_port``, the worker serves its own on the next port.
    """
    env = None
    if health_port is not None:
        env = {**os.environ, "SNEAKERBOT_HEALTH_PORT": str(health_port + 1)}
    return subprocess.Popen([sys.executable, "-m", "bot", "worker"], env=env)


def stop_worker_process(worker: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ask the worker to stop (SIGTERM: it finishes the running job's step and exits), then make sure."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

