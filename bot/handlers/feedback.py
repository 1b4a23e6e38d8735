"""Button presses and the typed "Not listed" name.

Each button action is one small coroutine in ``BUTTON_ACTIONS``; a press the feedback
service rejects (forged, someone else's, expired) gets a polite alert and changes nothing.

While the database is away the services retry on their thread, so a press is stored late,
not lost. When it stays away past the retry budget the press gets a "try again in a moment"
alert (``render.DB_UNAVAILABLE_TEXT``) and nothing of it was stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from telegram import CallbackQuery, InlineKeyboardMarkup, Update
from telegram.error import BadRequest

from bot import render
from bot.handlers.context import BotContext, callback_query_of, message_of, sender_of
from bot.metrics import metrics_of
from bot.services.errors import FeedbackRejected, UnknownLabel
from bot.store.retry import DatabaseUnavailable

log = logging.getLogger(__name__)
ButtonAction = Callable[[CallbackQuery, render.Callback, BotContext], Awaitable[None]]


async def on_button(update: Update, context: BotContext) -> None:
    """Dispatch a button press by its action letter."""
    query = callback_query_of(update)
    callback = render.parse(query.data)
    if callback is None:
        log.info("unrecognised callback data from %s: %r", query.from_user.id, query.data)
        await query.answer(render.ALERTS["unknown"], show_alert=True)
        return
    try:
        await BUTTON_ACTIONS[callback.action](query, callback, context)
        metrics_of(context).feedback(callback.action)  # stored (a rejected press raised)
    except FeedbackRejected as exc:
        log.info("rejected press %r by %s: %s", query.data, query.from_user.id, exc.reason)
        await query.answer(render.ALERTS[exc.reason], show_alert=True)
    except DatabaseUnavailable as exc:
        log.warning("press %r by %s not stored: %s", query.data, query.from_user.id, exc)
        await _answer(query, render.DB_UNAVAILABLE_TEXT, show_alert=True)


async def confirm(query: CallbackQuery, callback: render.Callback, context: BotContext) -> None:
    """✅ Correct: store the confirmation, thank, leave only "Change answer"."""
    label = await asyncio.to_thread(context.services.feedback.confirm, callback.prediction_id, query.from_user.id)
    await _answer(query, "Thanks!")
    display = context.services.models.display_name(label)
    await _edit(query, render.thanks_text(display, confirmed=True), render.change_keyboard(callback.prediction_id))


async def show_models(query: CallbackQuery, callback: render.Callback, context: BotContext) -> None:
    """❌ Wrong, "It is a sneaker", "It is one of yours", "Change answer" and ◀ ▶: the paged list of models."""
    await asyncio.to_thread(context.services.feedback.check, callback.prediction_id, query.from_user.id)
    arg = callback.arg or ""
    page = int(arg) if callback.action == render.Action.PAGE and arg.isdigit() else 0
    await _answer(query)
    keyboard = render.correction_keyboard(callback.prediction_id, context.services.models.sorted_classes(), page)
    await _edit(query, render.CORRECTION_TEXT, keyboard)


async def pick_label(query: CallbackQuery, callback: render.Callback, context: BotContext) -> None:
    """A model from the list: store the correction."""
    label = render.resolve_label(callback.arg, context.services.models.sorted_classes())
    if label is None:
        raise UnknownLabel()
    await asyncio.to_thread(context.services.feedback.correct, callback.prediction_id, query.from_user.id, label)
    await _answer(query, "Thanks!")
    display = context.services.models.display_name(label)
    await _edit(query, render.thanks_text(display, confirmed=False), render.change_keyboard(callback.prediction_id))


async def not_listed(query: CallbackQuery, callback: render.Callback, context: BotContext) -> None:
    """"Not listed" (or "Tell me its name" under an unknown sneaker): ask for the name; the next text
    message is the suggestion."""
    await asyncio.to_thread(context.services.feedback.not_listed, callback.prediction_id, query.from_user.id)
    await _answer(query)
    await _edit(query, render.ASK_NAME_TEXT, render.change_keyboard(callback.prediction_id))


async def page_counter(query: CallbackQuery, callback: render.Callback, context: BotContext) -> None:
    """The "2/3" button does nothing but must be answered."""
    await query.answer()


BUTTON_ACTIONS: dict[render.Action, ButtonAction] = {
    render.Action.CORRECT: confirm,
    render.Action.WRONG: show_models,
    render.Action.SNEAKER: show_models,
    render.Action.PAGE: show_models,
    render.Action.LABEL: pick_label,
    render.Action.NOT_LISTED: not_listed,
    render.Action.NOOP: page_counter,
}


async def _answer(query: CallbackQuery, text: str | None = None, *, show_alert: bool = False) -> None:
    """Answer a press after its database work. That work may have waited out a database outage,
    and Telegram refuses to answer a query that old: the press is stored all the same, so the
    message is still edited."""
    try:
        await query.answer(text, show_alert=show_alert or None)
    except BadRequest as exc:
        if "query is too old" not in str(exc):
            raise
        log.info("press by %s answered too late for Telegram: %s", query.from_user.id, exc)


async def _edit(query: CallbackQuery, text: str, keyboard: InlineKeyboardMarkup) -> None:
    """Edit the answer in place; pressing the same thing twice is not an error."""
    try:
        await query.edit_message_text(text, reply_markup=keyboard)
    except BadRequest as exc:
        if "not modified" not in str(exc):
            raise


async def on_text(update: Update, context: BotContext) -> None:
    """A typed name after "Not listed" or "Tell me its name" becomes a suggestion; other text gets the how-to."""
    message = message_of(update)
    user_id = sender_of(message).id
    text = message.text
    assert text is not None  # registered for text messages only
    try:
        suggestion = await asyncio.to_thread(context.services.feedback.suggest, user_id, text)
    except DatabaseUnavailable as exc:
        log.warning("text from %s not stored: %s", user_id, exc)
        await message.reply_text(render.DB_UNAVAILABLE_TEXT)
        return
    if suggestion is None:
        await message.reply_text(render.OTHER_TEXT)
    else:
        await message.reply_text(render.suggestion_thanks(suggestion.text))
