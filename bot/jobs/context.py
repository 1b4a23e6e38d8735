"""What a job needs, built fresh for each run from the worker's environment.

Jobs live in a persistent job store, so they carry no arguments but plain values;
the settings (database, paths) come from the process environment, exactly as the
worker read them, and the database engine is opened and closed around each run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot.registry import ModelRegistry
from bot.settings import Settings, get_settings
from bot.store.db import make_engine, session_factory
from bot.store.models import JobRun, Notification, utcnow

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """Settings, database and model registry for one job run."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    registry: ModelRegistry

    @classmethod
    @contextmanager
    def open(cls, settings: Settings | None = None) -> Iterator[JobContext]:
        """A context for one run; the engine is disposed when the run ends."""
        settings = settings or get_settings()
        engine = make_engine(settings.db_url)
        sessions = session_factory(engine)
        try:
            yield cls(
                settings=settings,
                engine=engine,
                sessions=sessions,
                registry=registry_for(settings, sessions),
            )
        finally:
            engine.dispose()

    def notify(self, chat_id: int | None, text: str) -> None:
        """Leave ``text`` for ``chat_id`` in the outbox; a bot process sends it."""
        if chat_id is None:
            return
        with self.sessions.begin() as session:
            session.add(Notification(chat_id=chat_id, text=text))


def registry_for(settings: Settings, sessions: sessionmaker[Session]) -> ModelRegistry:
    """The model registry as the settings configure it (the one way to build it)."""
    return ModelRegistry(sessions, settings.models_path, tolerance=settings.promotion_tolerance)


def run_job(job_id: str, body: Callable[[JobContext], str | None]) -> str | None:
    """Run ``body`` in a fresh context and log it in ``job_runs``.

    ``body`` returns a one-line outcome, or None for "nothing to do, not worth a row"
    (the frequent check job); an exception is logged with its message and re-raised.
    """
    with JobContext.open() as ctx:
        started = utcnow()
        try:
            outcome = body(ctx)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            _log_run(ctx, job_id, started, f"failed: {exc}")
            raise
        if outcome is not None:
            log.info("job %s: %s", job_id, outcome)
            _log_run(ctx, job_id, started, outcome)
        return outcome


def _log_run(ctx: JobContext, job_id: str, started: object, outcome: str) -> None:
    with ctx.sessions.begin() as session:
        session.add(JobRun(job_id=job_id, started_at=started, finished_at=utcnow(), outcome=outcome[:2000]))
