"""Retrain jobs: when enough corrections arrived, nightly, and on an admin's request.

All three run on the worker's one-thread training executor, so they never overlap;
each returns early when there is nothing to do (idempotent).
"""

from __future__ import annotations

import time

from bot.jobs.context import JobContext, run_job
from bot.services.retraining import Retrainer, RetrainOutcome, count_new_corrections

RETRAIN_NOW_FUNC = "bot.jobs.retrain:retrain_now"


def retrain_if_due() -> str | None:
    """Retrain when at least ``retrain_min_corrections`` corrections are unused."""
    return run_job("retrain_check", _retrain_if_due)


def retrain_nightly() -> str | None:
    """The scheduled retrain: only when there are training images no model has seen."""
    return run_job(
        "retrain_nightly",
        lambda ctx: retrainer(ctx).retrain(only_if_new_data=True, reason="nightly").summary(),
    )


def retrain_now(notify_chat_ids: list[int] | None = None) -> str | None:
    """An admin's ``/retrain``: train now, tell the admins each stage and then old vs new metrics."""

    def body(ctx: JobContext) -> str:
        try:
            progress = RetrainProgress(ctx, notify_chat_ids or [])
            outcome = retrainer(ctx, progress).retrain(only_if_new_data=False, reason="requested by an admin")
        except Exception as exc:
            for chat_id in notify_chat_ids or []:
                ctx.notify(chat_id, f"Retrain failed: {exc}")
            raise
        for chat_id in notify_chat_ids or []:
            ctx.notify(chat_id, retrain_report(outcome))
        return outcome.summary()

    return run_job("retrain_now", body)


def _retrain_if_due(ctx: JobContext) -> str | None:
    pending = count_new_corrections(ctx.sessions)
    if pending < ctx.settings.retrain_min_corrections:
        return None
    outcome = retrainer(ctx).retrain(
        only_if_new_data=False, reason=f"{pending} new corrections"
    )
    return outcome.summary()


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
