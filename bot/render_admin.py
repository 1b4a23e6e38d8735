"""Every text and keyboard of the admin commands and the learning loop's messages.

Kept apart from ``bot/render.py`` (the users' conversation) so the two evolve
without stepping on each other; the same rules hold: plain functions from values to
plain text (no parse mode), nothing here touches the database or the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

if TYPE_CHECKING:
    from scraper.report import ScrapeReport

    from bot.services.admin import StatsView, StatusView
    from bot.services.retraining import RetrainOutcome

NOT_ALLOWED = "Sorry, this command is not allowed: it is for the bot's admins only."
FORGED = "This button is not valid any more."
STATS_CAPTION = "Confusion matrix of the last 7 days (rows: actual, columns: predicted)"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def scrape_summary(report: ScrapeReport) -> str:
    """After a scrape: "scrape of nike_dunk_low: 78 of 80 stored (2 duplicates)" and what else happened."""
    text = f"scrape of {report.label}: {report.stored} of {report.found} stored"
    others = [(report.duplicates, "duplicates"), (report.rejected, "sent to review"),
              (sum(report.failed.values()), "failed")]
    details = ", ".join(f"{n} {what}" for n, what in others if n)
    if details:
        text += f" ({details})"
    if report.blocked:
        text += "; every source was blocked"
    return text


STAGES = {"embedding": "embedding photos", "training": "training the head", "comparing": "comparing with the current model"}


def retrain_stage(stage: str, done: int, total: int) -> str:
    """A retrain's progress: "retrain: embedding photos 1,200 / 6,129"."""
    what = STAGES.get(stage, stage)
    if stage == "comparing":
        return f"retrain: {what}"
    if done == 0:
        return f"retrain: {stage} {total:,} {'photos' if stage == 'embedding' else 'steps'}"
    return f"retrain: {what} {done:,} / {total:,}"


def retrain_result(outcome: RetrainOutcome) -> str:
    """After ``/retrain``: promoted or not and why, new classes on their own test photos, the others before → after."""
    if outcome.decision is None:
        return f"Retrain skipped: {outcome.skipped or 'nothing to do'}."
    decision = outcome.decision
    verdict = "✅ promoted" if decision.promoted else "❌ not promoted"
    lines = [f"{verdict} v{decision.version}" + (": the bot answers with it now" if decision.promoted else "")]
    if decision.new_classes is not None:
        for label, row in sorted(decision.new_classes.per_label.items()):
            lines.append(f"• new: {label} {_pct(row['recall'])} on its {row['n']} test photos")
    if decision.current is not None:
        lines.append(
            f"• the classes of v{decision.current_version}: top-1 {_pct(decision.current.top1)} → "
            f"{_pct(decision.candidate.top1)} (top-3 {_pct(decision.current.top3)} → "
            f"{_pct(decision.candidate.top3)}, the same {decision.candidate.n} test photos)"
        )
    else:
        lines.append(f"• test top-1 {_pct(decision.candidate.top1)} on {decision.candidate.n} photos")
    lines.append(decision.reason)
    return "\n".join(lines)


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
    """``/stats``: accuracy from user feedback per class over the last days, confused pairs."""
    lines = [f"Feedback of the last {view.days} days: {view.total} answers, accuracy {_pct(view.accuracy)}"]
    for label, correct, total in view.per_class:
        lines.append(f"• {label}: {correct}/{total} ({_pct(correct / total if total else None)})")
    if view.confused:
        lines.append("Most confused (predicted → actually):")
        for predicted, actual, count in view.confused:
            lines.append(f"• {predicted} → {actual}: {count}")
    return "\n".join(lines)


def _dig(data: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


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
