"""The typed context handlers get: services come from ``bot_data``, never from module globals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from telegram.ext import Application, CallbackContext, ExtBot

from bot.services.feedback import FeedbackService
from bot.services.identify import IdentifyService
from bot.services.models import ModelHolder
from bot.services.ratelimit import RateLimiter
from bot.services.retention import RetentionService

SERVICES_KEY = "services"


@dataclass(frozen=True)
class BotLimits:
    """Plain values the handlers and texts need."""

    max_download_bytes: int
    rate_limit_per_minute: int
    retention_days: int
    search_url_template: str
    admin_ids: frozenset[int]
    retention_interval_s: int = 3600


@dataclass
class BotServices:
    """Everything the handlers use. Other areas hang their services in ``extra`` by name
    (e.g. the admin service of the learning loop under ``"admin"``)."""

    limits: BotLimits
    models: ModelHolder
    identify: IdentifyService
    feedback: FeedbackService
    rate_limit: RateLimiter
    retention: RetentionService
    extra: dict[str, Any] = field(default_factory=dict)


class BotContext(CallbackContext[ExtBot, dict, dict, dict]):
    """``CallbackContext`` with a typed ``services`` property."""

    def __init__(self, application: Application, chat_id: int | None = None, user_id: int | None = None) -> None:
        super().__init__(application=application, chat_id=chat_id, user_id=user_id)

    @property
    def services(self) -> BotServices:
        """The bot's services."""
        return self.application.bot_data[SERVICES_KEY]
