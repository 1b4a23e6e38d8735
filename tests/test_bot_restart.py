"""Restart the bot mid-conversation: nothing given before is lost, and the next update is handled once."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot import render
from bot.playground import PlaygroundServer
from bot.store.models import Feedback, Prediction
from bot_harness import BLUE, RED, TestUser, bot_settings, colour_model, jpeg_bytes, running_bot


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
        assert await user.quiet(1.5) == []  # each pending update was answered exactly once

        # Feedback given before the restart is there, and the conversation goes on.
        assert feedback_rows(second.sessions) == [("correct", "air_jordan_11")]
        await user.press(listing, "Air Jordan 2")
        await user.edit()
        assert feedback_rows(second.sessions) == [("correct", "air_jordan_11"), ("wrong", "air_jordan_2")]
        with second.sessions() as session:
            assert len(session.scalars(select(Prediction)).all()) == 3
