"""Admin actions: status, retrain and scrape requests, the class catalogue, suggestions, rollback, stats.

Only ``admin_ids`` may use them (the handlers check ``is_admin`` first and log refusals).
Long work (training, scraping) is never done here: it is handed to the worker through
the job store (``bot.jobs.scheduler.enqueue``) and the worker reports back through the
notifications outbox. Everything here is synchronous; handlers call it off the event loop.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.jobs.retrain import RETRAIN_NOW_FUNC
from bot.jobs.scheduler import TRAINING_EXECUTOR, enqueue, next_runs
from bot.jobs.scrape import SCRAPE_NOW_FUNC
from bot.registry import ModelRegistry, VersionInfo, model_labels
from bot.services.retraining import count_new_corrections
from bot.store.models import Feedback, Image, JobRun, Prediction, SneakerClass, Suggestion
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


@dataclass(frozen=True)
class PendingSuggestion:
    """A name users typed under "Not listed", grouped by its normalised text."""

    id: int
    text: str
    user_id: int
    count: int


def check_label(label: str) -> str:
    """A valid class label, or ``BadLabel``."""
    if not is_valid_label(label):
        raise BadLabel("labels are lowercase letters, digits and underscores, starting with a letter or digit, "
                       "e.g. air_max_90")
    return label


def label_from_text(text: str) -> str:
    """A label for a typed name: "Air Max 90!" -> "air_max_90"."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64]
    return check_label(slug)


