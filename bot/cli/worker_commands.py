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
    """Prepare the database and registry, then run the scheduler until SIGINT/SIGTERM."""
    from bot.jobs.context import close_interrupted_runs, registry_for
    from bot.jobs.scheduler import Worker
    from bot.registry import BadModelDir
    from bot.store.db import init_db, session_factory

    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # one line per check is noise
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    close_interrupted_runs(session_factory(engine))
    try:
        registry_for(settings, session_factory(engine)).install_starter(settings.starter_model_dir)
    except BadModelDir as exc:
        log.warning("no model installed yet (%s); retrains wait for one", exc)
    log.info("worker: database %s, models in %s", engine.url.render_as_string(hide_password=True), settings.models_path)
    Worker(settings, engine).run_forever()
    return 0
