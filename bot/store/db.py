"""Engine, session factory and ``init_db``: the one way the rest of the bot reaches the database.

``init_db`` runs the Alembic migrations shipped inside this package (``bot/store/migrations``),
so an installed package can create or upgrade its database without an ``alembic.ini``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bot.store.retry import RetryPolicy, attach_policy

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x5EAC_B07  # PostgreSQL advisory lock held while one process migrates
SQLITE_BUSY_TIMEOUT_S = 5.0  # how long one SQLite statement waits for another writer's lock
PG_CONNECT_TIMEOUT_S = 10  # a server that does not answer at all counts as away, and is retried


def make_engine(url: str, *, retry_seconds: float | None = None) -> Engine:
    """An engine tuned for the backend, with its retry policy (``bot.store.retry``) attached.

    PostgreSQL: ``pool_pre_ping`` (a connection the server dropped, e.g. on a restart, is
    replaced at checkout instead of failing the next statement) and a connect timeout.
    SQLite: WAL, foreign keys and a busy timeout of ``SQLITE_BUSY_TIMEOUT_S`` per statement
    (at most the retry budget): the retry policy, not SQLite, decides how long a locked
    database is waited for in all. ``retry_seconds`` defaults to ``SNEAKERBOT_DB_RETRY_SECONDS``.
    """
    budget = configured_retry_seconds() if retry_seconds is None else max(0.0, float(retry_seconds))
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args)
    else:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        busy_timeout = max(1.0, min(SQLITE_BUSY_TIMEOUT_S, budget))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout})
        event.listen(engine, "connect", _sqlite_pragmas)
    attach_policy(engine, RetryPolicy(budget_s=budget))
    return engine


def configured_retry_seconds() -> float:
    """``SNEAKERBOT_DB_RETRY_SECONDS`` (environment or ``.env``), for callers that pass no budget."""
    from bot.settings import Settings

    return max(0.0, float(Settings().db_retry_seconds))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    """WAL lets readers and one writer work at once; SQLite needs foreign keys switched on."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (they are handed to other threads)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the packaged migrations and reusing ``engine``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["engine"] = engine
    return config


def init_db(url: str, *, retry_seconds: float | None = None) -> Engine:
    """Create or upgrade the database at ``url`` to the newest schema and return its engine."""
    engine = make_engine(url, retry_seconds=retry_seconds)
    with migration_lock(engine):  # bot replicas and the worker start together on an empty database
        command.upgrade(alembic_config(engine), "head")
    log.info("database ready: %s", engine.url.render_as_string(hide_password=True))
    return engine


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """One process at a time migrates: the others wait, then find the schema at head.

    Without it, replicas started together on an empty database all ran the first migration and
    all but one failed on "table already exists". PostgreSQL: a session advisory lock; SQLite (one
    machine): an exclusive ``flock`` on ``<database>.migrate.lock``; an in-memory database: none.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                connection.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def temporary_schema(base_url: str, prefix: str = "tmp") -> Iterator[str]:
    """A PostgreSQL URL whose connections use a brand-new schema, dropped on exit.

    Why: tests and benchmarks share one server with each other and with a developer's data;
    a schema of their own (``search_path`` in the URL) keeps every run's tables apart.
    """
    import uuid

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
