"""The worker's scheduler: periodic jobs in a registry, a job store in the bot's database.

Every job has an explicit id and is added with ``replace_existing=True``, so a restart
never duplicates it; ``coalesce=True`` with no misfire limit means runs missed while
the worker was down collapse into one run as soon as it is back. Re-adding a job on
start would normally reset its next run time and lose such a missed run, so
``schedule_periodic`` keeps a stored next run time that is earlier than the fresh one.

Training jobs share a one-thread executor: two retrains never run at once in a worker.
Other processes (the bot's ``/retrain``, ``/scrape``) ask for work with ``enqueue``,
which writes a one-off job to the same store through a ``StoreClient`` (a scheduler
that never runs jobs); the worker's frequent ``retrain_check`` wakes it up to pick
such jobs up within seconds.

APScheduler 3's ``BackgroundScheduler`` makes one more pass over the due jobs after
``shutdown()`` and hands them to executors that are already shut down, losing those
runs (agronholm/apscheduler#285). ``WorkerScheduler`` is the same loop without that
last pass, written the documented way (a ``BaseScheduler`` with ``wakeup`` and a loop
calling ``_process_jobs``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, MetaData, Table, inspect, select

from bot.settings import Settings

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"
TRAINING_EXECUTOR = "training"
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


@dataclass(frozen=True)
class JobSpec:
    """A periodic job: its id, function (``module:function``), trigger and executor."""

    id: str
    func: str
    trigger: Callable[[Settings], BaseTrigger]
    executor: str = "default"


PERIODIC_JOBS: tuple[JobSpec, ...] = (
    JobSpec(
        "retrain_check",
        "bot.jobs.retrain:retrain_if_due",
        lambda s: IntervalTrigger(seconds=s.retrain_check_seconds, timezone=timezone.utc),
        TRAINING_EXECUTOR,
    ),
    JobSpec(
        "retrain_nightly",
        "bot.jobs.retrain:retrain_nightly",
        lambda s: CronTrigger(hour=s.retrain_cron_hour, minute=0, timezone=timezone.utc),
        TRAINING_EXECUTOR,
    ),
    JobSpec(
        "scrape_daily",
        "bot.jobs.scrape:scrape_daily",
        lambda s: CronTrigger(hour=s.scrape_cron_hour, minute=0, timezone=timezone.utc),
    ),
)


class WorkerScheduler(BaseScheduler):
    """A background-thread scheduler that stops cleanly: no job is taken after shutdown."""

    _event: threading.Event
    _thread: threading.Thread

    def start(self, *args: Any, **kwargs: Any) -> None:
        self._event = threading.Event()
        super().start(*args, **kwargs)
        self._thread = threading.Thread(target=self._main_loop, name="sneakerbot-worker", daemon=True)
        self._thread.start()

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self._event.set()
        self._thread.join()

    def wakeup(self) -> None:
        self._event.set()

    def _main_loop(self) -> None:
        wait_seconds: float | None = threading.TIMEOUT_MAX
        while self.state != STATE_STOPPED:
            self._event.wait(wait_seconds)
            self._event.clear()
            if self.state == STATE_STOPPED:
                break
            wait_seconds = self._process_jobs()


class StoreClient(BaseScheduler):
    """Reads and writes the job store for the worker; never runs a job itself."""

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def wakeup(self) -> None:
        """Nothing to wake: this scheduler has no loop."""


def _configure(scheduler: BaseScheduler, engine: Engine) -> BaseScheduler:
    scheduler.configure(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)},
        executors={"default": ThreadPoolExecutor(2), TRAINING_EXECUTOR: ThreadPoolExecutor(1)},
        job_defaults=JOB_DEFAULTS,
        timezone=timezone.utc,
    )
    return scheduler


def build_scheduler(engine: Engine) -> WorkerScheduler:
    """The worker's scheduler; its jobs live in the ``apscheduler_jobs`` table of ``engine``'s database."""
    return _configure(WorkerScheduler(), engine)  # type: ignore[return-value]


@contextmanager
def store_client(engine: Engine) -> Iterator[StoreClient]:
    """A started client of the job store (add, modify, list jobs) for the span of a ``with``."""
    client = _configure(StoreClient(), engine)
    client.start(paused=True)
    try:
        yield client  # type: ignore[misc]
    finally:
        client.shutdown(wait=False)


def schedule_periodic(scheduler: BaseScheduler, settings: Settings) -> None:
    """Add or replace every periodic job, keeping a pending (missed) earlier run time."""
    now = datetime.now(timezone.utc)
    for spec in PERIODIC_JOBS:
        trigger = spec.trigger(settings)
        options: dict[str, Any] = {}
        existing = scheduler.get_job(spec.id)
        fresh = trigger.get_next_fire_time(None, now)
        if existing is not None and existing.next_run_time and fresh and existing.next_run_time < fresh:
            options["next_run_time"] = existing.next_run_time
        scheduler.add_job(
            spec.func,
            trigger,
            id=spec.id,
            name=spec.id,
            executor=spec.executor,
            replace_existing=True,
            **options,
        )


class Worker:
    """Runs the periodic jobs and the one-off requests of the learning loop."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.scheduler = build_scheduler(engine)

    def start(self) -> None:
        """Start paused, (re)register the jobs, then run: due and missed runs start now."""
        self.scheduler.start(paused=True)
        schedule_periodic(self.scheduler, self.settings)
        self.scheduler.resume()
        log.info("worker started: %s", ", ".join(job.id for job in self.scheduler.get_jobs()))

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop; with ``wait`` the running jobs finish first."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    def run_forever(self) -> None:
        """Start and block until SIGINT or SIGTERM, then shut down cleanly."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            stop.wait()
        finally:
            self.shutdown()


def enqueue(engine: Engine, func: str, *, job_id: str, executor: str = "default", **kwargs: Any) -> None:
    """Ask the worker (in any process) to run ``func(**kwargs)`` as soon as it can.

    The same ``job_id`` asked twice before the worker got to it runs once.
    """
    with store_client(engine) as client:
        client.add_job(
            func,
            "date",
            run_date=datetime.now(timezone.utc),
            id=job_id,
            name=job_id,
            kwargs=kwargs,
            executor=executor,
            replace_existing=True,
        )


def next_runs(engine: Engine) -> dict[str, datetime | None]:
    """Each stored job's next run time, read straight from the job table (for ``/status``)."""
    if not inspect(engine).has_table(JOB_TABLE):
        return {}
    table = Table(JOB_TABLE, MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = connection.execute(select(table.c.id, table.c.next_run_time)).all()
    return {
        job_id: datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None
        for job_id, ts in rows
    }

