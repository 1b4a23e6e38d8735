"""The ``sneakerbot`` command: wires sub-commands, holds no logic of its own.

Each area registers its sub-commands from its own module:
``ml_commands`` (train, predict, eval), ``scrape_commands`` (scrape),
``run_commands`` (run, worker, playground).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bot.cli import backup_commands, ml_commands, run_commands, scrape_commands, worker_commands
from bot.settings import get_settings

COMMAND_MODULES = (ml_commands, scrape_commands, run_commands, worker_commands, backup_commands)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="sneakerbot", description="Identify sneakers in photos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the settings once and run the command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Libraries that log every request or every job run at INFO would drown the bot's own log.
    for noisy in ("httpx", "apscheduler.executors", "apscheduler.scheduler", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()
    from bot.logging_setup import install_token_redaction  # the log filter: no bot token in any log line
    install_token_redaction(settings.telegram_bot_token)
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
