"""Faults of the Bot API while the bot downloads a photo and while it answers: retried where that is safe, never
answered twice.

The playground fails the next calls of a method, or downloads (``"file"``), the way a test asks
(``POST /playground/api/faults``): a 429 with ``retry_after``, a 500, a timeout (the request is
held longer than the bot's read timeout, here ``READ_TIMEOUT``), a dropped connection;
``after_accept`` performs the call first (the message IS sent), the case a client cannot tell
from the others. The policy under test is ``bot/telegram_retry.py``: reads and repeatable calls
(edits, callback answers) are retried after any of these; a send only when it surely did not
happen, otherwise it is at most once and the bot logs that it does not know.

A test knows the bot is done with an update from a handler in the last group (``Handled``), not
from a pause, and then counts what is in the chat and in the database. The download, answer and
button cases run on both Bot API transports; the database is SQLite (the faults are all on the
Telegram side).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from sqlalchemy import select
from telegram import Update
from telegram.error import NetworkError, TimedOut
from telegram.ext import TypeHandler

from bot import render
from bot.playground import PlaygroundServer
from bot.store.models import Feedback, Prediction
from bot.telegram_retry import CallKind, DeliveryUncertain, RetryPolicy, call_kind, call_name, may_have_arrived

from bot_harness import RED, TOKEN, WAIT, BotUnderTest, TestUser, bot_settings, colour_model, jpeg_bytes, running_bot

READ_TIMEOUT = 1.5  # the bot's read timeout here: a held request costs this long
RETRIES = 3
LAST_GROUP = 1000
TRANSPORTS = ["aiohttp", "httpx"]
UNCERTAIN = "may or may not have been performed"  # what the retry layer logs for a send it will not repeat

Starter = Callable[..., AbstractAsyncContextManager[BotUnderTest]]


class Handled:
    """Updates the bot has finished with, by the id of their message: a handler in the last group sees each update
    after the bot's own handlers (and its error handler) are done with it."""

    def __init__(self, bot: BotUnderTest) -> None:
        self._seen: collections.Counter[int] = collections.Counter()
        self._changed = asyncio.Condition()
        bot.runtime.application.add_handler(TypeHandler(Update, self._record), group=LAST_GROUP)

    async def _record(self, update: Update, context: object) -> None:
        async with self._changed:
            if update.effective_message is not None:
                self._seen[update.effective_message.message_id] += 1
            self._changed.notify_all()

    async def finished(self, message: dict, times: int = 1, timeout: float = WAIT) -> None:
        """Wait until ``times`` updates about ``message`` (the photo, or the answer a button is under) are handled."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self._seen[message["message_id"]] >= times), timeout)


@pytest.fixture
def start(playground: PlaygroundServer, tmp_path: Path) -> Starter:
    """``async with start(transport, **setting_overrides) as bot``: the colour model, short timeouts, fast retries."""

    def starter(transport: str, **overrides: Any) -> AbstractAsyncContextManager[BotUnderTest]:
        values: dict[str, Any] = {"telegram_http": transport, "telegram_read_timeout_s": READ_TIMEOUT,
                                  "telegram_retries": RETRIES, "telegram_retry_backoff_s": 0.05, **overrides}
        settings = bot_settings(tmp_path, f"sqlite:///{tmp_path / 'faults.db'}", **values)
        return running_bot(playground, settings, colour_model())

    return starter


@pytest.fixture
def user(playground_http: httpx.AsyncClient) -> TestUser:
    return TestUser(playground_http, user_id=4004)


async def inject(client: httpx.AsyncClient, method: str, kind: str, **options: Any) -> None:
    """The next ``count`` calls of ``method`` (default 1) fail as ``kind``."""
    response = await client.post("/playground/api/faults", json={"method": method, "kind": kind, **options})
    assert response.json()["ok"], response.json()


async def faults(client: httpx.AsyncClient) -> dict:
    """``{"pending": {method: [...]}, "served": [...]}`` from the playground."""
    return (await client.get("/playground/api/faults")).json()["result"]


async def served(client: httpx.AsyncClient) -> list[tuple[str, str, bool]]:
    """Every injected failure that happened: (method, kind, after_accept)."""
    return [(s["method"], s["kind"], s["after_accept"]) for s in (await faults(client))["served"]]


async def bot_messages(user: TestUser) -> list[dict]:
    """The bot's messages in the user's chat as the chat shows them now (the user API, as the web page sees it)."""
    response = await user.client.get(f"/playground/api/chats/{user.user_id}/messages")
    return [m for m in response.json()["result"] if m["from"]["is_bot"]]


async def replies_to(user: TestUser, photo: dict) -> list[dict]:
    """The bot's messages that answer ``photo``."""
    return [m for m in await bot_messages(user) if (m.get("reply_to_message") or {}).get("message_id")
            == photo["message_id"]]


