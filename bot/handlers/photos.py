"""Photos and image files: rate limit, "typing", download, identify off the loop, reply.

Albums need nothing special: Telegram delivers each photo of a media group as its own
message, and with concurrent updates each gets its own answer, as a reply to that photo.

Faults of the Bot API are retried below these calls (``bot.telegram_retry``): getFile and the
download after any transient failure, the reply only when it surely was not sent. A reply whose
outcome is unknown (``DeliveryUncertain``) is not sent again, nor replaced by another message:
the user gets at most one answer, and the prediction keeps no reply id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from telegram import InlineKeyboardMarkup, Message, PhotoSize, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bot import render
from bot.handlers.context import BotContext, message_of, sender_of
from bot.metrics import metrics_of
from bot.services.errors import PhotoRejected
from bot.services.identify import PhotoRequest
from bot.telegram_retry import DeliveryUncertain

log = logging.getLogger(__name__)


def largest_fitting(sizes: Sequence[PhotoSize], max_bytes: int) -> PhotoSize | None:
    """The biggest photo size we may download (sizes without a known size are assumed to fit)."""
    fitting = [s for s in sizes if (s.file_size or 0) <= max_bytes]
    return max(fitting, key=lambda s: s.width * s.height, default=None)


async def on_photo(update: Update, context: BotContext) -> None:
    """A photo: answer with the top guesses."""
    message = message_of(update)
    size = largest_fitting(message.photo, context.services.limits.max_download_bytes)
    if size is None:
        await reply(message, render.too_large_text(context.services.limits.max_download_bytes))
        return
    await identify_and_reply(message, size.file_id, context)


async def on_image_file(update: Update, context: BotContext) -> None:
    """An image sent as a file: same as a photo, after the size check."""
    message = message_of(update)
    document = message.document
    assert document is not None  # registered for image documents only
    if (document.file_size or 0) > context.services.limits.max_download_bytes:
        await reply(message, render.too_large_text(context.services.limits.max_download_bytes))
        return
    await identify_and_reply(message, document.file_id, context)


async def identify_and_reply(message: Message, file_id: str, context: BotContext) -> None:
    """The shared path: limit, typing, download, identify, reply, remember the reply."""
    services = context.services
    started = time.perf_counter()
    user = sender_of(message)
    if not await asyncio.to_thread(services.rate_limit.allow, user.id):
        await reply(message, render.rate_limited_text(services.limits.rate_limit_per_minute))
        return
    context.application.create_task(_typing(message, context), update=None)  # in parallel with the download
    try:
        data = await (await context.bot.get_file(file_id)).download_as_bytearray()
    except BadRequest as exc:  # "file is too big" from the Bot API
        log.info("download refused: %s", exc)
        await reply(message, render.too_large_text(services.limits.max_download_bytes))
        return
    request = PhotoRequest(bytes(data), user.id, message.chat_id, message.message_id, user.username)
    try:
        result = await services.identify.run(request)
    except PhotoRejected as exc:
        await reply(message, render.rejection_text(exc.reason))
        return
    if result.reply_message_id is not None:  # the same update again (the bot stopped before confirming it)
        log.info("message %s in chat %s was answered before: not answering twice", message.message_id, message.chat_id)
        return
    metrics_of(context).prediction(result.verdict, result.detail)
    keyboard = render.answer_keyboard(result, services.limits.search_url_template)
    answer = await reply(message, render.answer_text(result), keyboard)
    if answer is None:
        log.warning("prediction %s: its answer to message %s in chat %s may not have arrived; not sent again",
                    result.prediction_id, message.message_id, message.chat_id)
        return
    metrics_of(context).photo_answered(time.perf_counter() - started)
    await asyncio.to_thread(services.identify.attach_reply, result.prediction_id, answer.message_id)


async def reply(message: Message, text: str, keyboard: InlineKeyboardMarkup | None = None) -> Message | None:
    """Reply to ``message``; None when the reply may or may not have been sent (it is not sent twice)."""
    try:
        return await message.reply_text(text, reply_markup=keyboard, do_quote=True)
    except DeliveryUncertain:  # logged where it was raised
        return None


async def _typing(message: Message, context: BotContext) -> None:
    """Show "typing…"; a failure here must not cost the answer."""
    try:
        await context.bot.send_chat_action(message.chat_id, ChatAction.TYPING)
    except TelegramError as exc:
        log.info("chat action failed: %s", exc)

