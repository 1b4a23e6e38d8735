"""Admin actions: status, retrain and scrape requests, the class catalogue, suggestions, rollback, stats.

Only ``admin_ids`` may use them (the handlers check ``is_admin`` first and log refusals).
Long work (training, scraping) is never done here: a request is an ``admin_requests`` row
(``enqueue``) that the worker's request jobs take, and the worker reports back through the
notifications outbox. This module knows nothing of the worker's jobs or scheduler.
Everything here is synchronous; handlers call it off the event loop.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bot.registry import ModelRegistry, VersionInfo, model_labels
from bot.store.models import RequestKind
from bot.store.repositories import (
    AdminRequestRepository,
    FeedbackRepository,
    ImageRepository,
    JobRunRepository,
    PredictionRepository,
    ScheduledJobRepository,
    SneakerClassRepository,
    SuggestionRepository,
)
from ml.verdicts import Detail, Verdict
from scraper.catalogue import is_valid_label

MAX_SCRAPE = 500
DEFAULT_SCRAPE = 50
ADD_CLASS_SCRAPE = 100  # a new class starts from nothing: more photos than a top-up


class AdminError(Exception):
    """An admin action that cannot be done; the message is shown to the admin."""


class BadLabel(AdminError):
    """A label that is not lowercase letters, digits and underscores."""


@dataclass(frozen=True)
class StatusView:
    """What ``/status`` shows."""

    current: VersionInfo | None
    images_total: int
    classes_total: int
    pending_corrections: int
    retrain_min_corrections: int
    predictions_total: int
    feedback_total: int
    jobs: dict[str, tuple[tuple[datetime, str] | None, datetime | None]]


@dataclass(frozen=True)
class StatsView:
    """What ``/stats`` shows: accuracy per class and confusions from user feedback."""

    days: int
    total: int
    accuracy: float | None
    per_class: list[tuple[str, int, int]]  # label, correct, total (by the true label)
    confused: list[tuple[str, str, int]]  # predicted, actual, count
    pairs: list[tuple[str, str]]  # (actual, predicted) per answer, for the matrix
    verdicts: dict[str, int]  # photos answered per verdict, every ml.verdicts.Verdict in its order
    details: dict[str, int]  # of those, per ml.verdicts.Detail ("other_footwear")


@dataclass(frozen=True)
class PendingSuggestion:
    """A name users typed under "Not listed", grouped by its normalised text."""

    id: int
    text: str
    user_id: int
    count: int


# Verdicts that name no model: the reply shows no guess (not_sneaker) or only the closest known models
# (unknown_sneaker), so feedback on them judges the verdict, not the first guess behind it.
NO_MODEL_NAMED = frozenset({Verdict.NOT_SNEAKER, Verdict.UNKNOWN_SNEAKER})


def answered_as(top: list, verdict: str) -> str | None:
    """What the bot told the user a photo is: its first guess, or the verdict itself when it named no model."""
    if verdict in NO_MODEL_NAMED:
        return verdict
    return top[0]["label"] if top else None


def verdict_counts(counts: dict[tuple[str, str | None], int]) -> tuple[dict[str, int], dict[str, int]]:
    """``StatsView.verdicts`` and ``.details`` from counts per (verdict, detail): every known one, even at 0."""
    verdicts = {verdict.value: 0 for verdict in Verdict}
    details = {detail.value: 0 for detail in Detail}
    for (verdict, detail), n in counts.items():
        verdicts[verdict] = verdicts.get(verdict, 0) + n
        if detail is not None:
            details[detail] = details.get(detail, 0) + n
    return verdicts, details


def check_label(label: str) -> str:
    """A valid class label, or ``BadLabel``."""
    if not is_valid_label(label):
        raise BadLabel("labels are lowercase letters, digits and underscores, starting with a letter or digit, "
                       "e.g. air_max_90")
    return label


def enqueue(sessions: sessionmaker[Session], kind: RequestKind, *, chat_id: int | None = None, **params: Any) -> None:
    """Leave a request of ``kind`` for the worker; ``chat_id`` (if any) is told when it is done."""
    with sessions.begin() as session:
        AdminRequestRepository(session).add(kind, params, [] if chat_id is None else [chat_id])


def label_from_text(text: str) -> str:
    """A label for a typed name: "Air Max 90!" -> "air_max_90"."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64]
    return check_label(slug)


