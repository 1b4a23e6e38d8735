"""``sneakerbot backup DIR`` and ``sneakerbot restore DIR [--force]``: wiring only, the logic is in
``bot.services.backup``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``backup`` and ``restore``."""
    backup = sub.add_parser(
        "backup", help="copy the database, images, models and pending photos into DIR (safe while the bot runs)")
    backup.add_argument("dir", type=Path, help="a new or empty directory")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser(
        "restore", help="restore a backup into the configured (empty) data dir and database, then migrate")
    restore.add_argument("dir", type=Path, help="a directory written by `sneakerbot backup`")
    restore.add_argument("--force", action="store_true",
                         help="restore even though the data dir or the database already holds data")
    restore.set_defaults(func=cmd_restore)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    """Write a backup and print its summary; exit 1 with the reason when it cannot be done."""
    from bot.services.backup import BackupError, backup

    try:
        report = backup(settings, args.dir, on_step=lambda step: print(f"  {step} done", file=sys.stderr))
    except BackupError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    """Restore a backup and print its summary; exit 1 with the reason when it is refused."""
    from bot.services.backup import BackupError, restore

    try:
        report = restore(settings, args.dir, force=args.force)
    except BackupError as exc:
        print(f"restore refused: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
