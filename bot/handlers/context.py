"""The typed context handlers get: services come from ``bot_data``, never from module globals."""

from __future__ import annotations

from dataclasses import dataclass

from telegram import CallbackQuery, Message, Update, User
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


# --- what a handler's filters guarantee, for the type checker ---------------------------
# PTB types every part of an update as optional; each handler is registered (``bot.app``,
# ``bot.handlers.admin.handlers``) for updates that have the part it reads.


def message_of(update: Update) -> Message:
    """The message of a command or message handler, or the one with the button pressed."""
    message = update.effective_message
    assert message is not None
    return message


def callback_query_of(update: Update) -> CallbackQuery:
    """The button press of a ``CallbackQueryHandler``."""
    query = update.callback_query
    assert query is not None
    return query


def sender_of(message: Message) -> User:
    """Who sent ``message``: every message but a channel post has a sender, and the bot answers no channel posts."""
    user = message.from_user
    assert user is not None
    return user