class AdminService:
    """The admin commands' logic over the database, the registry and the worker's request queue."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        *,
        admin_ids: frozenset[int],
        retrain_min_corrections: int,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.admin_ids = admin_ids
        self.retrain_min_corrections = retrain_min_corrections

    def is_admin(self, user_id: int | None) -> bool:
        """Whether ``user_id`` may run admin commands."""
        return user_id is not None and user_id in self.admin_ids

    # --- reading -------------------------------------------------------------
    def status(self) -> StatusView:
        """Model, data, pending corrections, last and next job runs (a waiting request runs next)."""
        with self.sessions() as session:
            images, classes = ImageRepository(session).count_training()
            predictions = PredictionRepository(session).count()
            feedback = FeedbackRepository(session)
            feedback_total, corrections = feedback.count(), feedback.count_unused_corrections()
            last_runs = {row.job_id: (row.finished_at or row.started_at,
                                      row.outcome or "" if row.finished_at else f"running now: {row.outcome or ''}")
                         for row in JobRunRepository(session).newest_per_job()}
            upcoming = ScheduledJobRepository(session).next_runs()
            for request in AdminRequestRepository(session).pending():
                upcoming.setdefault(request.job_id, request.created_at)
        jobs = {job_id: (last_runs.get(job_id), upcoming.get(job_id)) for job_id in {*upcoming, *last_runs}}
        current = self.registry.current()
        if current is not None:
            classes = max(classes, len(model_labels(current.path)))
        return StatusView(current, images, classes, corrections, self.retrain_min_corrections, predictions,
                          feedback_total, jobs)

    def classes(self) -> list[tuple[str, str, int, bool]]:
        """Every class: label, display name, training images, known by the current model."""
        current = self.registry.current()
        known = set(model_labels(current.path)) if current else set()
        with self.sessions() as session:
            counts = ImageRepository(session).count_by_label()
            names = SneakerClassRepository(session).display_names()
        labels = sorted({*known, *names, *counts})
        return [(label, names.get(label, label), counts.get(label, 0), label in known) for label in labels]

    def pending_suggestions(self, limit: int = 10) -> list[PendingSuggestion]:
        """Pending names, most often suggested first (one entry per normalised text)."""
        with self.sessions() as session:
            rows = SuggestionRepository(session).pending()
        groups: dict[str, list] = {}
        for row in rows:
            groups.setdefault(row.text.strip().lower(), []).append(row)
        pending = [PendingSuggestion(g[0].id, g[0].text, g[0].user_id, len(g)) for g in groups.values()]
        return sorted(pending, key=lambda s: (-s.count, s.id))[:limit]

    def stats(self, days: int = 7) -> StatsView:
        """Accuracy from users' feedback over ``days`` (their last answer per prediction counts), and the
        photos answered per verdict.

        A pick under an answer that named no model ("not a sneaker", "a sneaker I don't know") is a
        miss of that verdict: "unknown_sneaker → air_jordan_9", never a hit of the closest model shown.
        """
        since = datetime.now(UTC) - timedelta(days=days)
        with self.sessions() as session:
            rows = FeedbackRepository(session).answers_since(since)
            counts = PredictionRepository(session).count_by_verdict(since)
        last = {prediction_id: (label, answered_as(top, verdict))
                for prediction_id, _feedback, label, top, verdict in rows if label}
        pairs = [(actual, predicted) for actual, predicted in last.values() if predicted is not None]
        verdicts, details = verdict_counts(counts)
        per_label: dict[str, list[int]] = {}
        for actual, predicted in pairs:
            per_label.setdefault(actual, [0, 0])
            per_label[actual][0] += actual == predicted
            per_label[actual][1] += 1
        confused = Counter((predicted, actual) for actual, predicted in pairs if actual != predicted)
        correct = sum(actual == predicted for actual, predicted in pairs)
        return StatsView(
            days=days,
            total=len(pairs),
            accuracy=correct / len(pairs) if pairs else None,
            per_class=[(label, c, t) for label, (c, t) in sorted(per_label.items())],
            confused=[(p, a, n) for (p, a), n in confused.most_common(5)],
            pairs=pairs,
            verdicts=verdicts,
            details=details,
        )

    # --- acting --------------------------------------------------------------
    def request_retrain(self, chat_id: int) -> None:
        """Ask the worker to retrain now and report to ``chat_id``."""
        enqueue(self.sessions, RequestKind.RETRAIN, chat_id=chat_id)

    def request_scrape(self, label: str, max_items: int, chat_id: int, *, then_retrain: bool = False) -> None:
        """Ask the worker to scrape ``label`` (``max_items`` at most, within the daily budget)."""
        check_label(label)
        if not 1 <= max_items <= MAX_SCRAPE:
            raise AdminError(f"the number of images must be between 1 and {MAX_SCRAPE}")
        enqueue(self.sessions, RequestKind.SCRAPE, chat_id=chat_id, label=label, max_items=max_items,
                then_retrain=then_retrain)

    def add_class(self, label: str, display_name: str, chat_id: int) -> None:
        """Add (or rename) a class in the catalogue, then scrape it and retrain."""
        check_label(label)
        display_name = display_name.strip()[:128]
        if not display_name:
            raise AdminError("the display name is missing")
        with self.sessions.begin() as session:
            SneakerClassRepository(session).add_or_rename(
                label, display_name, [display_name.lower(), f"{display_name.lower()} sneaker"])
        self.request_scrape(label, ADD_CLASS_SCRAPE, chat_id, then_retrain=True)

    def decide_suggestion(self, suggestion_id: int, accept: bool, chat_id: int) -> tuple[str, str | None]:
        """Accept (new class: scrape, then retrain) or reject a suggestion and its duplicates."""
        with self.sessions() as session:
            row = SuggestionRepository(session).get(suggestion_id)
            if row is None or row.status != "pending":
                raise AdminError("that suggestion was already handled")
            if accept:
                label_from_text(row.text)  # a name that makes no label is refused before anything changes
        with self.sessions.begin() as session:
            suggestions = SuggestionRepository(session)
            row = suggestions.get(suggestion_id)
            if row is None or row.status != "pending":
                raise AdminError("that suggestion was already handled")
            text = row.text
            for other in suggestions.pending():
                if other.text.strip().lower() == text.strip().lower():
                    other.status = "accepted" if accept else "rejected"
        if not accept:
            return text, None
        label = label_from_text(text)
        self.add_class(label, text.strip(), chat_id)
        return text, label

    def rollback(self, version: int) -> VersionInfo:
        """Serve ``version`` again; bot processes pick it up within seconds."""
        return self.registry.rollback(version)


def confusion_png(pairs: list[tuple[str, str]], *, title: str = "User feedback: actual vs predicted") -> bytes:
    """A confusion-matrix image (rows: actual, columns: predicted) as PNG bytes, drawn by ``ml.plots``."""
    import numpy as np

    from ml.plots import plot_confusion

    labels = sorted({label for pair in pairs for label in pair})
    index = {label: i for i, label in enumerate(labels)}
    actual = np.array([index[a] for a, _ in pairs], dtype=int)
    predicted = np.array([index[p] for _, p in pairs], dtype=int)
    with tempfile.TemporaryDirectory(prefix="stats-") as tmp:
        path = plot_confusion(actual, predicted, labels, Path(tmp) / "confusion.png", title=title)
        return path.read_bytes()
