"""Each Telegram update handled once across bot replicas (webhook mode).

Telegram POSTs an update again when the webhook's answer did not reach it (a timeout, a dropped
connection); behind a load-balancing proxy the second delivery may land on another replica while
the first is still answering it. Both would answer. So in webhook mode every update is first
*claimed* in the shared database (``update_claims``): the replica that inserts the row handles
it and marks it done; any other delivery of it is dropped, the webhook answers 200 all the same.
A claim left unfinished past ``lease_s`` (its replica died in the middle) is taken over.

Long polling needs none of it: one process polls, and ``getUpdates``' offset hands each update
out once (a redelivery after a crash is answered from the stored prediction, ``IdentifyService``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker
from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, TypeHandler

from bot.store.repositories import UpdateClaimRepository
from bot.store.retry import DatabaseUnavailable, retry_policy

log = logging.getLogger(__name__)

CLAIM_GROUP = -3  # before everything, the metrics' count included (a dropped duplicate is not "received")
DONE_GROUP = 1000  # after every handler


def instance_name() -> str:
    """This process among the replicas: host, pid and a random part (pids repeat across containers)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class UpdateClaims:
    """Claims updates for this process; dropped duplicates are counted in ``duplicates``."""

    def __init__(self, sessions: sessionmaker[Session], *, lease_s: float = 60.0, instance: str | None = None) -> None:
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_s)
        self.instance = instance or instance_name()
        self.retry = retry_policy(sessions)
        self.duplicates = 0

    def claim(self, update_id: int) -> bool:
        """True when this process should handle the update.

        When the database stays away past the retry budget the update is handled anyway: a
        possible second answer is better than none (the handlers then say "try again" if they
        need the database too).
        """
        def take(_attempt: int) -> str:
            now = datetime.now(UTC)
            with self.sessions.begin() as session:
                return UpdateClaimRepository(session).claim(update_id, self.instance, now,
                                                            lease_before=now - self.lease)

        try:
            outcome = self.retry.run("claim an update", take)
        except DatabaseUnavailable:
            log.warning("update %s handled unclaimed: the database is unavailable", update_id)
            return True
        if outcome != UpdateClaimRepository.MINE:
            self.duplicates += 1
            log.info("update %s not handled here: %s", update_id, outcome)
        return outcome == UpdateClaimRepository.MINE

    def finish(self, update_id: int) -> None:
        """Mark the update handled (a failure only leaves it to the lease)."""
        def mark(_attempt: int) -> None:
            with self.sessions.begin() as session:
                UpdateClaimRepository(session).finish(update_id, self.instance, datetime.now(UTC))

        try:
            self.retry.run("finish an update", mark)
        except DatabaseUnavailable:
            log.warning("update %s handled but not marked so: the database is unavailable", update_id)

    # --- PTB wiring ---------------------------------------------------------------
    def install(self, application: Application) -> None:
        """Claim every update before any handler, and mark it done after all of them."""
        application.add_handler(TypeHandler(Update, self._on_update), group=CLAIM_GROUP)
        application.add_handler(TypeHandler(Update, self._on_handled), group=DONE_GROUP)

    async def _on_update(self, update: Update, context: object) -> None:
        if not await asyncio.to_thread(self.claim, update.update_id):
            raise ApplicationHandlerStop

    async def _on_handled(self, update: Update, context: object) -> None:
        await asyncio.to_thread(self.finish, update.update_id)
