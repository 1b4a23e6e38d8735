"""The worker's scheduler: APScheduler's stock ``BackgroundScheduler``, jobs in the bot's database.

Every periodic job has an explicit id and is added with ``replace_existing=True``, so a
restart never duplicates it; ``coalesce=True`` with no misfire limit means runs missed while
the worker was down collapse into one run as soon as it is back. Re-adding a job on start
would normally reset its next run time and lose such a missed run, so ``schedule_periodic``
keeps a stored next run time that is earlier than the fresh one.

Training jobs share a one-thread executor: two retrains never run at once in a worker.
Other processes (the bot's ``/retrain``, ``/scrape``) never touch the scheduler: they leave
``admin_requests`` rows, which two ordinary interval jobs (``REQUEST_JOBS``) take and run,
the retrains on the training executor, the scrapes on the default one. Those two live in an
in-memory job store: they are added again at every start and have no missed runs to keep.

APScheduler 3's ``shutdown()`` makes one more pass over the due jobs and hands them to
executors that are already shut down, losing those runs (agronholm/apscheduler#285).
``stop_scheduler`` pauses it and takes its job stores out first (public API only), so that
pass finds nothing and a missed nightly run stays in the database for the next start.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from bot.settings import Settings
from bot.store.models import JOB_TABLE

log = logging.getLogger(__name__)

TRAINING_EXECUTOR = "training"
REQUESTS_STORE = "requests"  # in memory: the request jobs are re-added at each start
JOB_STORES = ("default", REQUESTS_STORE)
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

__all__ = ["JOB_TABLE", "PERIODIC_JOBS", "REQUEST_JOBS", "TRAINING_EXECUTOR", "JobSpec", "Worker",
           "build_scheduler", "schedule_periodic", "stop_scheduler"]


@dataclass(frozen=True)
class JobSpec:
    """A periodic job: its id, function (``module:function``), trigger and executor."""

    id: str
    func: str
    trigger: Callable[[Settings], BaseTrigger]
    executor: str = "default"


def _every_check(settings: Settings) -> BaseTrigger:
    return IntervalTrigger(seconds=settings.retrain_check_seconds, timezone=UTC)


PERIODIC_JOBS: tuple[JobSpec, ...] = (
    JobSpec("retrain_check", "bot.jobs.retrain:retrain_if_due", _every_check, TRAINING_EXECUTOR),
    JobSpec(
        "retrain_nightly",
        "bot.jobs.retrain:retrain_nightly",
        lambda s: CronTrigger(hour=s.retrain_cron_hour, minute=0, timezone=UTC),
        TRAINING_EXECUTOR,
    ),
    JobSpec(
        "scrape_daily",
        "bot.jobs.scrape:scrape_daily",
        lambda s: CronTrigger(hour=s.scrape_cron_hour, minute=0, timezone=UTC),
    ),
)

#: The admins' requests, looked for as often as corrections are.
REQUEST_JOBS: tuple[JobSpec, ...] = (
    JobSpec("retrain_requests", "bot.jobs.retrain:take_retrain_requests", _every_check, TRAINING_EXECUTOR),
    JobSpec("scrape_requests", "bot.jobs.scrape:take_scrape_requests", _every_check),
)


def build_scheduler(engine: Engine) -> BackgroundScheduler:
    """The worker's scheduler; its periodic jobs live in the ``apscheduler_jobs`` table of ``engine``'s database."""
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE),
                   REQUESTS_STORE: MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(2), TRAINING_EXECUTOR: ThreadPoolExecutor(1)},
        job_defaults=JOB_DEFAULTS,
        timezone=UTC,
    )


def schedule_periodic(scheduler: BaseScheduler, settings: Settings) -> None:
    """Add or replace every periodic job, keeping a pending (missed) earlier run time; add the request jobs."""
    now = datetime.now(UTC)
    for spec in PERIODIC_JOBS:
        trigger = spec.trigger(settings)
        options: dict[str, Any] = {}
        existing = scheduler.get_job(spec.id)
        fresh = trigger.get_next_fire_time(None, now)
        if existing is not None and existing.next_run_time and fresh and existing.next_run_time < fresh:
            options["next_run_time"] = existing.next_run_time
        scheduler.add_job(spec.func, trigger, id=spec.id, name=spec.id, executor=spec.executor,
                          replace_existing=True, **options)
    for spec in REQUEST_JOBS:
        scheduler.add_job(spec.func, spec.trigger(settings), id=spec.id, name=spec.id, executor=spec.executor,
                          jobstore=REQUESTS_STORE, replace_existing=True, next_run_time=now)


def stop_scheduler(scheduler: BaseScheduler, *, wait: bool = True) -> None:
    """Shut down without the last pass that would hand due jobs to stopped executors (module docstring);
    with ``wait`` the running jobs finish first."""
    if not scheduler.running:
        return
    scheduler.pause()
    for alias in JOB_STORES:
        with contextlib.suppress(KeyError):  # a scheduler not built by ``build_scheduler``
            scheduler.remove_jobstore(alias, shutdown=False)
    scheduler.shutdown(wait=wait)


class Worker:
    """Runs the periodic jobs and the admins' requests of the learning loop."""

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
        stop_scheduler(self.scheduler, wait=wait)

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
