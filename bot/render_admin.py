"""Every text and keyboard of the admin commands and the learning loop's messages.

Kept apart from ``bot/render.py`` (the users' conversation) so the two evolve
without stepping on each other; the same rules hold: plain functions from values to
plain text (no parse mode), nothing here touches the database or the network.

The worker's messages arrive as a kind and a JSON payload (``bot.store.models.Notification``);
``notification`` words them when the bot sends them, so the worker never formats a message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.services.retraining import stage_line
from bot.store.models import NotificationKind

if TYPE_CHECKING:
    from bot.services.admin import StatsView, StatusView

log = logging.getLogger(__name__)

NOT_ALLOWED = "Sorry, this command is not allowed: it is for the bot's admins only."
FORGED = "This button is not valid any more."
STATS_CAPTION = "Confusion matrix of the last 7 days (rows: actual, columns: predicted)"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


# --- the worker's messages (the outbox) ------------------------------------------
def scrape_summary(payload: Mapping[str, Any]) -> str:
    """After a scrape: "scrape of nike_dunk_low: 78 of 80 stored (2 duplicates)" and what else happened."""
    text = f"scrape of {payload['label']}: {payload['stored']} of {payload['found']} stored"
    others = [(payload.get("duplicates", 0), "duplicates"), (payload.get("rejected", 0), "sent to review"),
              (payload.get("failed", 0), "failed")]
    details = ", ".join(f"{n} {what}" for n, what in others if n)
    if details:
        text += f" ({details})"
    if payload.get("blocked"):
        text += "; every source was blocked"
    return text + _retrain_queued(payload)


def scrape_skipped(payload: Mapping[str, Any]) -> str:
    """A requested scrape that today's download budget did not allow."""
    return (f"scrape of {payload['label']} skipped: today's budget of {payload['budget']} is used up"
            + _retrain_queued(payload))


def _retrain_queued(payload: Mapping[str, Any]) -> str:
    return "; retrain queued" if payload.get("retrain_queued") else ""


def retrain_stage(stage: str, done: int, total: int) -> str:
    """A retrain's progress: "retrain: embedding photos 1,200 / 6,129" (the line ``/status`` shows too)."""
    return stage_line(stage, done, total)


def retrain_result(payload: Mapping[str, Any]) -> str:
    """After ``/retrain``: promoted or not and why, new classes on their own test photos, the others before → after.

    ``payload`` is ``RetrainOutcome.as_payload()``.
    """
    if payload.get("version") is None:
        return f"Retrain skipped: {payload.get('skipped') or 'nothing to do'}."
    promoted, version = payload["promoted"], payload["version"]
    candidate, current = payload["candidate"], payload.get("current")
    verdict = "✅ promoted" if promoted else "❌ not promoted"
    lines = [f"{verdict} v{version}" + (": the bot answers with it now" if promoted else "")]
    for label, row in sorted((payload.get("new_classes") or {}).items()):
        lines.append(f"• new: {label} {_pct(row['recall'])} on its {row['n']} test photos")
    if current is not None:
        lines.append(
            f"• the classes of v{payload['current_version']}: top-1 {_pct(current['top1'])} → "
            f"{_pct(candidate['top1'])} (top-3 {_pct(current['top3'])} → "
            f"{_pct(candidate['top3'])}, the same {candidate['n']} test photos)"
        )
    else:
        lines.append(f"• test top-1 {_pct(candidate['top1'])} on {candidate['n']} photos")
    lines.append(payload["reason"])
    return "\n".join(lines)


def retrain_failed(payload: Mapping[str, Any]) -> str:
    """A retrain that failed: why, and that the served model did not change (the job's id first when automatic)."""
    current = payload.get("current_version")
    serving = f" Version {current} still answers." if current is not None else ""
    prefix = f"{payload['job']}: " if payload.get("job") else ""
    return f"{prefix}Retrain failed: {payload['reason']}.{serving}"


def worker_recovered(payload: Mapping[str, Any]) -> str:
    """The worker cleared what a killed retrain left, at its restart."""
    current = payload.get("current_version")
    return (f"The worker restarted after it stopped in the middle of a retrain: {payload['summary']}. "
            + (f"Version {current} still answers; " if current is not None else "")
            + "the next retrain starts clean.")


NOTIFICATIONS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    NotificationKind.TEXT: lambda payload: str(payload.get("text", "")),
    NotificationKind.RETRAIN_STAGE: lambda p: retrain_stage(p["stage"], int(p["done"]), int(p["total"])),
    NotificationKind.RETRAIN_RESULT: retrain_result,
    NotificationKind.RETRAIN_FAILED: retrain_failed,
    NotificationKind.SCRAPE_RESULT: scrape_summary,
    NotificationKind.SCRAPE_SKIPPED: scrape_skipped,
    NotificationKind.WORKER_RECOVERED: worker_recovered,
}


def notification(kind: str, payload: Mapping[str, Any]) -> str:
    """The message for one outbox row. A kind this bot does not know yet (a newer worker's) or a payload
    that does not fit is still sent, as its values: the admin hears of it either way."""
    render = NOTIFICATIONS.get(kind)
    if render is not None:
        try:
            return render(payload)
        except (KeyError, TypeError, ValueError):
            log.exception("notification %s: a payload this bot cannot word: %r", kind, payload)
    return f"{kind}: {json.dumps(payload, ensure_ascii=False, sort_keys=True)}"


