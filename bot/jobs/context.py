"""What a job needs, built fresh for each run from the worker's environment.

Jobs live in a persistent job store, so they carry no arguments but plain values;
the settings (database, paths) come from the process environment, exactly as the
worker read them, and the database engine is opened and closed around each run.
What a job tells the admins goes to the outbox as a kind and a payload (``notify``); the
bot words it. Admins' requests come in as ``admin_requests`` rows (``take_request``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bot.registry import ModelRegistry, is_disk_full, registry_for
from bot.settings import Settings, get_settings
from bot.store.db import make_engine, session_factory
from bot.store.models import NotificationKind, RequestKind, utcnow
from bot.store.repositories import AdminRequestRepository, JobRunRepository, NotificationRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakenRequest:
    """What admins asked for, merged over the requests for one job: the newest parameters, every chat."""

    job_id: str
    params: dict[str, Any] = field(default_factory=dict)
    chat_ids: list[int] = field(default_factory=list)


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
            runs = JobRunRepository(session)
            row = runs.get(self.run_id)
            if row is None:
                row = runs.start(self.job_id, utcnow())
                self.run_id = row.id
            row.outcome = text[:2000]

    def notify(self, chat_id: int | None, kind: NotificationKind, payload: dict[str, Any]) -> None:
        """Leave an outcome for ``chat_id`` in the outbox; a bot process words and sends it."""
        if chat_id is None:
            return
        with self.sessions.begin() as session:
            NotificationRepository(session).add(chat_id, kind, payload)

    def last_run(self) -> tuple[str, datetime] | None:
        """(outcome, finished at, UTC) of this job's last finished run before this one, or None."""
        with self.sessions() as session:
            row = JobRunRepository(session).last_finished(self.job_id, besides=self.run_id)
        if row is None:
            return None
        outcome, finished = row
        return outcome or "", finished if finished.tzinfo else finished.replace(tzinfo=UTC)

    def take_request(self, kind: RequestKind) -> TakenRequest | None:
        """The oldest request of ``kind`` no worker has taken, merged with the others for the same job; None
        when there is none. Taken means gone from the queue: a worker stopped before running it loses it, as
        the job it replaces did (the admin who asked is told of the interruption when it restarts)."""
        with self.sessions.begin() as session:
            rows = AdminRequestRepository(session).take(kind)
            if not rows:
                return None
            params: dict[str, Any] = {}
            for row in rows:
                params.update(row.params or {})
            if any((row.params or {}).get("then_retrain") for row in rows):
                params["then_retrain"] = True
            chats = list(dict.fromkeys(chat for row in rows for chat in row.chat_ids or []))
            return TakenRequest(rows[0].job_id, params, chats)

    def request(self, kind: RequestKind, params: dict[str, Any], chat_ids: Iterable[int]) -> None:
        """Queue more work for a request job (a scrape asks for the retrain that follows it)."""
        with self.sessions.begin() as session:
            AdminRequestRepository(session).add(kind, params, chat_ids)


def describe_failure(exc: BaseException) -> str:
    """A failed run's reason, one line; a full disk is named as such (the admin's first question)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if is_disk_full(exc) and not text.startswith("the disk is full"):
        return f"the disk is full: {text}"
    return text


def notify_admins(sessions: sessionmaker[Session], admin_ids: frozenset[int] | set[int],
                  kind: NotificationKind, payload: dict[str, Any]) -> None:
    """Leave an outcome for every admin (their private chats) in the outbox."""
    if not admin_ids:
        return
    with sessions.begin() as session:
        outbox = NotificationRepository(session)
        for admin in sorted(admin_ids):
            outbox.add(admin, kind, payload)


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


def _log_run(ctx: JobContext, started: datetime, outcome: str | None) -> None:
    """Finish the run's row (the one ``report`` started, or a new one); a run with nothing to say leaves none."""
    with ctx.sessions.begin() as session:
        runs = JobRunRepository(session)
        row = runs.get(ctx.run_id)
        if outcome is None:
            if row is not None:
                runs.delete(row)
            return
        if row is None:
            row = runs.start(ctx.job_id, started)
        row.finished_at, row.outcome = utcnow(), outcome[:2000]


def close_interrupted_runs(sessions: sessionmaker[Session]) -> int:
    """Runs a stopped worker left unfinished are marked so; ``/status`` never shows them as running."""
    with sessions.begin() as session:
        rows = JobRunRepository(session).unfinished()
        for row in rows:
            row.finished_at, row.outcome = utcnow(), f"interrupted (the worker stopped): {row.outcome or ''}"[:2000]
        return len(rows)
