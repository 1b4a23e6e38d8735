"""The user side: what a person's Telegram app would do, as a small JSON API.

The web chat page and the tests use it to send messages, photos, files and button
presses as a given user, and to long-poll what the bot did in that chat.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from bot.playground.botapi import METHODS
from bot.playground.state import (
    DOWNLOAD,
    FAULT_KINDS,
    JSON,
    STATE,
    WEBHOOK,
    BotApiError,
    Fault,
    PlaygroundState,
    bad_request,
)

routes = web.RouteTableDef()
PHOTO_SIDES = (320, 1280)  # Telegram keeps several sizes; two are enough to choose from
MAX_EVENT_WAIT = 30.0
MAX_FAULT_HOLD = 120.0  # the longest an injected "timeout" may hold a request, in seconds

# Message kinds the page can send without a file: what a real client would attach.
SYNTHETIC_KINDS: dict[str, JSON] = {
    "sticker": {"sticker": {"type": "regular", "width": 512, "height": 512, "is_animated": False,
                            "is_video": False, "emoji": "\U0001f45f"}},
    "location": {"location": {"latitude": 52.5200, "longitude": 13.4050}},
    "voice": {"voice": {"duration": 2, "mime_type": "audio/ogg"}},
    "video": {"video": {"width": 320, "height": 240, "duration": 3}},
}


def state_of(request: web.Request) -> PlaygroundState:
    """The playground state this server holds."""
    return request.app[STATE]


def ok(result: Any) -> web.Response:
    """A successful JSON answer in the Bot API's envelope."""
    return web.json_response({"ok": True, "result": result})


def user_of(request: web.Request, first_name: str | None = None) -> JSON:
    """The user named in the path, created on first use."""
    try:
        user_id = int(request.match_info["user_id"])
    except ValueError:
        raise bad_request("user id must be a positive integer") from None
    if user_id <= 0:
        raise bad_request("user id must be a positive integer")
    return state_of(request).user(user_id, first_name)