async def chat_events(user: TestUser, after: int = 0) -> tuple[list[dict], int]:
    """The bot's events in the chat after sequence number ``after`` (no waiting), and the last sequence number."""
    response = await user.client.get(f"/playground/api/chats/{user.user_id}/events",
                                     params={"after": after, "timeout": 0})
    result = response.json()["result"]
    return [e for e in result["events"] if e["type"] != "message" or e["message"]["from"]["is_bot"]], result["last"]


def predictions_of(bot: BotUnderTest, photo: dict) -> list[Prediction]:
    with bot.sessions() as session:
        return list(session.scalars(select(Prediction).where(Prediction.chat_id == photo["chat"]["id"],
                                                             Prediction.message_id == photo["message_id"])))


def uncertain_sends(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bot.telegram_retry" and UNCERTAIN in r.getMessage()]


# --- while the bot downloads the photo: getFile and the download are reads, always retried ---------------------

@pytest.mark.parametrize("kind", ["429", "500", "timeout", "drop"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_download_faults_are_retried_and_the_photo_answered_once(
        kind: str, transport: str, start: Starter, user: TestUser, caplog: pytest.LogCaptureFixture) -> None:
    count = 2 if kind in ("500", "drop") else 1  # cheap kinds twice: more than one retry
    loop = asyncio.get_running_loop()
    async with start(transport) as bot:
        handled = Handled(bot)
        for n, method in enumerate(("getFile", "file")):
            await inject(user.client, method, kind, count=count, retry_after=1)
            began = loop.time()
            photo = await user.send_photo(jpeg_bytes(RED, noise=100 + n))
            await handled.finished(photo)
            answers = await replies_to(user, photo)
            assert len(answers) == 1 and "Air Jordan 11" in answers[0]["text"]
            assert [p.reply_message_id for p in predictions_of(bot, photo)] == [answers[0]["message_id"]]
            if kind == "429":
                assert loop.time() - began >= 1.0  # retried only after retry_after
        assert (await faults(user.client))["pending"] == {}
        happened = await served(user.client)
        for method in ("getfile", "file"):  # aiohttp may repeat a GET on a dropped kept-alive connection by itself
            assert happened.count((method, kind, False)) >= count
        assert len(await bot_messages(user)) == 2  # nothing else was said: no apology, no second answer
    assert uncertain_sends(caplog) == []


# --- while the bot answers: a send is retried only when it surely did not happen --------------------------------

REPLY_CASES = [
    # kind, after_accept, what the user gets
    ("429", False, "answered"),  # Telegram refused it: sent again after retry_after
    ("500", False, "answered"),  # the Bot API's own error: it did not send it
    ("500", True, "answered once, not repeated"),  # a gateway's 502 after the Bot API sent it
    ("timeout", True, "answered once, not repeated"),
    ("drop", True, "answered once, not repeated"),
    ("timeout", False, "lost, not repeated"),  # the price of at most once: the bot cannot tell this from the above
    ("drop", False, "lost, not repeated"),
]


@pytest.mark.parametrize(("kind", "after_accept", "outcome"), REPLY_CASES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reply_faults_never_give_a_double_answer(
        kind: str, after_accept: bool, outcome: str, transport: str, start: Starter, user: TestUser,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    loop = asyncio.get_running_loop()
    async with start(transport) as bot:
        handled = Handled(bot)
        await inject(user.client, "sendMessage", kind, after_accept=after_accept, retry_after=1)
        began = loop.time()
        photo = await user.send_photo(jpeg_bytes(RED, noise=200))
        await handled.finished(photo)

        answers = await replies_to(user, photo)
        [prediction] = predictions_of(bot, photo)  # stored once, whatever happened to the answer
        assert await served(user.client) == [("sendmessage", kind, after_accept)]
        warnings = uncertain_sends(caplog)
        if outcome == "answered":
            assert len(answers) == 1 and "Air Jordan 11" in answers[0]["text"]
            assert prediction.reply_message_id == answers[0]["message_id"]
            assert warnings == []
            if kind == "429":
                assert loop.time() - began >= 1.0
        else:
            assert len(answers) == (1 if after_accept else 0)
            assert prediction.reply_message_id is None  # the bot does not know the answer's id
            assert len(warnings) == 1 and "sendmessage" in warnings[0] and str(user.user_id) in warnings[0]
        assert len(await bot_messages(user)) == len(answers)  # and no apology in its place

        if outcome.startswith("lost"):  # what the user does about it: send the photo again
            again = await user.send_photo(jpeg_bytes(RED, noise=201))
            await handled.finished(again)
            assert len(await replies_to(user, again)) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ambiguous_edit_and_callback_answer_are_retried_and_shown_once(
        transport: str, start: Starter, user: TestUser, caplog: pytest.LogCaptureFixture) -> None:
    """Edits and callback answers do nothing new when repeated: retried after any fault, and when the earlier
    attempt did land ("message is not modified", "query is too old") that counts as done."""
    async with start(transport) as bot:
        handled = Handled(bot)
        photo = await user.send_photo(jpeg_bytes(RED, noise=300))
        await handled.finished(photo)
        [answer] = await replies_to(user, photo)
        _, mark = await chat_events(user)

        # ✅ Correct: both calls performed, both answers lost.
        await inject(user.client, "answerCallbackQuery", "timeout", after_accept=True)
        await inject(user.client, "editMessageText", "drop", after_accept=True)
        await user.press(answer, "Correct")
        await handled.finished(answer)
        events, mark = await chat_events(user, mark)
        assert [e["type"] for e in events] == ["callback_answer", "edit"]
        assert events[0]["text"] == "Thanks!" and "Air Jordan 11" in events[1]["message"]["text"]
        with bot.sessions() as session:
            assert [(f.verdict, f.label) for f in session.scalars(select(Feedback))] == [("correct", "air_jordan_11")]

        # ✏️ Change answer: both calls fail before they are performed, and are simply done again.
        await inject(user.client, "answerCallbackQuery", "500")
        await inject(user.client, "editMessageText", "timeout")
        edited = (await bot_messages(user))[0]
        await user.press(edited, "Change answer")
        await handled.finished(answer, times=2)
        events, _ = await chat_events(user, mark)
        assert [e["type"] for e in events] == ["callback_answer", "edit"]
        assert events[1]["message"]["text"] == render.CORRECTION_TEXT
        assert [(m, k) for m, k, _ in await served(user.client)] == [
            ("answercallbackquery", "timeout"), ("editmessagetext", "drop"),
            ("answercallbackquery", "500"), ("editmessagetext", "timeout")]
    assert uncertain_sends(caplog) == []


@pytest.mark.filterwarnings(  # PTB reads RetryAfter.retry_after itself and warns of its coming type
    r"ignore:.*attribute `\w+` will be of type `datetime.timedelta`:telegram.warnings.PTBDeprecationWarning")
async def test_retries_are_bounded(start: Starter, user: TestUser) -> None:
    """A call that keeps failing is given up after ``1 + retries`` attempts, and a flood wait longer than
    ``telegram_max_retry_after_s`` is not waited for: the user gets one apology, not an answer nor silence."""
    loop = asyncio.get_running_loop()
    async with start("aiohttp", telegram_max_retry_after_s=5) as bot:
        handled = Handled(bot)
        await inject(user.client, "sendMessage", "500", count=1 + RETRIES)  # the answer, every time
        photo = await user.send_photo(jpeg_bytes(RED, noise=400))
        await handled.finished(photo)
        assert [m["text"] for m in await bot_messages(user)] == [render.ERROR_TEXT]  # the general error handler's
        assert [p.reply_message_id for p in predictions_of(bot, photo)] == [None]

        await inject(user.client, "getFile", "429", retry_after=60)
        began = loop.time()
        photo = await user.send_photo(jpeg_bytes(RED, noise=401))
        await handled.finished(photo)
        assert loop.time() - began < 5
        assert [m["text"] for m in await bot_messages(user)] == [render.ERROR_TEXT] * 2
        assert predictions_of(bot, photo) == []  # never downloaded, so never identified
        assert (await faults(user.client))["pending"] == {}


async def test_an_uncertain_command_reply_gets_no_apology(start: Starter, user: TestUser,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Outside the photo path too: the error handler's apology would be a second message when the first arrived."""
    async with start("httpx") as bot:
        await inject(user.client, "sendMessage", "timeout", after_accept=True)
        await user.send_text("/start")
        assert "sneaker" in (await user.reply())["text"]  # performed at once; its answer is what is lost
        processor = bot.runtime.application.update_processor
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while processor.current_concurrent_updates:  # the /start update is still in the bot's hands
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        assert len(uncertain_sends(caplog)) == 1
        assert [m["text"] for m in await bot_messages(user)] == [render.start_text(bot.settings.retention_days)]


# --- the playground's faults themselves, over raw HTTP --------------------------------------------------------

@pytest.fixture
async def http(playground: PlaygroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=playground.url, timeout=httpx.Timeout(10, read=0.5)) as client:
        yield client


async def test_playground_faults_on_the_wire(playground: PlaygroundServer, http: httpx.AsyncClient) -> None:
    user = TestUser(http, user_id=9)
    photo = await user.send_photo(jpeg_bytes(RED, noise=500))
    file_id = photo["photo"][-1]["file_id"]

    async def send(text: str) -> httpx.Response:
        return await http.post(f"/bot{TOKEN}/sendMessage", data={"chat_id": "9", "text": text})

    for bad in ({"method": "sendMessage", "kind": "slow"}, {"method": "noSuchMethod", "kind": "500"},
                {"method": "sendMessage", "kind": "429", "after_accept": True},
                {"method": "sendMessage", "kind": "500", "count": 0}):
        response = await http.post("/playground/api/faults", json=bad)
        assert response.status_code == 400, bad
    await inject(http, "sendMessage", "429", retry_after=7)
    await inject(http, "sendMessage", "500", count=2)
    await inject(http, "sendMessage", "500", after_accept=True)
    await inject(http, "sendMessage", "timeout", hold=5)
    await inject(http, "sendMessage", "drop", after_accept=True)
    pending = (await faults(http))["pending"]["sendmessage"]
    assert [(f["kind"], f["after_accept"]) for f in pending] == [
        ("429", False), ("500", False), ("500", False), ("500", True), ("timeout", False), ("drop", True)]

    response = await send("a")
    assert (response.status_code, response.json()) == (429, {
        "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7}})
    for _ in range(2):
        response = await send("b")
        assert (response.status_code, response.json()["description"]) == (500, "Internal Server Error")
    response = await send("c")  # sent, then a gateway's page instead of the Bot API's answer
    assert response.status_code == 502 and response.headers["content-type"].startswith("text/html")
    with pytest.raises(httpx.ReadTimeout):
        await send("d")  # held, never sent
    with pytest.raises(httpx.RemoteProtocolError):
        await send("e")  # sent, then the connection closed
    assert (await send("f")).json()["ok"]
    assert [m["text"] for m in await bot_messages(user)] == ["c", "e", "f"]

    await inject(http, "getFile", "drop")
    await inject(http, "file", "500")
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(f"/bot{TOKEN}/getFile", data={"file_id": file_id})
    path = (await http.post(f"/bot{TOKEN}/getFile", data={"file_id": file_id})).json()["result"]["file_path"]
    assert (await http.get(f"/file/bot{TOKEN}/{path}")).status_code == 500
    download = await http.get(f"/file/bot{TOKEN}/{path}")
    assert download.status_code == 200 and download.content == playground.state.files[file_id].data
    assert [(m, k) for m, k, _ in await served(http)] == [
        ("sendmessage", "429"), ("sendmessage", "500"), ("sendmessage", "500"), ("sendmessage", "500"),
        ("sendmessage", "timeout"), ("sendmessage", "drop"), ("getfile", "drop"), ("file", "500")]
    assert (await faults(http))["pending"] == {}


# --- the classification the policy rests on ----------------------------------------------------------------

def test_calls_are_classified_by_what_a_repeat_would_do() -> None:
    assert call_name("http://h:1/bot1:x/sendMessage") == "sendmessage"
    assert call_name("http://h:1/file/bot1:x/photos/file_F1.jpg") == "file"
    assert [call_kind(n) for n in ("getupdates", "getfile", "file", "editmessagetext", "answercallbackquery",
                                   "sendchataction", "sendmessage", "sendphoto", "copymessage")] == [
        CallKind.PASS, CallKind.REPEATABLE, CallKind.REPEATABLE, CallKind.REPEATABLE, CallKind.REPEATABLE,
        CallKind.REPEATABLE, CallKind.ONCE, CallKind.ONCE, CallKind.ONCE]

    def failed(cause: BaseException, error: type[NetworkError] = NetworkError) -> NetworkError:
        try:
            raise error("failed") from cause
        except NetworkError as exc:
            return exc

    refused = aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey(
        "h", 1, False, True, None, None, None), OSError(111, "refused"))
    assert not may_have_arrived(failed(refused))
    assert not may_have_arrived(failed(httpx.ConnectTimeout("slow"), TimedOut))
    assert not may_have_arrived(failed(httpx.PoolTimeout("busy"), TimedOut))
    assert may_have_arrived(failed(aiohttp.ServerDisconnectedError()))
    assert may_have_arrived(failed(httpx.ReadTimeout("late"), TimedOut))
    assert may_have_arrived(failed(httpx.RemoteProtocolError("closed")))
    assert isinstance(DeliveryUncertain("sendmessage", 1, "no answer"), NetworkError)
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0)
    assert [0.5 <= policy.pause(1) <= 1, 1 <= policy.pause(2) <= 2, 2 <= policy.pause(5) <= 4] == [True] * 3
