"""Everything that is not a photo, an image file, text or a known command, and the error handler."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import TelegramError

from bot import render
from bot.handlers.context import BotContext

log = logging.getLogger(__name__)


async def not_an_image_file(update: Update, context: BotContext) -> None:
    """A document that is not an image."""
    message = update.effective_message
    assert message is not None
    await message.reply_text(render.NOT_IMAGE_FILE_TEXT)


async def anything_else(update: Update, context: BotContext) -> None:
    """Stickers, video, voice, locations, …: a short how-to, nothing stored."""
    message = update.effective_message
    assert message is not None
    await message.reply_text(render.OTHER_TEXT)


async def on_error(update: object, context: BotContext) -> None:
    """Log every unexpected error with its traceback, then tell the user briefly."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None and update.callback_query is None:
        try:
            await update.effective_message.reply_text(render.ERROR_TEXT)
        except TelegramError:
            log.warning("could not tell the user about the error", exc_info=True)
    elif isinstance(update, Update) and update.callback_query is not None:
        try:
            await update.callback_query.answer(render.ERROR_TEXT, show_alert=True)
        except TelegramError:
            log.warning("could not answer the callback query after an error", exc_info=True)
