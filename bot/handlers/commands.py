"""/start, /help and unknown commands."""

from __future__ import annotations

from telegram import Update

from bot import render
from bot.handlers.context import BotContext


async def start(update: Update, context: BotContext) -> None:
    """Say what the bot does, how to use it and what it keeps."""
    message = update.effective_message
    assert message is not None
    await message.reply_text(render.start_text(context.services.limits.retention_days))


async def help_command(update: Update, context: BotContext) -> None:
    """The longer how-to, with the privacy note."""
    limits = context.services.limits
    text = render.help_text(limits.retention_days, limits.max_download_bytes // (1024 * 1024),
                            limits.rate_limit_per_minute)
    message = update.effective_message
    assert message is not None
    await message.reply_text(text)


async def unknown_command(update: Update, context: BotContext) -> None:
    """A command the bot does not have."""
    message = update.effective_message
    assert message is not None
    await message.reply_text(render.UNKNOWN_COMMAND_TEXT)
