"""Per-user photo rate limit, kept in the database so a restart does not reset it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from bot.store.repositories import RateEventRepository
from bot.store.retry import DatabaseUnavailable, retry_policy

log = logging.getLogger(__name__)

WINDOW = timedelta(minutes=1)


class RateLimiter:
    """At most ``per_minute`` photos per user in any sliding minute."""

    def __init__(self, sessions: sessionmaker[Session], per_minute: int) -> None:
        self.sessions = sessions
        self.per_minute = per_minute
        self.retry = retry_policy(sessions)

    def allow(self, user_id: int) -> bool:
        """Count this photo if the user is under the limit; False when they are not.

        Retried while the database is away (``bot.store.retry``). When it stays away past the
        budget the photo is let through uncounted: identifying it needs the database too, and
        that step answers "try again in a moment" (a limit that cannot be checked is no reason
        for silence).
        """
        if self.per_minute <= 0:
            return True
        now = datetime.now(UTC)  # also this photo's key: a retry looks for it first

        def count(attempt: int) -> bool:
            with self.sessions.begin() as session:  # check and count in one statement: one round trip
                events = RateEventRepository(session)
                if attempt > 1 and events.recorded_at(user_id, now):  # the lost COMMIT went through
                    return True
                return events.add_if_fewer_than(self.per_minute, user_id, now, since=now - WINDOW)

        try:
            return self.retry.run("rate limit", count)
        except DatabaseUnavailable:
            log.warning("rate limit of user %s not checked: the database is unavailable", user_id)
            return True
