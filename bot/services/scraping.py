"""Scraping for the learning loop: which classes need images, the daily budget, one run.

The budget counts downloads: every scrape run's report says how many images it
downloaded, and the runs started today (UTC) may download ``scrape_daily_budget``
in total, however they were started.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from bot.settings import Settings
from bot.store.repositories import FeedbackRepository, ScrapeRunRepository

if TYPE_CHECKING:
    from scraper.report import ScrapeReport


def most_corrected_labels(sessions: sessionmaker[Session], *, limit: int, days: int = 7) -> list[str]:
    """The labels users corrected predictions to most often in the last ``days``."""
    since = datetime.now(UTC) - timedelta(days=days)
    with sessions() as session:
        return FeedbackRepository(session).most_corrected_labels(since, limit)


def budget_left_today(sessions: sessionmaker[Session], daily_budget: int) -> int:
    """Downloads still allowed today."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with sessions() as session:
        used = ScrapeRunRepository(session).downloads_since(midnight)
    return max(0, daily_budget - used)


def scrape_label(settings: Settings, sessions: sessionmaker[Session], label: str, max_items: int) -> ScrapeReport:
    """One scraper run for ``label`` into the images table (queries from the catalogue)."""
    from bot.scraping import footwear_classifier, run_scrape

    return run_scrape(settings, sessions, label, max_items=max_items, classifier=footwear_classifier(settings))


def scrape_payload(report: ScrapeReport) -> dict[str, Any]:
    """What the admin is told of a run, as plain values (``bot.render_admin.scrape_summary`` words it)."""
    return {"label": report.label, "found": report.found, "stored": report.stored,
            "duplicates": report.duplicates, "rejected": report.rejected,
            "failed": sum(report.failed.values()), "blocked": report.blocked}
