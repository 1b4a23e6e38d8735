"""Restart the bot mid-conversation: nothing given before is lost, and the next update is handled once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot import render
from bot.playground import PlaygroundServer
from bot.store.models import Feedback, Prediction

from bot_harness import (
    BLUE,
    RED,
    TestUser,
    bot_settings,
    colour_model,
    jpeg_bytes,
    running_bot,
    updates_taken,
    wait_until,
)


def feedback_rows(sessions: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with sessions() as session:
        return [(f.verdict, f.label) for f in session.scalars(select(Feedback).order_by(Feedback.id))]


async def test_restart_keeps_feedback_and_handles_pending_updates_once(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path, database_url: str) -> None:
    settings = bot_settings(tmp_path, database_url)
    user = TestUser(playground_http, user_id=1001)
    async with running_bot(playground, settings, colour_model()):
        await user.send_photo(jpeg_bytes(RED, noise=11))
        await user.confirm(await user.reply())
        await user.send_photo(jpeg_bytes(BLUE, noise=12))
        unsure = await user.reply()

    # While the bot is down the user keeps talking: a photo and a press on the older answer.
    await user.send_photo(jpeg_bytes(RED, noise=13))
    await user.press(unsure, "Wrong")

    async with running_bot(playground, settings, colour_model()) as second:
        late = await user.reply()
        assert "Air Jordan 11" in late["text"]
        listing = await user.edit()
        assert listing["message_id"] == unsure["message_id"] and listing["text"] == render.CORRECTION_TEXT
        # Each pending update was answered exactly once: the bot has confirmed them all (none comes
        # again), and the next thing it says is its answer to a later message.
        await updates_taken(playground)
        await user.send_text("hello")
        assert (await user.reply())["text"] == render.OTHER_TEXT
        assert [e for e in user.backlog if e["type"] in ("message", "edit")] == []

        # Feedback given before the restart is there, and the conversation goes on.
        assert feedback_rows(second.sessions) == [("correct", "air_jordan_11")]
        await user.press(listing, "Air Jordan 2")
        await user.edit()
        assert feedback_rows(second.sessions) == [("correct", "air_jordan_11"), ("wrong", "air_jordan_2")]
        with second.sessions() as session:
            assert len(session.scalars(select(Prediction)).all()) == 3


async def test_a_photo_update_delivered_again_is_answered_once(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Telegram repeats an update the bot never confirmed (it crashed): one stored answer, sent once."""
    settings = bot_settings(tmp_path, database_url)
    user = TestUser(playground_http, user_id=1003)
    async with running_bot(playground, settings, colour_model()) as bot:
        photo = await user.send_photo(jpeg_bytes(RED, noise=21))
        answer = await user.reply()
        again = playground.state.get_message(photo["chat"]["id"], photo["message_id"])
        with caplog.at_level(logging.INFO, logger="bot.handlers.photos"):
            await playground.state.push_update("message", again)  # answered already: nothing more is sent
            await wait_until(lambda: any("answered before" in r.getMessage() for r in caplog.records),
                             what="the repeated update handled")
        assert await user.quiet(0) == []  # its handler has returned, having sent nothing

        # It crashed after storing the answer but before sending it: the repeat sends the stored answer.
        with bot.sessions.begin() as session:
            session.execute(update(Prediction).values(reply_message_id=None))
        await playground.state.push_update("message", again)
        resent = await user.reply()
        assert resent["text"] == answer["text"] and resent["reply_to_message"]["message_id"] == photo["message_id"]
        expected = [(photo["message_id"], resent["message_id"])]
        for _ in range(50):  # the reply's id is stored just after the reply is sent
            with bot.sessions() as session:
                rows = [(p.message_id, p.reply_message_id) for p in session.scalars(select(Prediction))]
            if rows == expected:
                break
            await asyncio.sleep(0.1)
        assert rows == expected
