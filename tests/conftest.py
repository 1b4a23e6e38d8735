"""Shared fixtures, kept small. Area-specific fixtures live in their own test modules or helpers.

``database_url`` runs a test on SQLite and on PostgreSQL (``SNEAKERBOT_TEST_POSTGRES_URL``,
set by ``scripts/test-env.sh``), each time in a fresh database: a new SQLite file, or a new
PostgreSQL schema dropped afterwards.

``db_sessions`` is that database migrated, ready for services and repositories.
``playground`` and ``playground_http`` are the bot tests' Telegram and the HTTP client their
``TestUser``s talk through (``tests/bot_harness.py``); each module starts its own bot on them.
``ptb_time_periods`` runs a test with python-telegram-bot's int and ``timedelta`` time periods.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used: tests of ml/ and scraper/ should not load the bot
    import httpx
    from sqlalchemy.orm import Session, sessionmaker

    from bot.playground import PlaygroundServer

POSTGRES_ENV = "SNEAKERBOT_TEST_POSTGRES_URL"
PTB_TIME_PERIOD_WARNING = r".*attribute `\w+` will be of type `datetime.timedelta`"  # a regex, without colons


def postgres_url() -> str:
    """The test server's URL; a missing one is an error, not a skip (CI always sets it)."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"{POSTGRES_ENV} is not set: run the tests with `make test` (scripts/test-env.sh sets it)")
    return url


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a brand-new PostgreSQL schema, dropped after the test."""
    from bot.store.db import temporary_schema

    with temporary_schema(postgres_url(), "t") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def db_sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``database_url`` migrated to head by ``init_db``, as the bot and the worker see it."""
    from bot.store.db import init_db, session_factory

    engine = init_db(database_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
async def playground() -> AsyncIterator[PlaygroundServer]:
    """A running playground: the local Telegram Bot API server the bot under test polls."""
    from bot_harness import running_playground

    async with running_playground() as server:
        yield server


@pytest.fixture
async def playground_http(playground: PlaygroundServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``playground`` for ``TestUser(playground_http, user_id)``."""
    from bot_harness import user_api

    async with user_api(playground) as client:
        yield client


@pytest.fixture(params=[
    pytest.param("int", marks=pytest.mark.filterwarnings(
        f"ignore:{PTB_TIME_PERIOD_WARNING}:telegram.warnings.PTBDeprecationWarning")),
    "timedelta",
])
def ptb_time_periods(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with python-telegram-bot's time periods (e.g. ``RetryAfter.retry_after``) as ints and as
    ``timedelta`` (``PTB_TIMEDELTA``, set for this test only), the type a later major version will always use.

    With ints PTB warns about that coming change on every read, also inside its own code: expected, so ignored.
    """
    if request.param == "timedelta":
        monkeypatch.setenv("PTB_TIMEDELTA", "1")
    else:
        monkeypatch.delenv("PTB_TIMEDELTA", raising=False)
    return request.param
