"""The database away for a while: nothing the users sent is lost, and nothing is stored twice.

- the retry policy itself (``bot.store.retry``): what is transient, backoff, the budget, the
  short budget once the database is known to be down, never a sleep on the event loop;
- a COMMIT that reached the database but whose answer was lost: the retried unit finds what
  it stored and stores nothing more (both backends);
- through the playground and a running bot: SQLite locked by another writer (``BEGIN
  IMMEDIATE`` held by another connection) while a user sends a photo and presses buttons; the
  same past the retry budget ("try again in a moment", nothing half-written); PostgreSQL
  stopped in the middle of traffic and started again (``pg_ctlcluster``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import POSTGRES_ENV
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from bot import render
from bot.playground import PlaygroundServer
from bot.services.feedback import FeedbackService
from bot.services.identify import Guess, IdentifyService, PhotoRequest
from bot.services.models import ModelHolder
from bot.services.ratelimit import RateLimiter
from bot.store.models import Feedback, Prediction, RateEvent, Suggestion
from bot.store.models import Image as ImageRow
from bot.store.retry import OUTAGE_BUDGET_S, DatabaseUnavailable, RetryPolicy, is_transient, retry_policy

from bot_harness import (
    BLUE,
    GREY,
    RED,
    TestUser,
    bot_settings,
    colour_model,
    jpeg_bytes,
    running_bot,
    updates_taken,
    wait_until,
)

RETRY_ENV = "SNEAKERBOT_DB_RETRY_SECONDS"
LONG_WAIT = 90.0  # answers after an outage, on a busy 2-core machine
OUTAGE_LIMIT = 30.0  # the longest the test may keep the shared PostgreSQL cluster down


# --- the policy ---------------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy_on(fake: FakeTime, budget_s: float) -> RetryPolicy:
    return RetryPolicy(budget_s=budget_s, sleep=fake.sleep, clock=fake.clock)


def locked() -> OperationalError:
    return OperationalError("INSERT INTO feedback ...", {}, sqlite3.OperationalError("database is locked"))


def dropped() -> OperationalError:
    return OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"),
                            connection_invalidated=True)


def test_transient_database_errors_are_told_from_the_others() -> None:
    assert is_transient(locked())
    assert is_transient(dropped())
    refused = psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 failed')
    assert is_transient(OperationalError("SELECT 1", {}, refused))
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert is_transient(OperationalError("INSERT", {}, shutdown))
    assert is_transient(sqlite3.OperationalError("database is locked"))  # raised outside SQLAlchemy's wrapping
    assert not is_transient(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: users")))
    assert not is_transient(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: images.sha1")))
    assert not is_transient(ValueError("a bug"))


def test_a_unit_is_retried_from_its_start_with_growing_delays_until_it_succeeds() -> None:
    fake = FakeTime()
    policy = policy_on(fake, budget_s=30)
    attempts: list[int] = []

    def unit(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 4:
            raise locked()
        return "stored"

    assert policy.run("store a press", unit) == "stored"
    assert attempts == [1, 2, 3, 4]
    assert len(fake.sleeps) == 3 and fake.sleeps[0] <= fake.sleeps[1] <= fake.sleeps[2] <= 2.0
    assert (policy.failures["store a press"], policy.retried, policy.down) == (3, 1, False)


def test_past_the_budget_a_unit_gives_up_and_later_ones_wait_only_briefly_until_one_succeeds() -> None:
    fake = FakeTime()
    policy = policy_on(fake, budget_s=10)

    def away(_attempt: int) -> None:
        raise dropped()

    with pytest.raises(DatabaseUnavailable) as caught:
        policy.run("store a press", away)
    assert fake.now == pytest.approx(10)  # bounded by the budget, not by the number of attempts
    assert isinstance(caught.value.__cause__, OperationalError)
    assert max(fake.sleeps) <= 2.0 and len(fake.sleeps) > 5
    assert policy.down and policy.exhausted == 1

    began = fake.now
    with pytest.raises(DatabaseUnavailable):  # known to be down: "try again" within seconds
        policy.run("rate limit", away)
    assert fake.now - began == pytest.approx(OUTAGE_BUDGET_S)

    # SQLite lets readers in while another writer holds the lock: only a write ends the outage
    assert policy.run("look up", lambda _attempt: "row", read_only=True) == "row"
    assert policy.down
    assert policy.run("rate limit", lambda _attempt: "ok") == "ok"  # back: full budgets again
    assert not policy.down


def test_other_errors_are_not_retried() -> None:
    fake = FakeTime()
    policy = policy_on(fake, budget_s=30)
    attempts: list[int] = []

    def unit(attempt: int) -> None:
        attempts.append(attempt)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError):
        policy.run("store", unit)
    assert attempts == [1] and fake.sleeps == []


async def test_on_the_event_loop_the_policy_never_sleeps() -> None:
    fake = FakeTime()
    policy = policy_on(fake, budget_s=30)
    with pytest.raises(DatabaseUnavailable):
        policy.run("store", lambda _attempt: (_ for _ in ()).throw(locked()))
    assert fake.sleeps == []


# --- a COMMIT whose answer was lost ---------------------------------------------------------------


@contextmanager
def commit_answers_lost(sessions: sessionmaker[Session]) -> Iterator[None]:
    """The next COMMIT reaches the database, but the client hears the connection drop instead."""
    left = [1]

    def drop(_session: Session) -> None:
        if left[0]:
            left[0] -= 1
            raise dropped()

    event.listen(sessions, "after_commit", drop)
    try:
        yield
    finally:
        event.remove(sessions, "after_commit", drop)
    assert left == [0], "no COMMIT happened"


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def feedback_rows(sessions: sessionmaker[Session]) -> list[tuple[int, str, str | None]]:
    with sessions() as session:
        return [(f.user_id, f.verdict, f.label) for f in session.scalars(select(Feedback).order_by(Feedback.id))]


def test_a_retried_unit_whose_commit_went_through_stores_nothing_twice(
        db_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    sessions = db_sessions
    identify = IdentifyService(sessions, ModelHolder(colour_model()), lambda data, side: None,
                               data_dir=tmp_path, admin_ids=frozenset())
    sha1 = "a" * 40
    pending = tmp_path / "pending" / f"{sha1}.jpg"
    pending.parent.mkdir(parents=True)
    pending.write_bytes(jpeg_bytes(RED))
    request = PhotoRequest(b"", user_id=7, chat_id=7, message_id=70)
    guesses = [Guess("air_jordan_11", "Air Jordan 11", 0.9), Guess("air_jordan_2", "Air Jordan 2", 0.05)]
    with commit_answers_lost(sessions):
        prediction_id = identify.store(request, sha1, pending, 1, "sneaker", guesses, 12.0)
    with sessions() as session:
        assert [p.id for p in session.scalars(select(Prediction))] == [prediction_id]

    with commit_answers_lost(sessions):
        assert RateLimiter(sessions, per_minute=5).allow(7)
    assert count(sessions, RateEvent) == 1

    feedback = FeedbackService(sessions, data_dir=tmp_path, retention_days=7, known_label=lambda label: True,
                               admin_ids=frozenset())
    with commit_answers_lost(sessions):
        assert feedback.confirm(prediction_id, 7) == "air_jordan_11"
    with commit_answers_lost(sessions):
        feedback.correct(prediction_id, 7, "air_jordan_2")
    assert feedback_rows(sessions) == [(7, "correct", "air_jordan_11"), (7, "wrong", "air_jordan_2")]
    with sessions() as session:
        image = session.scalars(select(ImageRow)).one()
    assert (image.label, image.path) == ("air_jordan_2", f"images/air_jordan_2/{sha1}.jpg")
    assert (tmp_path / image.path).exists() and not (tmp_path / "images" / "air_jordan_11" / f"{sha1}.jpg").exists()

    with commit_answers_lost(sessions):
        feedback.not_listed(prediction_id, 7)
    with commit_answers_lost(sessions):
        suggestion = feedback.suggest(7, "Air Jordan 40")
    assert suggestion is not None and suggestion.text == "Air Jordan 40"  # not "you were not asked"
    assert feedback_rows(sessions)[2:] == [(7, "not_listed", None)]
    assert count(sessions, Suggestion) == 1
    assert retry_policy(sessions).retried >= 6


# --- through the bot: SQLite locked by another writer ---------------------------------------------


@contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Another connection holds SQLite's write lock (``BEGIN IMMEDIATE``) for the ``with`` block."""
    other = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def sqlite_file(url: str) -> Path:
    return Path(make_url(url).database or "")


