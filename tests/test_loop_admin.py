"""Admin commands through the real HTTP path (playground -> python-telegram-bot -> services -> DB).

The model here is the colour test double of ``tests/bot_harness.py``: these tests are
about who may do what and what gets queued for the worker; the loop with a real model
is ``test_loop_e2e.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot import render_admin
from bot.playground import PlaygroundServer
from bot.store.models import AdminRequest, Notification, NotificationKind, SneakerClass, Suggestion

from bot_harness import RED, BotUnderTest, TestUser, bot_settings, button, colour_model, jpeg_bytes, running_bot

ADMIN = 4242
COMMANDS = ["/status", "/retrain", "/scrape air_jordan_1 5", "/addclass air_max_90 Air Max 90", "/classes",
            "/suggestions", "/rollback 1", "/stats"]


@pytest.fixture
async def bot(playground: PlaygroundServer, tmp_path: Path) -> AsyncIterator[BotUnderTest]:
    settings = bot_settings(tmp_path, f"sqlite:///{tmp_path / 'bot.db'}", admin_ids=frozenset({ADMIN}),
                            model_poll_seconds=0.5)
    async with running_bot(playground, settings, colour_model(3)) as running:
        yield running


@pytest.fixture
def user(playground_http: httpx.AsyncClient) -> TestUser:
    """Someone who is not an admin."""
    return TestUser(playground_http, user_id=1001)


@pytest.fixture
def admin(playground_http: httpx.AsyncClient) -> TestUser:
    return TestUser(playground_http, user_id=ADMIN)


def queued_jobs(bot: BotUnderTest) -> list[str]:
    """The jobs that the admins' requests waiting for the worker will run."""
    with bot.sessions() as session:
        return sorted(session.scalars(select(AdminRequest.job_id).where(AdminRequest.taken_at.is_(None))))


async def answer_to(user: TestUser, query_id: str) -> dict:
    """The bot's answer to the press ``query_id``, passing over the answers to the user's earlier presses."""
    while (event := await user.alert())["callback_query_id"] != query_id:
        pass
    return event


