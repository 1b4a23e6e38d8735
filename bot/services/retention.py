"""Retention: photos nobody gave feedback on are deleted after ``retention_days``.

Filed photos (confirmed or corrected) live on under ``images/``; their pending copy goes
too. A pending file shared by a newer prediction of the same photo is kept for it.

One purge is one unit of work under the engine's retry policy (``bot.store.retry``); files
are deleted only after the rows that pointed at them were committed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from bot.store.repositories import PredictionRepository, RateEventRepository, UpdateClaimRepository
from bot.store.retry import retry_policy

log = logging.getLogger(__name__)


class RetentionService:
    """Deletes expired pending photos, old rate-limit events and old update claims."""

    def __init__(self, sessions: sessionmaker[Session], retention_days: int) -> None:
        self.sessions = sessions
        self.retention = timedelta(days=retention_days)
        self.retry = retry_policy(sessions)

    def purge(self, now: datetime | None = None) -> int:
        """Delete what has expired by ``now``; returns how many photos went."""
        now = now or datetime.now(UTC)
        cutoff = now - self.retention

        def purge(_attempt: int) -> set[str]:
            unneeded: set[str] = set()
            with self.sessions.begin() as session:
                predictions = PredictionRepository(session)
                for prediction in predictions.with_pending_photo_before(cutoff):
                    path = prediction.pending_path or ""
                    prediction.pending_path = None
                    if not predictions.waits_on(path, since=cutoff):  # a younger answer to the same photo
                        unneeded.add(path)
                RateEventRepository(session).purge_before(now - timedelta(days=1))
                UpdateClaimRepository(session).purge_before(now - timedelta(days=1))  # Telegram keeps updates 24 h
            return unneeded

        deleted = 0
        for path in self.retry.run("retention", purge):
            if path and Path(path).exists():
                Path(path).unlink(missing_ok=True)
                deleted += 1
        if deleted:
            log.info("retention deleted %d pending photos", deleted)
        return deleted