def photos_answered(answers: dict[int, list[dict]], sent: list[dict]) -> bool:
    return all(answers.get(m["message_id"]) for m in sent)


async def collect_answers(user: TestUser, sent: list[dict], *, timeout: float = LONG_WAIT) -> dict[int, list[dict]]:
    """The bot's messages, by the photo they reply to, until every photo in ``sent`` has one."""
    answers: dict[int, list[dict]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not photos_answered(answers, sent):
        message = (await user.next_event("message", timeout=max(deadline - loop.time(), 0.001)))["message"]
        answers.setdefault((message.get("reply_to_message") or {}).get("message_id", 0), []).append(message)
    return answers


async def test_sqlite_locked_by_another_writer_a_photo_and_presses_complete_once_it_is_released(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_ENV, "60")
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    user = TestUser(playground_http, user_id=2001)
    async with running_bot(playground, bot_settings(tmp_path, url), colour_model()) as bot:
        policy = retry_policy(bot.sessions)
        await user.send_photo(jpeg_bytes(RED, noise=1))
        confirmable = await user.reply()
        await user.send_photo(jpeg_bytes(BLUE, noise=2))
        await user.press(await user.reply(), "Wrong")
        listing = await user.edit()
        failures = dict(policy.failures)

        with write_lock(sqlite_file(url)):  # held for longer than SQLite's own busy timeout
            photo = await user.send_photo(jpeg_bytes(RED, noise=3))
            await user.press(confirmable, "Correct")
            await user.press(listing, "Air Jordan 2")
            await updates_taken(playground)
            await wait_until(lambda: policy.failures["rate limit"] > failures.get("rate limit", 0)
                             and policy.failures["store a press"] >= failures.get("store a press", 0) + 2,
                             timeout=LONG_WAIT, what="the bot's writes meeting the lock")
            assert count(bot.sessions, Feedback) == 0

        answers = await collect_answers(user, [photo])
        assert "Air Jordan 11" in answers[photo["message_id"]][0]["text"]
        edits = {(await user.edit())["message_id"] for _ in range(2)}
        assert edits == {confirmable["message_id"], listing["message_id"]}
        assert await user.quiet(1.0) == []  # each photo and press answered exactly once
        assert sorted(feedback_rows(bot.sessions)) == [(2001, "correct", "air_jordan_11"),
                                                      (2001, "wrong", "air_jordan_2")]
        assert (count(bot.sessions, Prediction), count(bot.sessions, RateEvent), count(bot.sessions, ImageRow)) == (
            3, 3, 2)
        assert policy.retried >= 3 and not policy.down


async def test_sqlite_locked_past_the_budget_the_user_hears_try_again_and_nothing_is_half_written(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_ENV, "2")
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    user = TestUser(playground_http, user_id=2002)
    settings = bot_settings(tmp_path, url)
    async with running_bot(playground, settings, colour_model()) as bot:
        first_photo = jpeg_bytes(RED, noise=4)
        await user.send_photo(first_photo)
        confirmable = await user.reply()
        pending_before = set((settings.data_dir / "pending").iterdir())

        with write_lock(sqlite_file(url)):  # until both were told to try again
            photo = await user.send_photo(jpeg_bytes(RED, noise=5))
            answer = await user.reply()
            await user.press(confirmable, "Correct")
            alert = await user.alert()
        assert (answer["text"], answer["reply_to_message"]["message_id"]) == (
            render.DB_UNAVAILABLE_TEXT, photo["message_id"])
        assert (alert["text"], alert["show_alert"]) == (render.DB_UNAVAILABLE_TEXT, True)

        # Nothing of the photo or the press stayed: no rows, no pending photo, no filed copy.
        assert count(bot.sessions, Prediction) == 1 and count(bot.sessions, Feedback) == 0
        assert count(bot.sessions, ImageRow) == 0 and count(bot.sessions, RateEvent) == 1
        assert set((settings.data_dir / "pending").iterdir()) == pending_before
        assert not any(path.is_file() for path in (settings.data_dir / "images").rglob("*"))

        # Trying again works, once.
        await user.press(confirmable, "Correct")
        assert (await user.alert())["text"] == "Thanks!"
        await user.edit()
        again = await user.send_photo(jpeg_bytes(RED, noise=5))
        assert (await user.reply())["reply_to_message"]["message_id"] == again["message_id"]
        assert feedback_rows(bot.sessions) == [(2002, "correct", "air_jordan_11")]
        assert count(bot.sessions, Prediction) == 2
        assert await user.quiet(0.5) == []


# --- through the bot: PostgreSQL restarted in the middle of traffic ---------------------------------


def local_cluster(url: str) -> tuple[str, str] | None:
    """The Debian cluster (version, name) serving ``url`` on this machine, if we may stop and start it."""
    parsed = make_url(url)
    if parsed.host not in ("127.0.0.1", "localhost", None) or shutil.which("pg_ctlcluster") is None:
        return None
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[2] == str(parsed.port or 5432) and fields[3] == "online":
            if os.geteuid() == 0 or fields[4] == os.environ.get("USER"):
                return fields[0], fields[1]
    return None


def pg_ctlcluster(cluster: tuple[str, str], action: str) -> None:
    subprocess.run(["pg_ctlcluster", *cluster, action, *(["-m", "fast"] if action == "stop" else [])],
                   check=True, capture_output=True, timeout=120)


async def pg_ctl(cluster: tuple[str, str], action: str) -> None:
    """``pg_ctlcluster`` from the event loop, as a subprocess: not on the default thread pool, which
    the bot's retrying database calls fill during the outage."""
    process = await asyncio.create_subprocess_exec(
        "pg_ctlcluster", *cluster, action, *(["-m", "fast"] if action == "stop" else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")


def cluster_online(cluster: tuple[str, str]) -> bool:
    return subprocess.run(["pg_ctlcluster", *cluster, "status"], capture_output=True, check=False).returncode == 0


def accepting(url: str) -> bool:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


@pytest.fixture
def restartable_postgres() -> Iterator[tuple[str, tuple[str, str]]]:
    """A fresh schema on the local cluster, and the cluster. Its own engines use no pool, so
    dropping the schema after a restart needs no dead pooled connection; the cluster is
    started again whatever the test did."""
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"{POSTGRES_ENV} is not set")
    base = os.environ[POSTGRES_ENV]
    cluster = local_cluster(base)
    if cluster is None:
        pytest.skip("no local PostgreSQL cluster this test may restart")
    schema = f"t_{uuid.uuid4().hex[:12]}"

    def run(statement: str) -> None:
        engine = create_engine(base, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                connection.execute(text(statement))
        finally:
            engine.dispose()

    run(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}", cluster
    finally:
        if not cluster_online(cluster):
            pg_ctlcluster(cluster, "start")
        for _ in range(600):  # bounded: the server accepts connections again within seconds
            if accepting(base):
                break
            time.sleep(0.1)
        run(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_restarted_in_the_middle_of_traffic_every_photo_is_answered_once_and_every_press_kept(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, restartable_postgres: tuple[str, tuple[str, str]]) -> None:
    url, cluster = restartable_postgres
    monkeypatch.setenv(RETRY_ENV, str(LONG_WAIT))
    # The playground shares this process (and its default thread pool, where it makes thumbnails)
    # with the bot, whose calls wait there while the database is away; in production it is
    # Telegram, elsewhere. Room for both, so the users can keep sending during the outage.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
    users = [TestUser(playground_http, user_id=3001 + n) for n in range(3)]
    async with running_bot(playground, bot_settings(tmp_path, url), colour_model()) as bot:
        policy = retry_policy(bot.sessions)
        confirmable: dict[int, dict] = {}
        listing: dict[int, dict] = {}
        for user in users:  # each has an answer to confirm and a list to pick from
            await user.send_photo(jpeg_bytes(RED, noise=user.user_id))
            confirmable[user.user_id] = await user.reply()
            await user.send_photo(jpeg_bytes(BLUE, noise=user.user_id + 100))
            await user.press(await user.reply(), "Wrong")
            listing[user.user_id] = await user.edit()
        failures = dict(policy.failures)
        sent: dict[int, list[dict]] = {user.user_id: [] for user in users}
        shade = iter(range(1000, 2000))

        async def burst(photos: int) -> None:
            async def one(user: TestUser) -> None:
                for _ in range(photos):
                    colour = RED if next(shade) % 2 else GREY
                    sent[user.user_id].append(await user.send_photo(jpeg_bytes(colour, noise=next(shade))))
            await asyncio.gather(*(one(user) for user in users))

        try:
            async with asyncio.timeout(OUTAGE_LIMIT):  # the cluster is shared: never down for long
                # Traffic while the server shuts down: answers in flight lose their connections.
                await asyncio.gather(burst(2), pg_ctl(cluster, "stop"))
                assert not cluster_online(cluster)
                # While it is down: more photos, and every user presses ✅ and picks a model.
                await burst(2)
                for user in users:
                    await user.press(confirmable[user.user_id], "Correct")
                    await user.press(listing[user.user_id], "Air Jordan 2")
                await updates_taken(playground, timeout=OUTAGE_LIMIT)
                await wait_until(lambda: policy.failures["check a press"] > failures.get("check a press", 0)
                                 and policy.failures["rate limit"] > failures.get("rate limit", 0),
                                 timeout=OUTAGE_LIMIT, what="photos and presses meeting the stopped server")
                # Traffic while it starts again.
                await asyncio.gather(burst(1), pg_ctl(cluster, "start"))
        finally:
            if not cluster_online(cluster):
                pg_ctlcluster(cluster, "start")

        for user in users:
            answers = await collect_answers(user, sent[user.user_id])
            for photo in sent[user.user_id]:
                replies = answers[photo["message_id"]]
                assert len(replies) == 1 and replies[0].get("reply_markup"), replies  # an answer, not "try again"
            edits = {(await user.next_event("edit", timeout=LONG_WAIT))["message"]["message_id"] for _ in range(2)}
            assert edits == {confirmable[user.user_id]["message_id"], listing[user.user_id]["message_id"]}
        for user in users:
            assert await user.quiet(1.0) == []  # no photo answered twice, no press answered twice

        with bot.sessions() as session:
            keys = [(p.chat_id, p.message_id) for p in session.scalars(select(Prediction))]
        assert len(keys) == len(set(keys)) == 2 * len(users) + sum(len(photos) for photos in sent.values())
        assert sorted(feedback_rows(bot.sessions)) == sorted(
            row for user in users for row in [(user.user_id, "correct", "air_jordan_11"),
                                              (user.user_id, "wrong", "air_jordan_2")])
        assert policy.retried >= 1 and not policy.down
