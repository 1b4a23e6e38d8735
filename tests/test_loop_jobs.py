"""The worker's scheduler: jobs in the database, no duplicates on restart, missed runs coalesced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from bot import render_admin
from bot.jobs.scheduler import JOB_TABLE, PERIODIC_JOBS, Worker, build_scheduler, stop_scheduler
from bot.services.admin import enqueue
from bot.settings import Settings, get_settings
from bot.store.db import init_db, session_factory
from bot.store.models import AdminRequest, JobRun, Notification, RequestKind

WAIT_S = 60  # upper bound for background work to show up; never an assertion on speed


@pytest.fixture
def worker_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Iterator[tuple[Settings, Engine]]:
    """A data dir and a fresh database (SQLite and PostgreSQL), configured through the
    environment as the worker reads it."""
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SNEAKERBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("SNEAKERBOT_RETRAIN_CHECK_SECONDS", "1")
    monkeypatch.setenv("SNEAKERBOT_STARTER_MODEL_DIR", str(tmp_path / "no-starter"))
    settings = get_settings()
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    yield settings, engine
    engine.dispose()


def _job_rows(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text(f"SELECT id FROM {JOB_TABLE}")).scalars())


def _runs(engine: Engine, job_id: str) -> int:
    with session_factory(engine)() as session:
        return session.scalar(select(func.count()).select_from(JobRun).where(JobRun.job_id == job_id)) or 0


def _wait_for(predicate, what: str) -> None:
    done = threading.Event()
    for _ in range(WAIT_S * 10):
        if predicate():
            return
        done.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def stored_jobs(engine: Engine) -> Iterator[BackgroundScheduler]:
    """The worker's stored jobs, to change while no worker runs (a paused scheduler that runs none)."""
    scheduler = build_scheduler(engine)
    scheduler.start(paused=True)
    try:
        yield scheduler
    finally:
        stop_scheduler(scheduler)


def _stop_before_the_first_check(engine: Engine) -> None:
    """Move the frequent check far out so a test sees only the runs it causes."""
    with stored_jobs(engine) as scheduler:
        scheduler.modify_job("retrain_check", next_run_time=datetime.now(UTC) + timedelta(days=1))


def test_restart_keeps_one_copy_of_each_job(worker_env: tuple[Settings, Engine]) -> None:
    settings, engine = worker_env
    for _ in range(3):  # three worker starts, as after two restarts
        worker = Worker(settings, engine)
        worker.start()
        worker.shutdown()

    assert _job_rows(engine) == sorted(spec.id for spec in PERIODIC_JOBS)


def test_missed_runs_while_down_are_coalesced_into_one(worker_env: tuple[Settings, Engine]) -> None:
    settings, engine = worker_env
    worker = Worker(settings, engine)
    worker.start()
    worker.shutdown()
    # The worker was down for three nights: the stored next run is three days ago.
    with stored_jobs(engine) as scheduler:
        scheduler.modify_job("retrain_nightly", next_run_time=datetime.now(UTC) - timedelta(days=3))
    _stop_before_the_first_check(engine)

    worker = Worker(settings, engine)
    worker.start()
    try:
        _wait_for(lambda: _runs(engine, "retrain_nightly") >= 1, "the missed nightly run")
        next_run = worker.scheduler.get_job("retrain_nightly").next_run_time
    finally:
        worker.shutdown(wait=True)

    assert _runs(engine, "retrain_nightly") == 1
    assert next_run > datetime.now(UTC)
    assert _job_rows(engine) == sorted(spec.id for spec in PERIODIC_JOBS)


def test_a_request_from_another_process_runs_once_and_notifies(worker_env: tuple[Settings, Engine]) -> None:
    settings, engine = worker_env
    other = init_db(settings.db_url)  # the bot process's own engine
    # An impatient admin sends /retrain twice before the worker looks. No worker runs yet, so none can
    # take the first request before the second comes (that would rightly be a second run): the two
    # requests are one request row, and that is what the worker finds when it starts.
    for _ in range(2):
        enqueue(session_factory(other), RequestKind.RETRAIN, chat_id=42)
    other.dispose()
    with session_factory(engine)() as session:
        assert [row.job_id for row in session.scalars(select(AdminRequest))] == ["retrain_now"]
    worker = Worker(settings, engine)
    worker.start()
    try:
        _wait_for(lambda: _runs(engine, "retrain_now") >= 1, "the requested retrain")
    finally:
        worker.shutdown(wait=True)

    assert _runs(engine, "retrain_now") == 1
    with session_factory(engine)() as session:
        notes = list(session.scalars(select(Notification)))
    assert [note.chat_id for note in notes] == [42]
    assert "no current model" in render_admin.notification(notes[0].kind, notes[0].payload)
    assert "retrain_now" not in _job_rows(engine)
    with session_factory(engine)() as session:
        assert session.scalars(select(AdminRequest)).one().taken_at is not None


def _jobs_stored_yet(engine: Engine) -> bool:
    """True once the child has created its job table and every periodic job in it."""
    try:
        return _job_rows(engine) == sorted(spec.id for spec in PERIODIC_JOBS)
    except DBAPIError:  # the child has not created the table yet
        return False


def test_the_bot_starts_its_worker_as_a_child_process_and_stops_it(worker_env: tuple[Settings, Engine]) -> None:
    """`sneakerbot run` on one machine: the jobs run in `sneakerbot worker`, never in the bot's process."""
    from bot.cli.run_commands import start_worker_process, stop_worker_process

    _, engine = worker_env
    child = start_worker_process()
    try:
        _wait_for(lambda: _jobs_stored_yet(engine), "the child's jobs")
        assert child.poll() is None
    finally:
        stop_worker_process(child)
    assert child.returncode == 0