class AdminService:
    """The admin commands' logic over the database, the registry and the job store."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        engine: Engine,
        registry: ModelRegistry,
        *,
        admin_ids: frozenset[int],
        retrain_min_corrections: int,
    ) -> None:
        self.sessions = sessions
        self.engine = engine
        self.registry = registry
        self.admin_ids = admin_ids
        self.retrain_min_corrections = retrain_min_corrections

    def is_admin(self, user_id: int | None) -> bool:
        """Whether ``user_id`` may run admin commands."""
        return user_id is not None and user_id in self.admin_ids

    # --- reading -------------------------------------------------------------
    def status(self) -> StatusView:
        """Model, data, pending corrections, last and next job runs."""
        with self.sessions() as session:
            images = session.scalar(select(func.count()).select_from(Image).where(Image.status == "train")) or 0
            classes = session.scalar(
                select(func.count(func.distinct(Image.label))).where(Image.status == "train")
            ) or 0
            predictions = session.scalar(select(func.count()).select_from(Prediction)) or 0
            feedback = session.scalar(select(func.count()).select_from(Feedback)) or 0
            last_runs = self._last_runs(session)
        upcoming = next_runs(self.engine)
        jobs = {job_id: (last_runs.get(job_id), upcoming.get(job_id)) for job_id in {*upcoming, *last_runs}}
        current = self.registry.current()
        if current is not None:
            classes = max(classes, len(model_labels(current.path)))
        return StatusView(current, images, classes, count_new_corrections(self.sessions),
                          self.retrain_min_corrections, predictions, feedback, jobs)

    def _last_runs(self, session: Session) -> dict[str, tuple[datetime, str]]:
        newest = (
            select(JobRun.job_id, func.max(JobRun.id).label("id")).group_by(JobRun.job_id).subquery()
        )
        rows = session.execute(select(JobRun).join(newest, JobRun.id == newest.c.id)).scalars()
        return {row.job_id: (row.finished_at or row.started_at,
                             row.outcome or "" if row.finished_at else f"running now: {row.outcome or ''}")
                for row in rows}

    def classes(self) -> list[tuple[str, str, int, bool]]:
        """Every class: label, display name, training images, known by the current model."""
        current = self.registry.current()
        known = set(model_labels(current.path)) if current else set()
        with self.sessions() as session:
            counts = dict(
                session.execute(
                    select(Image.label, func.count()).where(Image.status == "train").group_by(Image.label)
                ).all()
            )
            names = {row.label: row.display_name for row in session.scalars(select(SneakerClass))}
        labels = sorted({*known, *names, *counts})
        return [(label, names.get(label, label), counts.get(label, 0), label in known) for label in labels]

    def pending_suggestions(self, limit: int = 10) -> list[PendingSuggestion]:
        """Pending names, most often suggested first (one entry per normalised text)."""
        with self.sessions() as session:
            rows = list(session.scalars(
                select(Suggestion).where(Suggestion.status == "pending").order_by(Suggestion.id)
            ))
        groups: dict[str, list[Suggestion]] = {}
        for row in rows:
            groups.setdefault(row.text.strip().lower(), []).append(row)
        pending = [PendingSuggestion(g[0].id, g[0].text, g[0].user_id, len(g)) for g in groups.values()]
        return sorted(pending, key=lambda s: (-s.count, s.id))[:limit]

    def stats(self, days: int = 7) -> StatsView:
        """Accuracy from users' feedback over ``days`` (their last answer per prediction counts)."""
        since = datetime.now(timezone.utc) - timedelta(days=days)
        with self.sessions() as session:
            rows = session.execute(
                select(Feedback.prediction_id, Feedback.verdict, Feedback.label, Prediction.top)
                .join(Prediction, Prediction.id == Feedback.prediction_id)
                .where(Feedback.created_at >= since, Feedback.verdict.in_(("correct", "wrong")))
                .order_by(Feedback.id)
            ).all()
        last = {prediction_id: (label, top) for prediction_id, _verdict, label, top in rows if label}
        pairs = [(actual, top[0]["label"]) for actual, top in last.values() if top]
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
        )

    # --- acting --------------------------------------------------------------
    def request_retrain(self, chat_id: int) -> None:
        """Ask the worker to retrain now and report to ``chat_id``."""
        enqueue(self.engine, RETRAIN_NOW_FUNC, job_id="retrain_now", executor=TRAINING_EXECUTOR,
                notify_chat_ids=[chat_id])

    def request_scrape(self, label: str, max_items: int, chat_id: int, *, then_retrain: bool = False) -> None:
        """Ask the worker to scrape ``label`` (``max_items`` at most, within the daily budget)."""
        check_label(label)
        if not 1 <= max_items <= MAX_SCRAPE:
            raise AdminError(f"the number of images must be between 1 and {MAX_SCRAPE}")
        enqueue(self.engine, SCRAPE_NOW_FUNC, job_id=f"scrape_now:{label}", label=label, max_items=max_items,
                notify_chat_ids=[chat_id], then_retrain=then_retrain)

    def add_class(self, label: str, display_name: str, chat_id: int) -> None:
        """Add (or rename) a class in the catalogue, then scrape it and retrain."""
        check_label(label)
        display_name = display_name.strip()[:128]
        if not display_name:
            raise AdminError("the display name is missing")
        with self.sessions.begin() as session:
            row = session.get(SneakerClass, label)
            if row is None:
                session.add(SneakerClass(label=label, display_name=display_name,
                                         queries=[display_name.lower(), f"{display_name.lower()} sneaker"]))
            else:
                row.display_name, row.active = display_name, True
        self.request_scrape(label, ADD_CLASS_SCRAPE, chat_id, then_retrain=True)

    def decide_suggestion(self, suggestion_id: int, accept: bool, chat_id: int) -> tuple[str, str | None]:
        """Accept (new class: scrape, then retrain) or reject a suggestion and its duplicates."""
        with self.sessions() as session:
            row = session.get(Suggestion, suggestion_id)
            if row is None or row.status != "pending":
                raise AdminError("that suggestion was already handled")
            if accept:
                label_from_text(row.text)  # a name that makes no label is refused before anything changes
        with self.sessions.begin() as session:
            row = session.get(Suggestion, suggestion_id)
            if row is None or row.status != "pending":
                raise AdminError("that suggestion was already handled")
            text = row.text
            same = session.scalars(select(Suggestion).where(Suggestion.status == "pending"))
            for other in same:
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
