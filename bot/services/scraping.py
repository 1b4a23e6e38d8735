"""Scraping for the learning loop: which classes need images, the daily budget, one run.

The budget counts downloads: every scrape run's report says how many images it
downloaded, and the runs started today (UTC) may download ``scrape_daily_budget``
in total, however they were started.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.store.models import Feedback, ScrapeRun

if TYPE_CHECKING:
    from bot.jobs.context import JobContext
    from scraper.report import ScrapeReport

CORRECTION = "wrong"


def most_corrected_labels(sessions: sessionmaker[Session], *, limit: int, days: int = 7) -> list[str]:
    """The labels users corrected predictions to most often in the last ``days``."""
    since = datetime.now(timezone.utc) - timedelta(days=days)
    with sessions() as session:
        rows = session.execute(
            select(Feedback.label, func.count())
            .where(Feedback.verdict == CORRECTION, Feedback.label.is_not(None), Feedback.created_at >= since)
            .group_by(Feedback.label)
            .order_by(func.count().desc(), Feedback.label)
            .limit(limit)
        ).all()
    return [label for label, _count in rows]


def budget_left_today(sessions: sessionmaker[Session], daily_budget: int) -> int:
    """Downloads still allowed today."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with sessions() as session:
        reports = session.scalars(select(ScrapeRun.report).where(ScrapeRun.started_at >= midnight))
        used = sum(int((report or {}).get("downloaded", 0)) for report in reports)
    return max(0, daily_budget - used)


def scrape_label(ctx: JobContext, label: str, max_items: int) -> ScrapeReport:
    """One scraper run for ``label`` into the images table (queries from the catalogue)."""
    from bot.scraping import footwear_classifier, run_scrape

    return run_scrape(ctx.settings, ctx.sessions, label, max_items=max_items,
                      classifier=footwear_classifier(ctx.settings))