def photo_sizes(data: bytes) -> list[tuple[bytes, int, int]]:
    """JPEGs of growing size, as Telegram keeps them (its largest side is at most 1280 px here).

    A JPEG upload that already fits is kept as it is instead of being re-encoded, and small
    sizes are decoded at reduced scale: the playground should not be the bench's bottleneck.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            original_size, is_jpeg = probe.size, probe.format == "JPEG"
        sizes = []
        for side in PHOTO_SIDES:
            if max(original_size) <= side and is_jpeg:
                sizes.append((data, *original_size))
            else:
                sizes.append(_scaled_jpeg(data, side, exact=side == PHOTO_SIDES[-1]))
            if max(original_size) <= side:
                break
        return sizes
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError):
        raise bad_request("IMAGE_PROCESS_FAILED") from None


def _scaled_jpeg(data: bytes, side: int, *, exact: bool) -> tuple[bytes, int, int]:
    """The image fitted into ``side`` x ``side`` as a JPEG.

    ``exact``: the largest side is ``side``. Otherwise (thumbnails) a JPEG is decoded at the
    reduced DCT scale that lands between a half and all of ``side`` (asking the decoder for
    half the target lets it pick the largest scale that still fits), so a typical phone photo
    needs no resampling at all: the playground should not be the bench's bottleneck.
    """
    with Image.open(io.BytesIO(data)) as source:
        scale = side / max(source.size) / (1 if exact else 2)
        source.draft("RGB", (math.ceil(source.width * scale), math.ceil(source.height * scale)))
        image = source.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.BILINEAR)  # only when the decoder could not scale
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=87)
    return buffer.getvalue(), image.width, image.height


async def photo_content(state: PlaygroundState, data: bytes) -> JSON:
    """The ``photo`` field of a message: one PhotoSize per stored size."""
    sizes = await asyncio.to_thread(photo_sizes, data)
    photo = []
    for jpeg, width, height in sizes:
        stored = state.add_file(jpeg, folder="photos", suffix=".jpg", mime_type="image/jpeg")
        photo.append({"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                      "width": width, "height": height, "file_size": len(jpeg)})
    return {"photo": photo}


def document_content(state: PlaygroundState, data: bytes, filename: str, mime_type: str) -> JSON:
    """The ``document`` field of a message: the file as sent, untouched."""
    suffix = "." + filename.rsplit(".", 1)[-1] if "." in filename else ""
    stored = state.add_file(data, folder="documents", suffix=suffix, mime_type=mime_type)
    return {"document": {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                         "file_name": filename, "mime_type": mime_type, "file_size": len(data)}}


def synthetic_content(state: PlaygroundState, kind: str) -> JSON:
    """A sticker, location, voice or video message (with a file id where Telegram has one)."""
    if kind not in SYNTHETIC_KINDS:
        raise bad_request(f"unknown message kind {kind!r}; use one of {sorted(SYNTHETIC_KINDS)}")
    content = {key: dict(value) for key, value in SYNTHETIC_KINDS[kind].items()}
    body = content[kind]
    if kind != "location":
        stored = state.add_file(b"\0" * 64, folder=kind + "s", suffix=".bin", mime_type="application/octet-stream")
        body.update(file_id=stored.file_id, file_unique_id=stored.file_unique_id)
    return content


async def body_parts(request: web.Request) -> AsyncIterator[BodyPartReader]:
    """The parts of a multipart request body, in order. aiohttp types a part as maybe None (it never yields one) or a
    nested multipart reader, which has no body to read: a request with one fails (500), as a malformed request."""
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader):
            raise TypeError(f"nested multipart bodies are not supported, got {type(part).__name__}")
        yield part


def text_content(text: str) -> JSON:
    """A text message, with the bot_command entity clients add for a leading /command."""
    content: JSON = {"text": text}
    if text.startswith("/"):
        length = len(text.split()[0])
        content["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return content


async def read_contents(request: web.Request, state: PlaygroundState) -> tuple[list[JSON], JSON]:
    """The message contents a request carries (several photos make an album) and its extra fields."""
    if request.content_type == "application/json":
        body = await request.json()
        if body.get("kind"):
            return [synthetic_content(state, body["kind"])], body
        if isinstance(body.get("text"), str) and body["text"]:
            return [text_content(body["text"])], body
        raise bad_request("send text, a kind, or a multipart photo/document")
    contents: list[JSON] = []
    fields: JSON = {}
    async for part in body_parts(request):
        data = await part.read()
        if part.name == "photo":
            contents.append(await photo_content(state, bytes(data)))
        elif part.name == "document":
            mime = part.headers.get("Content-Type", "application/octet-stream")
            contents.append(document_content(state, bytes(data), part.filename or "file", mime))
        else:
            fields[part.name or ""] = data.decode()
    if not contents and fields.get("text"):
        contents.append(text_content(fields["text"]))
    if not contents:
        raise bad_request("nothing to send")
    return contents, fields


@routes.post("/playground/api/chats/{user_id}/messages")
async def send_as_user(request: web.Request) -> web.Response:
    """Send a message (text, photo(s), a document or another kind) from the user to the bot."""
    state = state_of(request)
    contents, fields = await read_contents(request, state)
    user = user_of(request, fields.get("first_name"))
    group_id = state.next_id("G") if len(contents) > 1 else None
    sent = []
    for content in contents:
        message: JSON = {"message_id": state.next_message_id(), "from": user, "chat": state.chats[user["id"]],
                         "date": int(time.time()), **content}
        if group_id:
            message["media_group_id"] = group_id
        if fields.get("caption") and "text" not in content:
            message["caption"] = fields["caption"]
        state.store_message(message)
        await state.push_event(user["id"], "message", message=message)
        await state.push_update("message", message)
        sent.append(message)
    return ok(sent)


@routes.post("/playground/api/chats/{user_id}/callback")
async def press_button(request: web.Request) -> web.Response:
    """Press an inline button: the bot gets a callback query with the given data."""
    state = state_of(request)
    user = user_of(request)
    body = await request.json()
    message = state.messages.get((user["id"], int(body.get("message_id", 0))))
    if message is None:
        raise bad_request("message not found")
    query_id = state.next_id("Q")
    state.callbacks[query_id] = {"chat_id": user["id"], "answered": False}
    query = {"id": query_id, "from": user, "message": message, "chat_instance": str(user["id"]),
             "data": str(body.get("data", ""))}
    await state.push_update("callback_query", query)
    return ok({"callback_query_id": query_id})


@routes.get("/playground/api/chats/{user_id}/events")
async def chat_events(request: web.Request) -> web.Response:
    """Events in the chat after ``after``; waits up to ``timeout`` seconds for the first one."""
    state = state_of(request)
    user = user_of(request)
    after = int(request.query.get("after", 0))
    timeout = min(MAX_EVENT_WAIT, float(request.query.get("timeout", 0)))

    def pending() -> list[JSON]:
        return [e for e in state.events[after:] if e["chat_id"] == user["id"]]

    async with state.changed:
        try:
            await asyncio.wait_for(state.changed.wait_for(lambda: bool(pending())), timeout)
        except TimeoutError:
            pass
        return ok({"events": pending(), "last": len(state.events)})


@routes.get("/playground/api/chats/{user_id}/messages")
async def chat_messages(request: web.Request) -> web.Response:
    """Every message of the chat as it looks now (edits applied), oldest first."""
    state = state_of(request)
    user = user_of(request)
    messages = [m for (chat_id, _), m in sorted(state.messages.items()) if chat_id == user["id"]]
    return ok(messages)


@routes.get("/playground/api/files/{file_id}")
async def file_for_page(request: web.Request) -> web.Response:
    """A stored file, so the page can show photos."""
    stored = state_of(request).files.get(request.match_info["file_id"])
    if stored is None:
        raise web.HTTPNotFound()
    return web.Response(body=stored.data, content_type=stored.mime_type)


@routes.post("/playground/api/flood")
async def inject_flood(request: web.Request) -> web.Response:
    """Make the next ``count`` calls of ``method`` fail with 429 and ``retry_after`` (tests, demos).

    The older shorthand of ``/faults`` with ``"kind": "429"``; these come before other faults.
    """
    body = await request.json()
    method = str(body.get("method", "")).lower()
    retry_after = int(body.get("retry_after", 1))
    state_of(request).floods.setdefault(method, []).extend([retry_after] * int(body.get("count", 1)))
    return ok(True)


@routes.post("/playground/api/faults")
async def inject_faults(request: web.Request) -> web.Response:
    """Make the next ``count`` calls of a Bot API ``method``, downloads (``"file"``) or webhook deliveries
    (``"webhook"``) fail (tests, demos).

    JSON ``{"method", "kind": "429"|"500"|"timeout"|"drop", "count": 1, "retry_after": 1,
    "after_accept": false, "hold": 30}``; what each kind does is ``state.Fault``'s docstring. A webhook
    fault fails the delivery without POSTing, or with ``after_accept`` POSTs it and loses the bot's
    answer (Telegram then delivers the same update again: a redelivery).
    A 429 is never answered after the method was performed, so "429" takes no ``after_accept``.
    """
    body = await request.json()
    if not isinstance(body, dict):
        raise bad_request("send a JSON object")
    method = str(body.get("method", "")).lower()
    if method not in METHODS and method not in (DOWNLOAD, WEBHOOK):
        raise bad_request(f"unknown method {method!r}: a Bot API method, {DOWNLOAD!r} (downloads) "
                          f"or {WEBHOOK!r} (webhook deliveries)")
    kind = str(body.get("kind", ""))
    if kind not in FAULT_KINDS:
        raise bad_request(f"unknown fault kind {kind!r}; use one of {list(FAULT_KINDS)}")
    after_accept = body.get("after_accept", False)
    if not isinstance(after_accept, bool):
        raise bad_request("after_accept must be true or false")
    if kind == "429" and after_accept:
        raise bad_request("a 429 is never answered after the method was performed")
    try:
        count, retry_after, hold = (int(body.get("count", 1)), int(body.get("retry_after", 1)),
                                    float(body.get("hold", 30)))
    except (TypeError, ValueError):
        raise bad_request("count, retry_after and hold must be numbers") from None
    if count < 1 or retry_after < 0 or not 0 < hold <= MAX_FAULT_HOLD:
        raise bad_request(f"count must be at least 1, retry_after at least 0 and hold in (0, {MAX_FAULT_HOLD:g}]")
    fault = Fault(kind, retry_after=retry_after, after_accept=after_accept, hold=hold)
    pending = state_of(request).add_faults(method, fault, count)
    return ok({"method": method, "pending": pending})


@routes.get("/playground/api/faults")
async def list_faults(request: web.Request) -> web.Response:
    """Faults still waiting, by method, and every injected failure that happened so far, oldest first."""
    state = state_of(request)
    pending = {method: [asdict(fault) for fault in queue] for method, queue in state.faults.items() if queue}
    for method, queue in state.floods.items():
        if queue:
            pending.setdefault(method, [])[:0] = [asdict(Fault("429", retry_after=n)) for n in queue]
    return ok({"pending": pending, "served": state.faults_served})


@routes.get("/playground/api/info")
async def info(request: web.Request) -> web.Response:
    """The bot's user and its registered commands (the page's header)."""
    state = state_of(request)
    return ok({"bot": state.bot_user, "commands": state.commands})


@web.middleware
async def bot_api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn ``BotApiError`` into Telegram's error body on every route."""
    try:
        return await handler(request)
    except BotApiError as exc:
        return web.json_response(exc.body(), status=exc.code)
