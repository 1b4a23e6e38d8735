"""The typed context handlers get: services come from ``bot_data``, never from module globals."""

from __future__ import annotations

from dataclasses import dataclass

from telegram.ext import Application, CallbackContext, ExtBot

from bot.learning_loop import LearningLoop
from bot.services.admin import AdminService
from bot.services.feedback import FeedbackService
from bot.services.identify import IdentifyService
from bot.services.learning import LearningService
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
    model_poll_seconds: float = 3.0


@dataclass
class BotServices:
    """Everything the handlers use, built once by ``bot.app.build_services``."""

    limits: BotLimits
    models: ModelHolder
    identify: IdentifyService
    feedback: FeedbackService
    rate_limit: RateLimiter
    retention: RetentionService
    learning: LearningService  # the instant-learning memory: identify's refiner, feedback's listener
    admin: AdminService
    loop: LearningLoop  # follows the model registry, delivers the worker's outbox


class BotContext(CallbackContext[ExtBot, dict, dict, dict]):
    """``CallbackContext`` with a typed ``services`` property."""

    def __init__(self, application: Application, chat_id: int | None = None, user_id: int | None = None) -> None:
        super().__init__(application=application, chat_id=chat_id, user_id=user_id)

    @property
    def services(self) -> BotServices:
        """The bot's services."""
        return self.application.bot_data[SERVICES_KEY]