async def test_a_non_admin_cannot_run_admin_commands(
    bot: BotUnderTest, user: TestUser, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.handlers.admin"):
        for command in COMMANDS:
            await user.send_text(command)
            assert (await user.reply())["text"] == render_admin.NOT_ALLOWED
    assert sum("not allowed: user 1001" in r.getMessage() for r in caplog.records) == len(COMMANDS)
    assert queued_jobs(bot) == []
    with bot.sessions() as session:
        assert session.get(SneakerClass, "air_max_90") is None


async def test_admin_requests_reach_the_job_store(bot: BotUnderTest, admin: TestUser) -> None:
    await admin.send_text("/retrain")
    assert "queued" in (await admin.reply())["text"]
    await admin.send_text("/scrape air_jordan_1 5")
    assert "air_jordan_1" in (await admin.reply())["text"]
    await admin.send_text("/scrape Bad-Label 5")
    assert "lowercase" in (await admin.reply())["text"]
    await admin.send_text("/scrape air_jordan_1 lots")
    assert (await admin.reply())["text"].startswith("Usage: /scrape")
    await admin.send_text("/addclass air_max_90")
    assert (await admin.reply())["text"] == render_admin.usage("addclass", "<label> <display name>")
    await admin.send_text("/rollback latest")
    assert (await admin.reply())["text"] == render_admin.usage("rollback", "<version>")

    assert queued_jobs(bot) == ["retrain_now", "scrape_now:air_jordan_1"]


async def test_status_and_classes_answer(bot: BotUnderTest, admin: TestUser) -> None:
    await admin.send_text("/status")
    status = (await admin.reply())["text"]
    assert "Model: none installed" in status and "corrections since the last retrain" in status
    await admin.send_text("/classes")
    assert "No classes yet." in (await admin.reply())["text"]


async def test_suggestion_accepted_becomes_a_class_to_scrape(bot: BotUnderTest, user: TestUser,
                                                             admin: TestUser) -> None:
    await user.send_photo(jpeg_bytes(RED, noise=5))
    answer = await user.reply()
    await user.correct(answer, "Not listed")
    await user.send_text("Air Max 90")
    await user.reply()

    await admin.send_text("/suggestions")
    assert (await admin.reply())["text"] == render_admin.suggestions_header(1)
    item = await admin.reply()
    assert "Air Max 90" in item["text"]
    # A user forging the admin's button data in their own chat is refused and changes nothing.
    forged = await user.press_data(answer["message_id"], button(item, "Accept")["callback_data"])
    alert = await answer_to(user, forged)
    assert alert["text"] == render_admin.NOT_ALLOWED and alert["show_alert"] is True
    with bot.sessions() as session:
        assert session.get(SneakerClass, "air_max_90") is None

    await admin.press(item, "Accept")
    decided = await admin.edit()
    assert "air_max_90" in decided["text"]

    with bot.sessions() as session:
        assert session.get(SneakerClass, "air_max_90").display_name == "Air Max 90"
        assert [s.status for s in session.scalars(select(Suggestion))] == ["accepted"]
    assert "scrape_now:air_max_90" in queued_jobs(bot)


async def test_stats_sends_text_and_a_confusion_matrix(bot: BotUnderTest, user: TestUser, admin: TestUser) -> None:
    await user.send_photo(jpeg_bytes(RED, noise=6))
    await user.confirm(await user.reply())
    await user.send_photo(jpeg_bytes(RED, noise=7))
    await user.correct(await user.reply(), "Air Jordan 2")

    await admin.send_text("/stats")
    summary = (await admin.reply())["text"]
    assert "2 answers, accuracy 50.0%" in summary
    assert "air_jordan_11 → air_jordan_2: 1" in summary
    picture = await admin.reply()
    assert picture.get("photo") and "Confusion matrix" in picture["caption"]


async def test_worker_messages_are_delivered_once(bot: BotUnderTest, admin: TestUser) -> None:
    with bot.sessions.begin() as session:
        session.add(Notification(chat_id=ADMIN, kind=NotificationKind.TEXT,
                                 payload={"text": "Retrain finished: version 2"}))
    assert (await admin.reply())["text"] == "Retrain finished: version 2"
    # Sent once: a message left after that one goes out in a later pass over the outbox, which takes
    # unsent messages oldest first, so a second copy of the first would come before it.
    with bot.sessions.begin() as session:
        session.add(Notification(chat_id=ADMIN, kind=NotificationKind.SCRAPE_SKIPPED,
                                 payload={"label": "air_jordan_1", "budget": 200, "retrain_queued": True}))
    assert (await admin.reply())["text"] == ("scrape of air_jordan_1 skipped: today's budget of 200 is used up; "
                                             "retrain queued")  # worded by the bot as it sends it
    with bot.sessions() as session:
        assert [n.sent_at is not None for n in session.scalars(select(Notification))] == [True, True]


async def test_status_shows_a_job_while_it_runs_and_after(bot: BotUnderTest, admin: TestUser) -> None:
    from bot.jobs.context import JobContext, _log_run, close_interrupted_runs
    from bot.store.models import utcnow

    ctx = JobContext(bot.settings, bot.runtime.engine, bot.sessions, None, job_id="retrain_now")  # type: ignore[arg-type]
    ctx.report(render_admin.retrain_stage("embedding", 1200, 6129))

    await admin.send_text("/status")
    assert "• retrain_now: last " in (status := (await admin.reply())["text"])
    assert "running now: retrain: embedding photos 1,200 / 6,129" in status

    _log_run(ctx, utcnow(), "version 2 promoted: not worse")  # the same row, finished
    await admin.send_text("/status")
    status = (await admin.reply())["text"]
    assert "version 2 promoted" in status and "running now" not in status

    # A run a stopped worker left behind is never shown as running after a restart.
    JobContext(bot.settings, bot.runtime.engine, bot.sessions, None, job_id="scrape_now:x").report(  # type: ignore[arg-type]
        "scraping")
    assert close_interrupted_runs(bot.sessions) == 1
    await admin.send_text("/status")
    assert "interrupted (the worker stopped): scraping" in (await admin.reply())["text"]
