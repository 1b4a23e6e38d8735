"""``sneakerbot scrape``: gather images for one label, with a progress bar and the run report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from bot.settings import Settings
from scraper.sources import available_sources

if TYPE_CHECKING:  # imported when the command runs: every other command (healthcheck: a Docker probe) starts fast
    from tqdm import tqdm

    from scraper.report import ScrapeReport


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``scrape`` to the parser."""
    parser = sub.add_parser("scrape", help="download, verify and file images for one sneaker label")
    parser.add_argument("label", help="class label, e.g. air_jordan_11 (the folder name under images/)")
    parser.add_argument("--query", action="append", help="search query (repeatable); default: the catalogue's")
    parser.add_argument("--max", type=int, default=None, help="search results to process (default: settings)")
    parser.add_argument(
        "--source",
        action="append",
        choices=available_sources(),
        help="source to use (repeat to give a fallback order); default: settings' order",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--no-footwear-check", action="store_true", help="store every image, review none")
    parser.set_defaults(func=cmd_scrape)


def cmd_scrape(args: argparse.Namespace, settings: Settings) -> int:
    """Run one scrape; exit 1 when nothing was found because every source was blocked or failed."""
    settings.ensure_dirs()
    from tqdm import tqdm

    from bot.scraping import footwear_classifier, run_scrape, seed_catalogue
    from bot.store.db import init_db, session_factory

    engine = init_db(settings.db_url)
    try:
        sessions = session_factory(engine)
        seed_catalogue(sessions)
        classifier = None if args.no_footwear_check else footwear_classifier(settings)
        with tqdm(desc=f"scrape {args.label}", unit="img", file=sys.stderr, disable=None) as bar:
            report = run_scrape(
                settings,
                sessions,
                args.label,
                queries=args.query,
                max_items=args.max,
                sources=args.source,
                classifier=classifier,
                progress=lambda r: _advance(bar, r),
            )
    finally:
        engine.dispose()
    print(json.dumps(report.to_dict()) if args.json else report.format_text())
    return 1 if report.found == 0 and _all_sources_down(report) else 0


def _advance(bar: tqdm, report: ScrapeReport) -> None:
    """Move the bar to the number of processed items once the total is known."""
    bar.total = report.found
    bar.update(report.processed - bar.n)
    bar.set_postfix(stored=report.stored, failed=sum(report.failed.values()), refresh=False)


def _all_sources_down(report: ScrapeReport) -> bool:
    """True when every tried source was blocked or failed."""
    tried = [s for s in report.sources.values() if s.tried]
    return bool(tried) and all(s.blocked or s.error for s in tried)
