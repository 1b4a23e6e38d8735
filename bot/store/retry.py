"""The one retry policy for transient database errors on the bot's request path.

The database may be away for a while: PostgreSQL restarted (connections cut, then refused
until it is up again) or SQLite locked by another writer. A *unit of work* is a function that
opens its own session, does one whole transaction and returns; ``RetryPolicy.run`` runs it
again from its start after a transient error, with exponential backoff (and jitter), until the
budget (``SNEAKERBOT_DB_RETRY_SECONDS``, default 30 s) is spent, then raises
``DatabaseUnavailable``. A failed attempt rolled back, so a unit is retried whole; the unit gets
the attempt number (1, 2, ...) so that on a retry it can first look for what an attempt whose
COMMIT reached the server but whose answer was lost already stored, and never insert twice.

Only transient errors are retried: a dropped or refused connection (SQLAlchemy's
``connection_invalidated``, psycopg's ``OperationalError``: server shut down, starting up,
connection refused, serialization failure, deadlock), SQLite's "database is locked" / busy, and
a pool checkout that timed out. Everything else (integrity errors, bugs) goes straight up.

The policy sleeps, so it runs on worker threads only: the services are called from handlers
through ``asyncio.to_thread`` or the identify thread pool. Called on an event loop's thread it
makes one attempt and never sleeps.

When one unit has spent its whole budget the database is taken to be *down*: later units get a
short budget (``outage_budget_s``) so users hear "try again in a moment" at once instead of
each waiting the full budget, until any unit succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BUDGET_S = 30.0  # SNEAKERBOT_DB_RETRY_SECONDS
FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0
OUTAGE_BUDGET_S = 2.0  # the budget while the database is known to be down
SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes; extended ones carry them in the low byte)
SQLITE_BUSY_WORDS = ("database is locked", "database table is locked", "database is busy")


class DatabaseUnavailable(Exception):
    """The database stayed away longer than the retry budget; the unit stored nothing."""

    def __init__(self, what: str, waited_s: float, attempts: int) -> None:
        super().__init__(f"{what}: database unavailable after {attempts} attempts in {waited_s:.1f} s")
        self.what = what
        self.waited_s = waited_s
        self.attempts = attempts


def _sqlite_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in SQLITE_BUSY_CODES:
        return True
    message = str(error).lower()
    return any(words in message for words in SQLITE_BUSY_WORDS)


def _psycopg_operational(error: BaseException) -> bool:
    """psycopg 3 (or psycopg2) says the server or the connection failed, not the statement."""
    module = type(error).__module__.split(".")[0]
    if module not in ("psycopg", "psycopg2"):
        return False
    return any(cls.__name__ == "OperationalError" for cls in type(error).__mro__)


def is_transient(error: BaseException) -> bool:
    """Whether running the same transaction again later may succeed."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        original = error.orig
        if isinstance(original, sqlite3.Error):
            return isinstance(original, sqlite3.OperationalError) and _sqlite_busy(original)
        return isinstance(error, sa_exc.OperationalError) or (
            original is not None and _psycopg_operational(original))
    # raised outside SQLAlchemy's wrapping (e.g. from a connect event)
    if isinstance(error, sqlite3.OperationalError):
        return _sqlite_busy(error)
    return _psycopg_operational(error)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _summary(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@dataclass
class RetryPolicy:
    """Bounded retries with exponential backoff for whole units of work."""

    budget_s: float = DEFAULT_BUDGET_S
    first_delay_s: float = FIRST_DELAY_S
    max_delay_s: float = MAX_DELAY_S
    outage_budget_s: float = OUTAGE_BUDGET_S
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    down: bool = field(default=False, init=False)  # a unit spent its whole budget and none succeeded since
    failures: Counter[str] = field(default_factory=Counter, init=False)  # transient errors seen, per unit name
    retried: int = field(default=0, init=False)  # units that succeeded after at least one failure
    exhausted: int = field(default=0, init=False)  # units given up on
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def run(self, what: str, unit: Callable[[int], T], *, read_only: bool = False) -> T:
        """``unit(attempt)``, again from its start after a transient error, within the budget.

        Raises ``DatabaseUnavailable`` (from the last error) once the budget is spent. A
        ``read_only`` unit that succeeds does not end an outage: SQLite lets readers in while
        another writer holds the lock, so only a write proves the database is back.
        """
        budget = min(self.budget_s, self.outage_budget_s) if self.down else self.budget_s
        if _on_event_loop():  # a sleep here would stop every other update: one attempt only
            budget = 0.0
        started = self.clock()
        delay = self.first_delay_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = unit(attempt)
            except Exception as error:
                if not is_transient(error):
                    raise
                waited = self.clock() - started
                with self._lock:
                    self.failures[what] += 1
                if waited >= budget:
                    with self._lock:
                        self.down, self.exhausted = True, self.exhausted + 1
                    log.error("database unavailable: gave up on %s after %d attempts in %.1f s (%s)",
                              what, attempt, waited, _summary(error))
                    raise DatabaseUnavailable(what, waited, attempt) from error
                if attempt == 1:
                    log.warning("database unavailable during %s (%s): retrying for up to %.0f s",
                                what, _summary(error), budget)
                self.sleep(min(delay * random.uniform(0.5, 1.0), budget - waited))
                delay = min(delay * 2, self.max_delay_s)
                continue
            if attempt > 1 or (self.down and not read_only):
                with self._lock:
                    self.down = self.down and read_only
                    self.retried += attempt > 1
                log.warning("database back: %s done after %d attempts in %.1f s",
                            what, attempt, self.clock() - started)
            return result


_POLICIES: weakref.WeakKeyDictionary[Engine, RetryPolicy] = weakref.WeakKeyDictionary()
_POLICIES_LOCK = threading.Lock()


def attach_policy(engine: Engine, policy: RetryPolicy) -> RetryPolicy:
    """Make ``policy`` the one every service on ``engine`` uses (``bot.store.db.make_engine`` does)."""
    with _POLICIES_LOCK:
        _POLICIES[engine] = policy
    return policy


def retry_policy(sessions: Any) -> RetryPolicy:
    """The policy of the engine behind a ``sessionmaker`` (or an engine); a default one if none was attached.

    One policy per engine, so all services share what they learn about an outage.
    """
    engine = sessions if isinstance(sessions, Engine) else getattr(sessions, "kw", {}).get("bind")
    if not isinstance(engine, Engine):
        return RetryPolicy()
    with _POLICIES_LOCK:
        policy = _POLICIES.get(engine)
        if policy is None:
            policy = _POLICIES[engine] = RetryPolicy()
        return policy

