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
from datetime import datetime, timezone

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.registry import ModelRegistry, is_disk_full
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
    job_id: str = ""
    run_id: int | None = None  # the ``job_runs`` row of a run that reported progress (``report``)

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

    def report(self, text: str) -> None:
        """Say what the run is doing now: a ``job_runs`` row without ``finished_at``, which ``/status`` shows.

        Why a row: ``/status`` runs in the bot process; the database is what the two share.
        """
        with self.sessions.begin() as session:
            row = session.get(JobRun, self.run_id) if self.run_id is not None else None
            if row is None:
                row = JobRun(job_id=self.job_id, started_at=utcnow(), outcome=text[:2000])
                session.add(row)
                session.flush()
                self.run_id = row.id
            row.outcome = text[:2000]

    def notify(self, chat_id: int | None, text: str) -> None:
        """Leave ``text`` for ``chat_id`` in the outbox; a bot process sends it."""
        if chat_id is None:
            return
        with self.sessions.begin() as session:
            session.add(Notification(chat_id=chat_id, text=text))

    def last_run(self) -> tuple[str, datetime] | None:
        """(outcome, finished at, UTC) of this job's last finished run before this one, or None."""
        with self.sessions() as session:
            query = select(JobRun.outcome, JobRun.finished_at).where(
                JobRun.job_id == self.job_id, JobRun.finished_at.is_not(None))
            if self.run_id is not None:
                query = query.where(JobRun.id != self.run_id)
            row = session.execute(query.order_by(JobRun.finished_at.desc(), JobRun.id.desc()).limit(1)).first()
        if row is None:
            return None
        finished = row.finished_at if row.finished_at.tzinfo else row.finished_at.replace(tzinfo=timezone.utc)
        return row.outcome or "", finished


def describe_failure(exc: BaseException) -> str:
    """A failed run's reason, one line; a full disk is named as such (the admin's first question)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if is_disk_full(exc) and not text.startswith("the disk is full"):
        return f"the disk is full: {text}"
    return text


def notify_admins(sessions: sessionmaker[Session], admin_ids: frozenset[int] | set[int], text: str) -> None:
    """Leave ``text`` for every admin (their private chats) in the outbox."""
    if not admin_ids:
        return
    with sessions.begin() as session:
        session.add_all(Notification(chat_id=admin, text=text) for admin in sorted(admin_ids))


def registry_for(settings: Settings, sessions: sessionmaker[Session]) -> ModelRegistry:
    """The model registry as the settings configure it (the one way to build it)."""
    return ModelRegistry(sessions, settings.models_path, tolerance=settings.promotion_tolerance,
                         class_tolerance=settings.promotion_class_tolerance,
                         new_class_tolerance=settings.promotion_new_class_tolerance)


def run_job(job_id: str, body: Callable[[JobContext], str | None]) -> str | None:
    """Run ``body`` in a fresh context and log it in ``job_runs``.

    ``body`` returns a one-line outcome, or None for "nothing to do, not worth a row"
    (the frequent check job); an exception is logged with its reason (``describe_failure``:
    "failed: the disk is full: ...") and re-raised.
    """
    with JobContext.open() as ctx:
        ctx.job_id = job_id
        started = utcnow()
        try:
            outcome = body(ctx)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            try:
                _log_run(ctx, started, f"failed: {describe_failure(exc)}")
            except Exception:  # e.g. a database on the same full disk: the log above still says it
                log.exception("job %s: could not record the failure", job_id)
            raise
        if outcome is not None:
            log.info("job %s: %s", job_id, outcome)
        _log_run(ctx, started, outcome)
        return outcome


def _log_run(ctx: JobContext, started: object, outcome: str | None) -> None:
    """Finish the run's row (the one ``report`` started, or a new one); a run with nothing to say leaves none."""
    with ctx.sessions.begin() as session:
        row = session.get(JobRun, ctx.run_id) if ctx.run_id is not None else None
        if outcome is None:
            if row is not None:
                session.delete(row)
            return
        if row is None:
            row = JobRun(job_id=ctx.job_id, started_at=started)
            session.add(row)
        row.finished_at, row.outcome = utcnow(), outcome[:2000]


def close_interrupted_runs(sessions: sessionmaker[Session]) -> int:
    """Runs a stopped worker left unfinished are marked so; ``/status`` never shows them as running."""
    with sessions.begin() as session:
        rows = list(session.scalars(select(JobRun).where(JobRun.finished_at.is_(None))))
        for row in rows:
            row.finished_at, row.outcome = utcnow(), f"interrupted (the worker stopped): {row.outcome or ''}"[:2000]
        return len(rows)
