"""Limits through the real HTTP path: rate limit, Telegram's 429, download sizes, retention."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from bot import render
from bot.playground import PlaygroundServer
from bot.services.models import ServedModel
from bot.store.models import Feedback, Prediction
from bot.store.models import Image as ImageRow

from bot_harness import (
    RED,
    BotUnderTest,
    ColourIdentifier,
    ColourPrediction,
    TestUser,
    bot_settings,
    colour_model,
    jpeg_bytes,
    png_bytes,
    running_bot,
)

Starter = Callable[..., AbstractAsyncContextManager[BotUnderTest]]


@pytest.fixture
def user(playground_http: httpx.AsyncClient) -> TestUser:
    return TestUser(playground_http, user_id=3003)


@pytest.fixture
def start(playground: PlaygroundServer, tmp_path: Path, database_url: str) -> Starter:
    """``async with start(**setting_overrides) as bot``: a bot with the colour model for the block."""

    def starter(**overrides: object) -> AbstractAsyncContextManager[BotUnderTest]:
        return running_bot(playground, bot_settings(tmp_path, database_url, **overrides), colour_model())

    return starter


async def test_rate_limit_per_user(start: Starter, user: TestUser) -> None:
    async with start(rate_limit_per_minute=2) as bot:
        for n in range(2):
            await user.send_photo(jpeg_bytes(RED, noise=20 + n))
            assert "Air Jordan 11" in (await user.reply())["text"]
        await user.send_photo(jpeg_bytes(RED, noise=22))
        assert (await user.reply())["text"] == render.rate_limited_text(2)
        other = TestUser(user.client, user_id=3004)  # the limit is per user
        await other.send_photo(jpeg_bytes(RED, noise=23))
        assert "Air Jordan 11" in (await other.reply())["text"]
        with bot.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == 3


async def test_telegram_429_retry_after_is_respected(playground: PlaygroundServer, start: Starter, user: TestUser,
                                                     ptb_time_periods: str) -> None:
    async with start():
        await user.client.post("/playground/api/flood", json={"method": "sendMessage", "retry_after": 1, "count": 1})
        await user.send_text("/start")
        assert "sneaker" in (await user.reply())["text"]  # sent after waiting retry_after
        assert playground.state.floods["sendmessage"] == []  # the 429 really happened
        # And the message went out once: the next thing the bot says is its answer to a later message.
        await user.send_text("/help")
        assert "Albums" in (await user.reply())["text"]


async def test_download_limits(start: Starter, user: TestUser) -> None:
    async with start(max_download_bytes=40_000) as bot:
        # The biggest size that fits is used: here the 320 px one, the 1280 px one is too big.
        photo = jpeg_bytes(RED, (1600, 1200), noise=30)
        sent = await user.send_photo(photo)
        assert [s["file_size"] > 40_000 for s in sent["photo"]] == [False, True]
        assert "Air Jordan 11" in (await user.reply())["text"]
        with bot.sessions() as session:
            pending = session.scalars(select(Prediction)).one().pending_path
        assert Image.open(pending).size == (sent["photo"][0]["width"], sent["photo"][0]["height"])  # the small one

        await user.send_document(png_bytes(RED, (300, 300)) + b"\0" * 50_000, "big.png", "image/png")
        assert (await user.reply())["text"] == render.too_large_text(40_000)
    async with start(max_download_bytes=1_000):
        await user.send_photo(jpeg_bytes(RED, (400, 300), noise=31))
        assert (await user.reply())["text"] == render.too_large_text(1_000)


async def test_retention_deletes_unanswered_photos_and_expires_their_buttons(start: Starter, user: TestUser) -> None:
    async with start(retention_days=7) as bot:
        await user.send_photo(jpeg_bytes(RED, noise=40))
        kept = await user.reply()
        await user.press(kept, "Correct")
        assert (await user.alert())["text"] == "Thanks!"
        await user.edit()
        await user.send_photo(jpeg_bytes(RED, noise=41))
        forgotten = await user.reply()
        with bot.sessions() as session:
            pending = {p.id: Path(p.pending_path) for p in session.scalars(select(Prediction))}
        assert all(path.exists() for path in pending.values())

        later = datetime.now(UTC) + timedelta(days=8)
        assert bot.runtime.services.retention.purge(later) == 2
        assert not any(path.exists() for path in pending.values())
        with bot.sessions() as session:
            assert all(p.pending_path is None for p in session.scalars(select(Prediction)))
            filed = session.scalars(select(ImageRow)).one()
        assert (bot.settings.data_dir / filed.path).exists()  # confirmed photos stay as training data

        await user.press(forgotten, "Correct")
        alert = await user.alert()
        assert (alert["text"], alert["show_alert"]) == (render.ALERTS["expired"], True)
        with bot.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Feedback)) == 1


class GatedIdentifier(ColourIdentifier):
    """The colour double, but each prediction waits until the test opens the gate (a slow model)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict(self, images: Sequence[Image.Image], k: int = 3) -> list[ColourPrediction]:
        assert self.gate.wait(30), "the test never opened the gate"
        return super().predict(images, k)


async def test_slow_inference_does_not_block_other_chats(playground: PlaygroundServer, tmp_path: Path,
                                                         database_url: str, user: TestUser) -> None:
    identifier = GatedIdentifier()
    async with running_bot(playground, bot_settings(tmp_path, database_url), ServedModel(1, identifier)):
        try:
            await user.send_photo(jpeg_bytes(RED, noise=50))
            await user.next_event("chat_action")  # the photo is being worked on
            other = TestUser(user.client, user_id=3005)
            await other.send_text("/start")
            assert "sneaker" in (await other.reply())["text"]  # answered while inference is stuck
            assert await user.quiet(0) == []
            identifier.gate.set()
            assert "Air Jordan 11" in (await user.reply())["text"]
        finally:
            identifier.gate.set()  # a failed test must not leave the bot's worker thread stuck


async def test_set_my_commands_failure_is_not_fatal(playground: PlaygroundServer, start: Starter,
                                                     user: TestUser) -> None:
    await user.client.post("/playground/api/flood", json={"method": "setMyCommands", "retry_after": 0, "count": 10})
    async with start():
        await user.send_text("/start")
        assert "sneaker" in (await user.reply())["text"]
        assert playground.state.commands == []
