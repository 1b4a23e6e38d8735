"""``sneakerbot worker``: runs the learning loop's jobs (retrain, scrape) until stopped."""

from __future__ import annotations

import argparse
import logging

from bot.settings import Settings

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

    A worker killed mid-retrain (SIGKILL, a crash, a power cut) leaves an unfinished
    ``job_runs`` row, maybe a ``candidate`` version and hidden half-written dirs under the
    models path; none of it is ever served. They are cleared here, before any job runs, and
    the admins are told (the one who asked for the retrain waits for an answer).
    """
    from bot.jobs.context import close_interrupted_runs, notify_admins, registry_for
    from bot.jobs.scheduler import Worker
    from bot.registry import BadModelDir
    from bot.services.retraining import recover_interrupted_retrains
    from bot.store.db import init_db, session_factory

    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # one line per check is noise
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    sessions = session_factory(engine)
    registry = registry_for(settings, sessions)
    close_interrupted_runs(sessions)
    recovery = recover_interrupted_retrains(sessions, registry)
    if recovery:
        current = registry.current_version()
        notify_admins(sessions, settings.admin_ids,
                      f"The worker restarted after it stopped in the middle of a retrain: {recovery.summary()}. "
                      + (f"Version {current} still answers; " if current is not None else "")
                      + "the next retrain starts clean.")
    try:
        registry.install_starter(settings.starter_model_dir)
    except BadModelDir as exc:
        log.warning("no model installed yet (%s); retrains wait for one", exc)
    log.info("worker: database %s, models in %s", engine.url.render_as_string(hide_password=True), settings.models_path)
    Worker(settings, engine).run_forever()
    return 0
