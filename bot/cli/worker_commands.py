"""``sneakerbot worker``: runs the learning loop's jobs (retrain, scrape) until stopped."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from bot.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` sub-command."""
    parser = sub.add_parser(
        "worker",
        help="run the scheduled jobs: retrain on corrections and nightly, scrape the most-corrected classes",
    )
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Prepare the database and registry, clear what a stopped run left, then run the scheduler until SIGINT/SIGTERM.

    With ``SNEAKERBOT_HEALTH_PORT`` set, ``/healthz``, ``/readyz`` and ``/metrics`` are served
    from as soon as the database is migrated (``bot.jobs.health``): /readyz says "scheduler not
    running" through the recovery and the starter install, and answers 200 once jobs run.
    """
    from bot.jobs.health import serve_worker_health
    from bot.jobs.scheduler import Worker
    from bot.store.db import init_db

    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # one line per check is noise
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    worker = Worker(settings, engine)
    health = serve_worker_health(settings, engine)
    if health is not None:
        health.watch(worker.scheduler)
    try:
        _prepare(settings, engine)
        log.info("worker: database %s, models in %s", engine.url.render_as_string(hide_password=True),
                 settings.models_path)
        worker.run_forever()
    finally:
        if health is not None:
            health.stop()
    return 0


def _prepare(settings: Settings, engine: Engine) -> None:
    """Clear what a stopped run left and install the starter model when none is.

    A worker killed mid-retrain (SIGKILL, a crash, a power cut) leaves an unfinished
    ``job_runs`` row, maybe a ``candidate`` version and hidden half-written dirs under the
    models path; none of it is ever served. They are cleared here, before any job runs, and
    the admins are told (the one who asked for the retrain waits for an answer).
    """
    from bot.jobs.context import close_interrupted_runs, notify_admins
    from bot.registry import BadModelDir, registry_for
    from bot.services.retraining import recover_interrupted_retrains
    from bot.store.db import session_factory
    from bot.store.models import NotificationKind

    sessions = session_factory(engine)
    registry = registry_for(settings, sessions)
    close_interrupted_runs(sessions)
    recovery = recover_interrupted_retrains(sessions, registry)
    if recovery:
        current = registry.current_version()
        notify_admins(sessions, settings.admin_ids, NotificationKind.WORKER_RECOVERED,
                      {"summary": recovery.summary(), "current_version": current})
    try:
        registry.install_starter(settings.starter_model_dir)
    except BadModelDir as exc:
        log.warning("no model installed yet (%s); retrains wait for one", exc)
