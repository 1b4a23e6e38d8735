"""Retrain jobs: when enough corrections arrived, nightly, and on an admin's request.

All of them run on the worker's one-thread training executor, so they never overlap;
each returns early when there is nothing to do (idempotent). ``take_retrain_requests``
is the interval job that reads the admins' ``/retrain`` requests (``admin_requests`` rows)
and runs ``retrain_now`` for them.

A failed run (a full disk, say) changes nothing that is served and leaves no half-made
files (``bot.services.retraining``); its ``job_runs`` row says why ("failed: the disk is
full: ..."). The admins who asked for it (``/retrain``) are told at once; a failure of an
automatic run is told to every admin, once until a run of that job succeeds again, and
``retrain_check`` waits ``RETRY_AFTER_FAILURE_CHECKS`` check intervals before it tries again.
What the admins are told goes to the outbox as values; the bot words it (``bot.render_admin``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot.jobs.context import JobContext, describe_failure, notify_admins, run_job
from bot.services.retraining import Retrainer, count_new_corrections, stage_line
from bot.store.models import NotificationKind, RequestKind, utcnow

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_CHECKS = 20  # retrain_check after a failed run: 20 intervals (10 min by default)
FAILED = "failed: "


def retrain_if_due() -> str | None:
    """Retrain when at least ``retrain_min_corrections`` corrections are unused."""
    return run_job("retrain_check", _told_on_failure(_retrain_if_due))


def retrain_nightly() -> str | None:
    """The scheduled retrain: only when there are training images no model has seen."""
    return run_job(
        "retrain_nightly",
        _told_on_failure(lambda ctx: retrainer(ctx).retrain(only_if_new_data=True, reason="nightly").summary()),
    )


def take_retrain_requests() -> str | None:
    """Run the retrain admins asked for, once for every request waiting; None when none waits."""
    with JobContext.open() as ctx:
        request = ctx.take_request(RequestKind.RETRAIN)
    if request is None:
        return None
    return retrain_now(notify_chat_ids=request.chat_ids)


def retrain_now(notify_chat_ids: list[int] | None = None) -> str | None:
    """An admin's ``/retrain``: train now, tell the admins each stage and then old vs new metrics."""

    def body(ctx: JobContext) -> str:
        try:
            progress = RetrainProgress(ctx, notify_chat_ids or [])
            outcome = retrainer(ctx, progress).retrain(only_if_new_data=False, reason="requested by an admin")
        except Exception as exc:
            for chat_id in notify_chat_ids or []:
                ctx.notify(chat_id, NotificationKind.RETRAIN_FAILED, failure_payload(ctx, exc))
            raise
        for chat_id in notify_chat_ids or []:
            ctx.notify(chat_id, NotificationKind.RETRAIN_RESULT, outcome.as_payload())
        return outcome.summary()

    return run_job("retrain_now", body)


def _retrain_if_due(ctx: JobContext) -> str | None:
    pending = count_new_corrections(ctx.sessions)
    if pending < ctx.settings.retrain_min_corrections:
        return None
    last = ctx.last_run()
    wait = timedelta(seconds=RETRY_AFTER_FAILURE_CHECKS * ctx.settings.retrain_check_seconds)
    if last is not None and last[0].startswith(FAILED) and utcnow() - last[1] < wait:
        return None  # the last try failed a moment ago (a full disk?): do not train every 30 s in vain
    outcome = retrainer(ctx).retrain(
        only_if_new_data=False, reason=f"{pending} new corrections"
    )
    return outcome.summary()


def _told_on_failure(body: Callable[[JobContext], str | None]) -> Callable[[JobContext], str | None]:
    """An automatic run's failure goes to every admin, once: not again while the job keeps failing."""

    def run(ctx: JobContext) -> str | None:
        try:
            return body(ctx)
        except Exception as exc:
            try:
                last = ctx.last_run()
                if last is None or not last[0].startswith(FAILED):
                    notify_admins(ctx.sessions, ctx.settings.admin_ids, NotificationKind.RETRAIN_FAILED,
                                  {**failure_payload(ctx, exc), "job": ctx.job_id})
            except Exception:  # the job's own failure is what run_job records
                log.exception("%s: could not tell the admins", ctx.job_id)
            raise

    return run


def failure_payload(ctx: JobContext, exc: BaseException) -> dict[str, Any]:
    """What the admins are told of a failed retrain: why, and which version still answers."""
    try:
        current = ctx.registry.current_version()
    except Exception:  # the reason matters more than this detail
        current = None
    return {"reason": describe_failure(exc), "current_version": current, "job": None}


def retrainer(ctx: JobContext, progress: RetrainProgress | None = None) -> Retrainer:
    """The retrainer as the settings configure it; its progress shows in ``/status``."""
    return Retrainer(
        ctx.sessions,
        ctx.registry,
        data_dir=ctx.settings.data_dir,
        cache_dir=ctx.settings.cache_path,
        steps=ctx.settings.retrain_steps,
        base_dataset_dir=ctx.settings.base_dataset_dir,
        progress=progress or RetrainProgress(ctx, []),
    )


class RetrainProgress:
    """Turns a retrain's (stage, done, total) into a ``/status`` line and a message per stage.

    The ``job_runs`` row is updated at most every ``every_s`` seconds (and at a stage's end);
    the admins who asked get one message when a stage starts, not a stream.
    """

    def __init__(self, ctx: JobContext, chat_ids: list[int], every_s: float = 2.0) -> None:
        self.ctx, self.chat_ids, self.every_s = ctx, chat_ids, every_s
        self.stage: str | None = None
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage = stage
            for chat_id in self.chat_ids:
                self.ctx.notify(chat_id, NotificationKind.RETRAIN_STAGE,
                                {"stage": stage, "done": done, "total": total})
        elif now - self.last < self.every_s and done < total:
            return
        self.last = now
        self.ctx.report(stage_line(stage, done, total))
