"""Scrape jobs: top up the classes users correct most, within a daily download budget.

``scrape_daily`` picks the labels users corrected to most often in the last week
(the model's weak spots) and shares what is left of today's budget between them;
``scrape_now`` is an admin's ``/scrape`` or ``/addclass`` (which retrains afterwards).
"""

from __future__ import annotations

from bot.jobs.context import JobContext, run_job
from bot.render_admin import scrape_summary
from bot.services.scraping import budget_left_today, most_corrected_labels, scrape_label

SCRAPE_NOW_FUNC = "bot.jobs.scrape:scrape_now"


def scrape_daily() -> str | None:
    """The scheduled scrape of the most-corrected classes."""
    return run_job("scrape_daily", _scrape_daily)


def scrape_now(
    label: str, max_items: int, notify_chat_ids: list[int] | None = None, then_retrain: bool = False
) -> str | None:
    """An admin's request: scrape ``label`` now (budget permitting), optionally retrain after."""

    def body(ctx: JobContext) -> str:
        allowed = min(max_items, budget_left_today(ctx.sessions, ctx.settings.scrape_daily_budget))
        if allowed <= 0:
            text = f"scrape of {label} skipped: today's budget of {ctx.settings.scrape_daily_budget} is used up"
        else:
            report = scrape_label(ctx, label, allowed)
            text = scrape_summary(report)
        if then_retrain:
            from bot.jobs.retrain import RETRAIN_NOW_FUNC
            from bot.jobs.scheduler import TRAINING_EXECUTOR, enqueue

            enqueue(ctx.engine, RETRAIN_NOW_FUNC, job_id="retrain_now", executor=TRAINING_EXECUTOR,
                    notify_chat_ids=notify_chat_ids or [])
            text += "; retrain queued"
        for chat_id in notify_chat_ids or []:
            ctx.notify(chat_id, text)
        return text

    return run_job(f"scrape_now:{label}", body)


def _scrape_daily(ctx: JobContext) -> str:
    labels = most_corrected_labels(ctx.sessions, limit=ctx.settings.scrape_classes_per_run)
    if not labels:
        return "nothing to scrape: no corrections in the last week"
    left = budget_left_today(ctx.sessions, ctx.settings.scrape_daily_budget)
    if left <= 0:
        return "nothing to scrape: today's budget is used up"
    share = max(1, left // len(labels))
    stored = {}
    for label in labels:
        left = budget_left_today(ctx.sessions, ctx.settings.scrape_daily_budget)
        if left <= 0:
            break
        stored[label] = scrape_label(ctx, label, min(share, left)).stored
    return "scraped " + ", ".join(f"{label}: {count} new" for label, count in stored.items())
