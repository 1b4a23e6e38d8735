"""Admin commands: thin handlers over ``AdminService``.

Only ``SNEAKERBOT_ADMIN_IDS`` may use them; anyone else gets "not allowed" and the
attempt is logged. Work runs off the event loop; long work goes to the worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from telegram import Update
from telegram.ext import BaseHandler, CallbackQueryHandler, CommandHandler

from bot import render_admin
from bot.handlers.context import BotContext, callback_query_of, message_of
from bot.registry import RegistryError
from bot.services.admin import DEFAULT_SCRAPE, AdminError, confusion_png

log = logging.getLogger(__name__)

Handler = Callable[[Update, BotContext], Coroutine[Any, Any, None]]  # what PTB's handlers take
View = TypeVar("View")


class UsageError(Exception):
    """Malformed command arguments; the message is the usage line the admin gets back."""


def _chat_id(update: Update) -> int:
    """The chat a command came from (for the worker's report)."""
    chat = update.effective_chat
    assert chat is not None
    return chat.id


def admin_only(handler: Handler) -> Handler:
    """Run ``handler`` for admins; tell everyone else "not allowed" and log it.

    What the admin can fix (bad arguments, refused actions) is answered with the error's message.
    """

    @functools.wraps(handler)
    async def guarded(update: Update, context: BotContext) -> None:
        user = update.effective_user
        if not context.services.admin.is_admin(user.id if user else None):
            query = update.callback_query
            text = query.data if query is not None else message_of(update).text
            log.warning("not allowed: user %s tried %r", user.id if user else None, text)
            if query is not None:
                await query.answer(render_admin.NOT_ALLOWED, show_alert=True)
            else:
                await message_of(update).reply_text(render_admin.NOT_ALLOWED)
            return
        try:
            await handler(update, context)
        except (AdminError, RegistryError, UsageError) as exc:
            await message_of(update).reply_text(str(exc))

    return guarded


async def _reply(update: Update, text: str) -> None:
    await message_of(update).reply_text(text)


async def _reply_with(update: Update, fetch: Callable[[], View], render: Callable[[View], str]) -> View:
    """Run a service query off the event loop and reply with its rendering; returns the view for follow-ups."""
    view = await asyncio.to_thread(fetch)
    await _reply(update, render(view))
    return view


# --- argument parsing: pure functions of the words after the command ----------------
MAX_NUMBER_DIGITS = 18  # any int of this many digits fits a database integer (and int() is quick)


def _number(text: str) -> int | None:
    """A typed count or version: plain ASCII digits ("²".isdigit() is True, int("²") fails)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_NUMBER_DIGITS else None


def parse_scrape_args(args: Sequence[str]) -> tuple[str, int]:
    """``/scrape <label> [n]``: ``(label, n)``, n defaulting to ``DEFAULT_SCRAPE``; else ``UsageError``.

    The label's form and n's range are the service's to check (``AdminError``).
    """
    if len(args) == 1:
        return args[0], DEFAULT_SCRAPE
    if len(args) == 2 and (count := _number(args[1])) is not None:
        return args[0], count
    raise UsageError(render_admin.usage("scrape", "<label> [number of images]"))


def parse_addclass_args(args: Sequence[str]) -> tuple[str, str]:
    """``/addclass <label> <display name>``: ``(label, display name)``; else ``UsageError``."""
    if len(args) < 2:
        raise UsageError(render_admin.usage("addclass", "<label> <display name>"))
    return args[0], " ".join(args[1:])


def parse_rollback_args(args: Sequence[str]) -> int:
    """``/rollback <version>``: the version; else ``UsageError``."""
    version = _number(args[0]) if len(args) == 1 else None
    if version is None:
        raise UsageError(render_admin.usage("rollback", "<version>"))
    return version


@admin_only
async def status(update: Update, context: BotContext) -> None:
    """/status: model version and metrics, data counts, pending corrections, jobs."""
    await _reply_with(update, context.services.admin.status, render_admin.status)


@admin_only
async def retrain(update: Update, context: BotContext) -> None:
    """/retrain: queue a retrain; the worker reports old vs new metrics when done."""
    await asyncio.to_thread(context.services.admin.request_retrain, _chat_id(update))
    await _reply(update, render_admin.job_requested("a retrain"))


@admin_only
async def scrape(update: Update, context: BotContext) -> None:
    """/scrape <label> [n]: queue a scrape of one class."""
    label, count = parse_scrape_args(context.args or [])
    await asyncio.to_thread(context.services.admin.request_scrape, label, count, _chat_id(update))
    await _reply(update, render_admin.job_requested(f"a scrape of {label} ({count} images)"))


@admin_only
async def addclass(update: Update, context: BotContext) -> None:
    """/addclass <label> <display name>: add a class, scrape it, then retrain."""
    label, name = parse_addclass_args(context.args or [])
    await asyncio.to_thread(context.services.admin.add_class, label, name, _chat_id(update))
    await _reply(update, render_admin.job_requested(f"adding {name} ({label}): a scrape, then a retrain"))


@admin_only
async def classes(update: Update, context: BotContext) -> None:
    """/classes: the catalogue and what the model knows."""
    await _reply_with(update, context.services.admin.classes, render_admin.classes)


@admin_only
async def suggestions(update: Update, context: BotContext) -> None:
    """/suggestions: one message per pending name, with accept / reject buttons."""
    pending = await _reply_with(update, context.services.admin.pending_suggestions,
                                lambda items: render_admin.suggestions_header(len(items)))
    for item in pending:
        await message_of(update).reply_text(
            render_admin.suggestion(item.text, item.user_id, item.count),
            reply_markup=render_admin.suggestion_keyboard(item.id),
        )


@admin_only
async def on_suggestion_button(update: Update, context: BotContext) -> None:
    """Accept or reject a suggestion (accepting adds the class, scrapes and retrains)."""
    query = callback_query_of(update)  # registered as a CallbackQueryHandler
    parsed = render_admin.parse_suggestion_data(query.data)
    if parsed is None:
        await query.answer(render_admin.FORGED, show_alert=True)
        return
    accept, suggestion_id = parsed
    try:
        text, label = await asyncio.to_thread(
            context.services.admin.decide_suggestion, suggestion_id, accept, _chat_id(update)
        )
    except AdminError as exc:
        await query.answer(str(exc), show_alert=True)
        return
    await query.answer("Done")
    await query.edit_message_text(render_admin.suggestion_decided(text, accept, label))


@admin_only
async def rollback(update: Update, context: BotContext) -> None:
    """/rollback <version>: serve an earlier model (every bot process within seconds)."""
    version = parse_rollback_args(context.args or [])
    info = await asyncio.to_thread(context.services.admin.rollback, version)
    await _reply(update, render_admin.rolled_back(info.version))


@admin_only
async def stats(update: Update, context: BotContext) -> None:
    """/stats: accuracy from feedback per class, confused pairs and a confusion-matrix image."""
    view = await _reply_with(update, context.services.admin.stats, render_admin.stats)
    if view.pairs:
        png = await asyncio.to_thread(confusion_png, view.pairs)
        await message_of(update).reply_photo(png, caption=render_admin.STATS_CAPTION)


COMMANDS: dict[str, Handler] = {
    "status": status,
    "retrain": retrain,
    "scrape": scrape,
    "addclass": addclass,
    "classes": classes,
    "suggestions": suggestions,
    "rollback": rollback,
    "stats": stats,
}


def handlers() -> list[BaseHandler]:
    """The admin commands and the suggestion buttons (to add before the bot's catch-alls)."""
    return [*(CommandHandler(name, handler) for name, handler in COMMANDS.items()),
            CallbackQueryHandler(on_suggestion_button, pattern=f"^{render_admin.SUGGESTION_PREFIX}:")]
