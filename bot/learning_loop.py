"""The bot side of the learning loop: follow the model registry, deliver the worker's outbox.

``bot.app.build_services`` makes one ``LearningLoop``; the Application runs its ``tick``
every ``model_poll_seconds``. A tick swaps in the registry's current model when it changed
(a promotion or rollback, by any process) and sends what the worker left in the
notifications outbox, worded by ``bot.render_admin`` as it goes out.

Retraining and scraping never run here: they are the worker's (``sneakerbot worker``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from telegram.error import TelegramError
from telegram.ext import CallbackContext

from bot import render_admin
from bot.registry import ModelRegistry
from bot.services.models import ModelHolder, ServedModel, open_predictor
from bot.store.models import utcnow
from bot.store.repositories import NotificationRepository

log = logging.getLogger(__name__)


class LearningLoop:
    """Follows the registry for one bot process and delivers the outbox."""

    def __init__(self, sessions: sessionmaker[Session], registry: ModelRegistry, models: ModelHolder, *,
                 thresholds: dict[str, float | None] | None = None, backend: str = "onnx") -> None:
        self.sessions = sessions
        self.registry = registry
        self.models = models
        self.thresholds = thresholds  # the settings' overrides, as at start
        self.backend = backend

    def refresh_model(self) -> bool:
        """Serve the registry's current version if it is not the one served; True when swapped."""
        current = self.registry.current_version()
        served = self.models.current()
        if current is None or current == served.version:
            return False
        info = self.registry.get(current)
        predictor = open_predictor(info.path, backend=self.backend, thresholds=self.thresholds)
        self.models.swap(ServedModel(current, predictor))
        return True

    def claim_notifications(self, limit: int = 20) -> list[tuple[int, int, str, dict[str, Any]]]:
        """Unsent notifications (id, chat, kind, payload), each claimed by this process (two bots never send
        one twice)."""
        with self.sessions() as session:
            rows = NotificationRepository(session).unsent(limit)
        claimed = []
        for note_id, chat_id, kind, payload in rows:
            with self.sessions.begin() as session:
                if NotificationRepository(session).claim(note_id, utcnow()):
                    claimed.append((note_id, chat_id, kind, payload or {}))
        return claimed

    def unclaim(self, note_id: int) -> None:
        """Put a notification back for the next round (sending it failed)."""
        with self.sessions.begin() as session:
            NotificationRepository(session).unclaim(note_id)

    async def tick(self, context: CallbackContext) -> None:
        """Swap in a newly promoted or rolled-back model; send the worker's messages (a job of the Application)."""
        try:
            await asyncio.to_thread(self.refresh_model)
        except Exception:  # a broken model dir must not stop the bot: keep serving the old one
            log.exception("could not load the registry's current model; still serving the old one")
        for note_id, chat_id, kind, payload in await asyncio.to_thread(self.claim_notifications):
            try:
                await context.bot.send_message(chat_id, render_admin.notification(kind, payload))
            except TelegramError as exc:
                log.warning("notification %d to %d not sent: %s", note_id, chat_id, exc)
                await asyncio.to_thread(self.unclaim, note_id)
