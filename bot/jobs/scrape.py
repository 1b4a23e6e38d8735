"""Scrape jobs: top up the classes users correct most, within a daily download budget.

``scrape_daily`` picks the labels users corrected to most often in the last week
(the model's weak spots) and shares what is left of today's budget between them;
``scrape_now`` is an admin's ``/scrape`` or ``/addclass`` (which retrains afterwards), run
by ``take_scrape_requests``, the interval job that reads those requests (``admin_requests``).
"""

from __future__ import annotations

import logging

from bot.jobs.context import JobContext, run_job
from bot.services.scraping import budget_left_today, most_corrected_labels, scrape_label, scrape_payload
from bot.store.models import NotificationKind, RequestKind

log = logging.getLogger(__name__)


def scrape_daily() -> str | None:
    """The scheduled scrape of the most-corrected classes."""
    return run_job("scrape_daily", _scrape_daily)


def take_scrape_requests() -> str | None:
    """Run the scrapes admins asked for, one after another, until none waits; None when none did."""
    outcomes: list[str] = []
    while True:
        with JobContext.open() as ctx:
            request = ctx.take_request(RequestKind.SCRAPE)
        if request is None:
            return "; ".join(outcomes) or None
        params = request.params
        try:
            outcomes.append(scrape_now(params["label"], int(params["max_items"]), request.chat_ids,
                                       bool(params.get("then_retrain"))) or "")
        except Exception:  # run_job logged and recorded it; the next request still runs
            log.warning("request %s failed; going on with the next one", request.job_id)


def scrape_now(
    label: str, max_items: int, notify_chat_ids: list[int] | None = None, then_retrain: bool = False
) -> str | None:
    """An admin's request: scrape ``label`` now (budget permitting), optionally retrain after."""

    def body(ctx: JobContext) -> str:
        allowed = min(max_items, budget_left_today(ctx.sessions, ctx.settings.scrape_daily_budget))
        if allowed <= 0:
            outcome = f"scrape of {label} skipped: today's budget of {ctx.settings.scrape_daily_budget} is used up"
            kind, payload = NotificationKind.SCRAPE_SKIPPED, {"label": label,
                                                              "budget": ctx.settings.scrape_daily_budget}
        else:
            report = scrape_label(ctx.settings, ctx.sessions, label, allowed)
            outcome = report.format_text().splitlines()[0]
            kind, payload = NotificationKind.SCRAPE_RESULT, scrape_payload(report)
        if then_retrain:
            ctx.request(RequestKind.RETRAIN, {}, notify_chat_ids or [])
            outcome += "; retrain queued"
        for chat_id in notify_chat_ids or []:
            ctx.notify(chat_id, kind, {**payload, "retrain_queued": then_retrain})
        return outcome

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
        stored[label] = scrape_label(ctx.settings, ctx.sessions, label, min(share, left)).stored
    return "scraped " + ", ".join(f"{label}: {count} new" for label, count in stored.items())
