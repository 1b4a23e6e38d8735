"""The ``sneakerbot`` command: wires sub-commands, holds no logic of its own.

Each area registers its sub-commands from its own module:
``ml_commands`` (train, predict, eval), ``scrape_commands`` (scrape),
``run_commands`` (run, playground), ``worker_commands`` (worker), ``backup_commands``
(backup, restore), ``health_commands`` (healthcheck).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bot.cli import backup_commands, health_commands, ml_commands, run_commands, scrape_commands, worker_commands
from bot.logging_setup import configure_logging, install_token_redaction
from bot.settings import get_settings

COMMAND_MODULES = (ml_commands, scrape_commands, run_commands, worker_commands, backup_commands, health_commands)


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
    settings = get_settings()
    configure_logging(settings.log_format, logging.DEBUG if args.verbose else settings.log_level)
    install_token_redaction(settings.telegram_bot_token)  # the log filter: no bot token in any log line
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
