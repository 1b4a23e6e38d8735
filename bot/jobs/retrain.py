"""Retrain jobs: when enough corrections arrived, nightly, and on an admin's request.

All three run on the worker's one-thread training executor, so they never overlap;
each returns early when there is nothing to do (idempotent).

A failed run (a full disk, say) changes nothing that is served and leaves no half-made
files (``bot.services.retraining``); its ``job_runs`` row says why ("failed: the disk is
full: ..."). The admins who asked for it (``/retrain``) are told at once; a failure of an
automatic run is told to every admin, once until a run of that job succeeds again, and
``retrain_check`` waits ``RETRY_AFTER_FAILURE_CHECKS`` check intervals before it tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from bot.jobs.context import JobContext, describe_failure, notify_admins, run_job
from bot.services.retraining import Retrainer, RetrainOutcome, count_new_corrections
from bot.store.models import utcnow

log = logging.getLogger(__name__)

RETRAIN_NOW_FUNC = "bot.jobs.retrain:retrain_now"
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


def retrain_now(notify_chat_ids: list[int] | None = None) -> str | None:
    """An admin's ``/retrain``: train now, tell the admins each stage and then old vs new metrics."""

    def body(ctx: JobContext) -> str:
        try:
            progress = RetrainProgress(ctx, notify_chat_ids or [])
            outcome = retrainer(ctx, progress).retrain(only_if_new_data=False, reason="requested by an admin")
        except Exception as exc:
            for chat_id in notify_chat_ids or []:
                ctx.notify(chat_id, failure_report(ctx, exc))
            raise
        for chat_id in notify_chat_ids or []:
            ctx.notify(chat_id, retrain_report(outcome))
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
                    notify_admins(ctx.sessions, ctx.settings.admin_ids, f"{ctx.job_id}: {failure_report(ctx, exc)}")
            except Exception:  # the job's own failure is what run_job records
                log.exception("%s: could not tell the admins", ctx.job_id)
            raise

    return run


def failure_report(ctx: JobContext, exc: BaseException) -> str:
    """The admins' message for a failed retrain: why, and that the served model did not change."""
    try:
        current = ctx.registry.current_version()
    except Exception:  # the reason matters more than this detail
        current = None
    serving = f" Version {current} still answers." if current is not None else ""
    return f"Retrain failed: {describe_failure(exc)}.{serving}"


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
        from bot.render_admin import retrain_stage

        text = retrain_stage(stage, done, total)
        now = time.monotonic()
        if stage != self.stage:
            self.stage = stage
            for chat_id in self.chat_ids:
                self.ctx.notify(chat_id, text)
        elif now - self.last < self.every_s and done < total:
            return
        self.last = now
        self.ctx.report(text)


def retrain_report(outcome: RetrainOutcome) -> str:
    """The admin's message after ``/retrain``: old vs new metrics and the decision."""
    from bot.render_admin import retrain_result

    return retrain_result(outcome)
