"""Feedback: confirmations, corrections and "Not listed" names, checked and stored.

Every button press is checked first (the prediction exists, is the presser's, and its
photo is still kept); a rejected press raises ``FeedbackRejected`` and changes nothing.
A confirmed or corrected photo is filed once by content hash under
``<data_dir>/images/<label>/<sha1>.jpg`` with an ``images`` row, and becomes training
data. The newest answer counts: a later correction moves the file and relabels the row.

Each press is stored by one unit of work under the engine's retry policy
(``bot.store.retry``): while the database is away it is retried from its start, and a retry
first looks for what an attempt whose COMMIT went through unseen stored, so a press is stored
once. Past the budget ``DatabaseUnavailable`` reaches the handler ("try again in a moment"),
and nothing of the press stays: no row, and no file it copied.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from bot.services.errors import (
    FeedbackRejected,
    NotYourPrediction,
    PredictionExpired,
    UnknownLabel,
    UnknownPrediction,
)
from bot.store.models import Feedback, Image, Prediction, Suggestion, User
from bot.store.repositories import (
    FeedbackRepository,
    ImageRepository,
    PredictionRepository,
    SuggestionRepository,
    UserRepository,
)
from bot.store.retry import DatabaseUnavailable, retry_policy
from ml.atomic import atomic_path
from ml.verdicts import Verdict

log = logging.getLogger(__name__)
MAX_SUGGESTION = 200
# Verdicts whose answer names no model and so has no ✅ Correct: its first guess is only the closest
# known model (unknown_sneaker) or was not shown at all (not_sneaker), so "confirming" it would file
# the photo under a model nobody said it is.
NOTHING_TO_CONFIRM = frozenset({Verdict.NOT_SNEAKER, Verdict.UNKNOWN_SNEAKER})


class FeedbackVerdict(StrEnum):
    """What a user said about a prediction: the ``feedback.verdict`` column (members are its strings)."""

    CORRECT = "correct"  # the top guess was right
    WRONG = "wrong"  # corrected: another label picked from the list
    NOT_LISTED = "not_listed"  # not in the list; a typed name may follow as a suggestion


@dataclass(frozen=True)
class PredictionView:
    """What the handlers need of a prediction to redraw its message."""

    id: int
    verdict: str
    labels: list[str]
    scores: list[float]


@dataclass(frozen=True)
class FeedbackEvent:
    """A stored confirmation or correction, for listeners such as the learning loop's memory."""

    prediction_id: int
    user_id: int
    is_admin: bool
    image_sha1: str
    label: str
    image_path: Path


class FeedbackListener(Protocol):
    """Told after a confirmation or correction is committed, and when one is taken back."""

    def on_feedback(self, event: FeedbackEvent) -> None: ...

    def on_withdrawn(self, user_id: int, image_sha1: str) -> None:
        """The user's last answer for this photo is no longer a label ("Not listed")."""
        ...


def view_of(prediction: Prediction) -> PredictionView:
    """The handler-facing copy of a prediction row."""
    return PredictionView(prediction.id, prediction.verdict, [t["label"] for t in prediction.top],
                          [float(t["score"]) for t in prediction.top])


