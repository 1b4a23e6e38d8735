"""Per-user photo rate limit, kept in the database so a restart does not reset it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import Session, sessionmaker

from bot.store.repositories import RateEventRepository

WINDOW = timedelta(minutes=1)


class RateLimiter:
    """At most ``per_minute`` photos per user in any sliding minute."""

    def __init__(self, sessions: sessionmaker[Session], per_minute: int) -> None:
        self.sessions = sessions
        self.per_minute = per_minute

    def allow(self, user_id: int) -> bool:
        """Count this photo if the user is under the limit; False when they are not."""
        if self.per_minute <= 0:
            return True
        now = datetime.now(timezone.utc)
        with self.sessions.begin() as session:  # check and count in one statement: one round trip
            return RateEventRepository(session).add_if_fewer_than(self.per_minute, user_id, now, since=now - WINDOW)