def usage(command: str, args: str) -> str:
    """A local reply to a malformed admin command."""
    return f"Usage: /{command} {args}"


def job_requested(what: str) -> str:
    """The immediate answer to /retrain, /scrape, /addclass: the worker has it."""
    return f"OK: {what} is queued; I will message you when it is done."


def rolled_back(version: int) -> str:
    """After /rollback."""
    return f"Rolled back: the bot answers with model version {version} now."


def status(view: StatusView) -> str:
    """``/status``: model version and metrics, data counts, pending corrections, jobs."""
    lines = ["Status"]
    if view.current is None:
        lines.append("Model: none installed")
    else:
        test = (view.current.metrics or {}).get("test") or {}
        model = (view.current.metrics or {}).get("model") or {}
        top1 = test.get("top1", _dig(model, "test", "top1"))
        lines.append(
            f"Model: version {view.current.version} ({view.current.backbone}), "
            f"test top-1 {_pct(top1)}"
        )
    lines.append(
        f"Data: {view.images_total} training images in {view.classes_total} classes; "
        f"{view.pending_corrections} corrections since the last retrain "
        f"(retrain at {view.retrain_min_corrections})"
    )
    lines.append(f"Predictions: {view.predictions_total}; feedback: {view.feedback_total}")
    for job_id, (last, next_run) in sorted(view.jobs.items()):
        last_text = f"{_when(last[0])}: {last[1]}" if last else "never"
        lines.append(f"• {job_id}: last {last_text}; next {_when(next_run)}")
    return "\n".join(lines)


def classes(rows: Sequence[tuple[str, str, int, bool]]) -> str:
    """``/classes``: label, display name, training images, whether the model knows it."""
    if not rows:
        return "No classes yet."
    lines = ["Classes (label — name — images)"]
    for label, name, count, known in rows:
        mark = "" if known else " (not in the model yet)"
        lines.append(f"{label} — {name} — {count}{mark}")
    return "\n".join(lines)


def suggestions_header(count: int) -> str:
    """``/suggestions``: how many pending names follow."""
    return "No pending suggestions." if count == 0 else f"{count} pending suggestion(s):"


def suggestion(text: str, user_id: int, count: int) -> str:
    """One suggested name, with how many times users typed it."""
    return f"“{text}” — suggested {count}× (first by user {user_id})"


def suggestion_decided(text: str, accepted: bool, label: str | None) -> str:
    """After an admin pressed accept or reject."""
    if accepted:
        return f"Accepted “{text}” as {label or ''}: scraping and retraining are queued."
    return f"Rejected “{text}”."


def stats(view: StatsView) -> str:
    """``/stats``: accuracy from user feedback per class over the last days, confused pairs, photos per verdict.

    A verdict that named no model stands for the prediction: "unknown_sneaker → air_jordan_9".
    """
    lines = [f"Feedback of the last {view.days} days: {view.total} answers, accuracy {_pct(view.accuracy)}",
             verdict_line(view.verdicts, view.details)]
    for label, correct, total in view.per_class:
        lines.append(f"• {label}: {correct}/{total} ({_pct(correct / total if total else None)})")
    if view.confused:
        lines.append("Most confused (predicted → actually):")
        for predicted, actual, count in view.confused:
            lines.append(f"• {predicted} → {actual}: {count}")
    return "\n".join(lines)


def verdict_line(verdicts: Mapping[str, int], details: Mapping[str, int]) -> str:
    """"Photos: 12 — sneaker 8, unsure 1, not_sneaker 2, unknown_sneaker 1; details: other_footwear 1"."""
    shown = ", ".join(f"{verdict} {count}" for verdict, count in verdicts.items())
    why = ", ".join(f"{detail} {count}" for detail, count in details.items() if count)
    return f"Photos: {sum(verdicts.values())} — {shown}" + (f"; details: {why}" if why else "")


def _dig(data: dict[str, Any], *keys: str) -> Any:
    """``data[keys[0]][keys[1]]…``, or None where a level is missing or not a dict (metrics are free-form JSON)."""
    value: Any = data
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


# --- suggestion buttons ----------------------------------------------------------
SUGGESTION_PREFIX = "adm:sg"


def suggestion_keyboard(suggestion_id: int) -> InlineKeyboardMarkup:
    """Accept / reject buttons under one suggestion (data: ``adm:sg:<a|r>:<id>``)."""
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("✅ Accept", callback_data=f"{SUGGESTION_PREFIX}:a:{suggestion_id}"),
        InlineKeyboardButton("❌ Reject", callback_data=f"{SUGGESTION_PREFIX}:r:{suggestion_id}"),
    ]])


def parse_suggestion_data(data: str | None) -> tuple[bool, int] | None:
    """``(accept, suggestion id)`` from button data, or None when it is not ours or forged."""
    parts = (data or "").split(":")
    if len(parts) != 4 or ":".join(parts[:2]) != SUGGESTION_PREFIX or parts[2] not in ("a", "r"):
        return None
    number = parts[3]  # as the keyboard writes it: ASCII digits, no leading zero ("²".isdigit() is True)
    if not (number.isascii() and number.isdigit()) or number.startswith("0") or len(number) > 19:
        return None
    if int(number) > 2**63 - 1:  # no larger than a database id can be (SQLite raises OverflowError above it)
        return None
    return parts[2] == "a", int(number)