class FeedbackService:
    """Stores what users say about predictions."""

    def __init__(self, sessions: sessionmaker[Session], *, data_dir: Path, retention_days: int,
                 known_label: Callable[[str], bool], admin_ids: frozenset[int]) -> None:
        self.sessions = sessions
        self.data_dir = data_dir
        self.images_dir = data_dir / "images"
        self.retention = timedelta(days=retention_days)
        self.known_label = known_label
        self.admin_ids = admin_ids
        self.listeners: list[FeedbackListener] = []
        self.retry = retry_policy(sessions)

    # --- checks -------------------------------------------------------------
    def _checked(self, session: Session, prediction_id: int, user_id: int) -> Prediction:
        """The prediction if this user may act on it now, else a ``FeedbackRejected``."""
        prediction = PredictionRepository(session).get(prediction_id)
        if prediction is None:
            raise UnknownPrediction()
        if prediction.user_id != user_id:
            raise NotYourPrediction()
        created = prediction.created_at
        if created.tzinfo is None:  # SQLite hands back naive datetimes
            created = created.replace(tzinfo=UTC)
        if prediction.pending_path is None or created < datetime.now(UTC) - self.retention:
            raise PredictionExpired()
        return prediction

    def check(self, prediction_id: int, user_id: int) -> PredictionView:
        """Validate a press that only redraws (Wrong, page arrows, "It is a sneaker")."""
        def read(_attempt: int) -> PredictionView:
            with self.sessions() as session:
                return view_of(self._checked(session, prediction_id, user_id))

        return self.retry.run("check a press", read, read_only=True)

    # --- answers ------------------------------------------------------------
    def confirm(self, prediction_id: int, user_id: int) -> str:
        """The top guess was right; returns the confirmed label.

        A confirmation of an answer that named no model (``NOTHING_TO_CONFIRM``) is data the bot
        never made: rejected as forged, nothing stored.
        """
        def read(_attempt: int) -> str:
            with self.sessions() as session:
                prediction = self._checked(session, prediction_id, user_id)
                if prediction.verdict in NOTHING_TO_CONFIRM or not prediction.top:
                    raise FeedbackRejected("unknown")
                return prediction.top[0]["label"]

        label = self.retry.run("check a press", read, read_only=True)
        return self._label(prediction_id, user_id, FeedbackVerdict.CORRECT, label)

    def correct(self, prediction_id: int, user_id: int, label: str) -> str:
        """The user picked ``label`` from the list; returns it."""
        if not self.known_label(label):
            raise UnknownLabel()
        return self._label(prediction_id, user_id, FeedbackVerdict.WRONG, label)

    def not_listed(self, prediction_id: int, user_id: int) -> None:
        """The model is not in the list: wait for the user to type its name."""
        since = _now()

        def store(attempt: int) -> str:
            with self.sessions.begin() as session:
                prediction = self._checked(session, prediction_id, user_id)
                feedback = FeedbackRepository(session)
                if attempt == 1 or not feedback.stored_since(prediction.id, user_id, FeedbackVerdict.NOT_LISTED,
                                                             None, since):
                    feedback.add(Feedback(prediction_id=prediction.id, user_id=user_id,
                                          verdict=FeedbackVerdict.NOT_LISTED, label=None))
                self._unfile(session, prediction, user_id)
                self._user(session, user_id).awaiting_suggestion_for = prediction.id
                return prediction.image_sha1

        sha1 = self.retry.run("store a press", store)
        for listener in self.listeners:  # the last answer counts: an earlier label no longer does
            listener.on_withdrawn(user_id, sha1)

    def suggest(self, user_id: int, text: str) -> Suggestion | None:
        """Store a typed name if the user was asked for one; None when they were not."""
        since, name = _now(), text.strip()[:MAX_SUGGESTION]

        def store(attempt: int) -> Suggestion | None:
            with self.sessions.begin() as session:
                user = UserRepository(session).get(user_id)
                suggestions = SuggestionRepository(session)
                if user is None or user.awaiting_suggestion_for is None:
                    # on a retry, an attempt whose COMMIT went through unseen already took it
                    return suggestions.stored_since(user_id, name, since) if attempt > 1 and user else None
                suggestion = suggestions.add(Suggestion(
                    prediction_id=user.awaiting_suggestion_for, user_id=user_id, text=name))
                user.awaiting_suggestion_for = None
                return suggestion

        return self.retry.run("store a suggestion", store)

    # --- storing ------------------------------------------------------------
    def _label(self, prediction_id: int, user_id: int, verdict: FeedbackVerdict, label: str) -> str:
        """Store a labelled answer and file the photo under that label, in one transaction.

        Files are changed so that every committed row finds its file: the photo is copied
        before the COMMIT (and removed again if nothing was stored), the copy under an earlier
        label is deleted only after it.
        """
        since = _now()
        copied: list[Path] = []  # files this press created
        stale: list[Path] = []  # files of an earlier label, by every attempt (one may have committed unseen)
        in_doubt: list[int] = []  # attempts whose COMMIT failed: its outcome is unknown

        def store(attempt: int) -> FeedbackEvent:
            with self.sessions.begin() as session:
                prediction = self._checked(session, prediction_id, user_id)
                feedback = FeedbackRepository(session)
                if attempt == 1 or not feedback.stored_since(prediction.id, user_id, verdict, label, since):
                    feedback.add(Feedback(prediction_id=prediction.id, user_id=user_id, verdict=verdict, label=label))
                user = self._user(session, user_id)
                user.awaiting_suggestion_for = None
                path = self._file(session, prediction, label, user_id, copied, stale)
                event = FeedbackEvent(prediction.id, user_id, user_id in self.admin_ids, prediction.image_sha1,
                                      label, path)
                in_doubt.append(attempt)  # the block commits next
            in_doubt.remove(attempt)
            return event

        try:
            event = self.retry.run("store a press", store)
        except DatabaseUnavailable:
            if not in_doubt:
                for path in copied:
                    path.unlink(missing_ok=True)
            raise
        for old in set(stale) - {event.image_path}:
            old.unlink(missing_ok=True)
        for listener in self.listeners:
            listener.on_feedback(event)
        return label

    def _user(self, session: Session, user_id: int) -> User:
        """The presser's row (created by identify, so it exists)."""
        return UserRepository(session).ensure(user_id, username=None, is_admin=user_id in self.admin_ids)

    def _file(self, session: Session, prediction: Prediction, label: str, user_id: int,
              copied: list[Path], stale: list[Path]) -> Path:
        """Copy the pending photo to ``images/<label>/<sha1>.jpg`` and upsert its row.

        A new copy is appended to ``copied``; the file of an earlier label to ``stale`` (to be
        deleted once the transaction committed).
        """
        relative = Path("images") / label / f"{prediction.image_sha1}.jpg"
        target = self.data_dir / relative
        images = ImageRepository(session)
        image = images.get_by_sha1(prediction.image_sha1)
        if image is not None and image.source != "user":
            return self.data_dir / image.path  # a scraped or dataset copy already exists: keep it
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                _write_photo(Path(prediction.pending_path or ""), target)
                copied.append(target)
        except OSError as exc:  # a full disk: the answer is kept, the photo is not filed (no training data)
            log.error("disk: feedback on %s kept, but its photo was not filed under %s: %s",
                      prediction.image_sha1[:10], label, exc)
            if image is not None and image.status == "train" and image.path != str(relative):
                image.status = "review"  # filed under an earlier answer's label: no longer training data
            return Path(prediction.pending_path or target)  # the memory still reads the waiting photo
        if image is None:
            image = images.add_once(Image(sha1=prediction.image_sha1, path=str(relative), label=label,
                                          source="user", status="train", user_id=user_id))
        if image.source != "user":
            return self.data_dir / image.path  # a scraper got there first, a moment ago
        if image.path != str(relative):
            stale.append(self.data_dir / image.path)
            image.path, image.label, image.status = str(relative), label, "train"
        else:
            image.status = "train"
        return target

    def _unfile(self, session: Session, prediction: Prediction, user_id: int) -> None:
        """A user photo whose answer is now "not listed" stops being training data."""
        image = ImageRepository(session).get_by_sha1(prediction.image_sha1)
        if image is not None and image.source == "user" and image.user_id == user_id:
            image.status = "review"


def _write_photo(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a hidden temporary name: no half-written photo, even on a full disk."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _now() -> datetime:
    """When a press started: a retried unit looks for rows stored since then."""
    return datetime.now(UTC)
