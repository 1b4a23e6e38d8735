"""The playground speaks the Bot API over HTTP: envelopes, errors, long polling, files, floods.

Driven by raw HTTP here (the bot tests drive it through python-telegram-bot).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from telegram import Bot
from telegram.error import BadRequest, RetryAfter

from bot.playground import PlaygroundServer

from bot_harness import (
    RED,
    TOKEN,
    TestUser,
    encoded,
    jpeg_bytes,
    retry_after_seconds,
    running_playground,
    user_api,
    wait_until,
)


@pytest.fixture
async def server() -> AsyncIterator[PlaygroundServer]:
    async with running_playground(max_download_bytes=50_000) as playground:
        yield playground


@pytest.fixture
async def http(server: PlaygroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with user_api(server) as client:
        yield client


async def call(http: httpx.AsyncClient, method: str, token: str = TOKEN, **params: object) -> tuple[int, dict]:
    """A Bot API call as a form post with JSON-encoded complex values, as python-telegram-bot sends it."""
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    response = await http.post(f"/bot{token}/{method}", data=form)
    return response.status_code, response.json()


async def test_get_me_and_errors(http: httpx.AsyncClient) -> None:
    status, body = await call(http, "getMe")
    assert status == 200 and body["ok"] and body["result"]["is_bot"] and body["result"]["id"] == 123456
    assert await call(http, "getMe", token="999:wrong") == (401, {"ok": False, "error_code": 401,
                                                                  "description": "Unauthorized"})
    assert (await call(http, "noSuchMethod"))[0] == 404
    status, body = await call(http, "sendMessage", chat_id=42, text="hi")
    assert (status, body["description"]) == (400, "Bad Request: chat not found")


async def poll_waiting(server: PlaygroundServer, http: httpx.AsyncClient, **params: object) -> asyncio.Task:
    """A getUpdates call started in the background, returned once the server holds it waiting.

    Each call takes the next ``poll_generation`` (under the state's lock) before it waits, so the
    number moving on means it is waiting: anything queued after that wakes this call.
    """
    before = server.state.poll_generation
    task = asyncio.create_task(call(http, "getUpdates", **params))
    await wait_until(lambda: server.state.poll_generation > before or task.done(), what="the poll waiting")
    assert not task.done(), task.result()
    return task


async def test_get_updates_offsets_and_long_poll(server: PlaygroundServer, http: httpx.AsyncClient) -> None:
    user = TestUser(http, user_id=5)
    await user.send_text("one")
    await user.send_text("two")
    _, body = await call(http, "getUpdates")
    updates = body["result"]
    assert [u["message"]["text"] for u in updates] == ["one", "two"]
    assert (await call(http, "getUpdates"))[1]["result"] == updates  # not confirmed yet: sent again
    _, body = await call(http, "getUpdates", offset=updates[-1]["update_id"] + 1, timeout=0)
    assert body["result"] == []  # confirmed by the offset

    waiting = await poll_waiting(server, http, offset=updates[-1]["update_id"] + 1, timeout=20)
    await user.send_text("three")
    _, body = await waiting
    assert [u["message"]["text"] for u in body["result"]] == ["three"]


async def test_a_newer_poll_ends_the_waiting_one_with_409(server: PlaygroundServer, http: httpx.AsyncClient) -> None:
    first = await poll_waiting(server, http, timeout=20)
    second = asyncio.create_task(call(http, "getUpdates", timeout=1))
    status, body = await first
    assert status == 409 and body["description"].startswith("Conflict")
    assert (await second)[0] == 200


KEYBOARD = {"inline_keyboard": [[{"text": "A", "callback_data": "a:1"}]]}


async def user_and_keyboard_message(http: httpx.AsyncClient, user_id: int) -> tuple[TestUser, dict, dict]:
    """A user who sent /start, and the bot's reply to it with one inline button ("a:1")."""
    user = TestUser(http, user_id=user_id)
    start = await user.send_text("/start")
    status, body = await call(http, "sendMessage", chat_id=user_id, text="pick", reply_markup=KEYBOARD,
                              reply_parameters={"message_id": start["message_id"]})
    assert status == 200, body
    return user, start, body["result"]


async def test_messages_carry_commands_replies_and_keyboards(http: httpx.AsyncClient) -> None:
    user, start, sent = await user_and_keyboard_message(http, user_id=6)
    assert start["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert sent["reply_to_message"]["message_id"] == start["message_id"] and sent["reply_markup"] == KEYBOARD
    assert (await user.reply())["message_id"] == sent["message_id"]


async def test_bad_messages_are_refused_with_telegrams_errors(http: httpx.AsyncClient) -> None:
    await TestUser(http, user_id=6).send_text("hi")
    too_long = {"inline_keyboard": [[{"text": "B", "callback_data": "x" * 65}]]}
    status, body = await call(http, "sendMessage", chat_id=6, text="bad", reply_markup=too_long)
    assert (status, body["description"]) == (400, "Bad Request: BUTTON_DATA_INVALID")
    empty = await call(http, "sendMessage", chat_id=6, text="")
    assert empty[1]["description"] == "Bad Request: message text is empty"


async def test_edits_change_the_bots_own_messages_only(http: httpx.AsyncClient) -> None:
    user, start, sent = await user_and_keyboard_message(http, user_id=6)
    same = await call(http, "editMessageText", chat_id=6, message_id=sent["message_id"], text="pick",
                      reply_markup=KEYBOARD)
    assert same[0] == 400 and "message is not modified" in same[1]["description"]
    _, body = await call(http, "editMessageReplyMarkup", chat_id=6, message_id=sent["message_id"])
    assert "reply_markup" not in body["result"] and body["result"]["edit_date"]
    assert (await user.edit())["text"] == "pick"
    status, body = await call(http, "editMessageText", chat_id=6, message_id=start["message_id"], text="x")
    assert (status, body["description"]) == (400, "Bad Request: message can't be edited")


async def test_a_button_press_is_an_update_answered_once(http: httpx.AsyncClient) -> None:
    user, _, sent = await user_and_keyboard_message(http, user_id=6)
    query_id = await user.press_data(sent["message_id"], "a:1")
    _, body = await call(http, "getUpdates")
    assert body["result"][-1]["callback_query"]["data"] == "a:1"
    assert (await call(http, "answerCallbackQuery", callback_query_id=query_id, text="ok", show_alert=True))[0] == 200
    assert (await user.alert())["show_alert"] is True
    assert (await call(http, "answerCallbackQuery", callback_query_id=query_id))[0] == 400  # only once


async def test_chat_actions_show_in_the_chat(http: httpx.AsyncClient) -> None:
    user = TestUser(http, user_id=6)
    await user.send_text("hi")
    assert (await call(http, "sendChatAction", chat_id=6, action="typing"))[1]["result"] is True
    assert (await user.next_event("chat_action"))["action"] == "typing"


async def test_photos_files_and_the_download_limit(server: PlaygroundServer, http: httpx.AsyncClient) -> None:
    user = TestUser(http, user_id=7)
    message = await user.send_photo(jpeg_bytes(RED, (2000, 1500), noise=3))
    sizes = message["photo"]
    thumb = (sizes[0]["width"], sizes[0]["height"])
    assert 160 <= thumb[0] <= 320 and abs(thumb[0] / thumb[1] - 4 / 3) < 0.02  # decoded at a reduced scale
    assert (sizes[1]["width"], sizes[1]["height"]) == (1280, 960)  # the largest size is Telegram's exactly
    _, body = await call(http, "getFile", file_id=sizes[0]["file_id"])
    path = body["result"]["file_path"]
    download = await http.get(f"/file/bot{TOKEN}/{path}")
    assert Image.open(io.BytesIO(download.content)).size == thumb
    assert (await http.get(f"/file/bot999:wrong/{path}")).status_code == 401
    assert (await http.get(f"/file/bot{TOKEN}/photos/nothing.jpg")).status_code == 404
    document = await user.send_document(b"x" * 60_000, "big.bin", "application/octet-stream")
    status, body = await call(http, "getFile", file_id=document["document"]["file_id"])
    assert (status, body["description"]) == (400, "Bad Request: file is too big")
    heic = (await user.send_photos([encoded(RED, "HEIF", (640, 480))]))[0]["photo"]
    _, body = await call(http, "getFile", file_id=heic[-1]["file_id"])
    converted = Image.open(io.BytesIO((await http.get(f"/file/bot{TOKEN}/{body['result']['file_path']}")).content))
    assert (converted.format, converted.size) == ("JPEG", (640, 480))
    bad = [("photo", ("x.jpg", b"nope", "image/jpeg"))]
    response = await http.post("/playground/api/chats/7/messages", files=bad)
    assert response.status_code == 400 and response.json()["description"] == "Bad Request: IMAGE_PROCESS_FAILED"


async def test_flood_gives_429_with_retry_after_that_ptb_understands(server: PlaygroundServer,
                                                                     http: httpx.AsyncClient,
                                                                     ptb_time_periods: str) -> None:
    await TestUser(http, user_id=8).send_text("hi")
    await http.post("/playground/api/flood", json={"method": "sendMessage", "retry_after": 3, "count": 1})
    bot = Bot(TOKEN, base_url=f"{server.url}/bot", base_file_url=f"{server.url}/file/bot")
    async with bot:
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(8, "hello")
        assert retry_after_seconds(caught.value) == 3
        assert (await bot.send_message(8, "hello")).text == "hello"  # one injected 429 only
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(999, "nobody")
        assert (await bot.get_me()).username == "sneakerbot_playground_bot"
