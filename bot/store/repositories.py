"""Repositories: the queries the services need, one class per table, each over a ``Session``.

They never commit: the caller (a service) owns the transaction, so one user action is
stored all together or not at all.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.store.models import Feedback, Image, Prediction, RateEvent, Suggestion, UpdateClaim, User


class UserRepository:
    """Telegram users, created on their first stored action."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, user_id: int) -> User | None:
        """The user, or None."""
        return self.session.get(User, user_id)

    def ensure(self, user_id: int, *, username: str | None, is_admin: bool) -> User:
        """The user row, created on first sight; the admin flag follows the settings."""
        user = self.session.get(User, user_id)
        if user is None:
            try:
                with self.session.begin_nested():  # two photos of one album may race to create the user
                    user = User(id=user_id, username=username, is_admin=is_admin)
                    self.session.add(user)
            except IntegrityError:
                user = self.session.get(User, user_id, populate_existing=True)
                assert user is not None
        if user.is_admin != is_admin or (username and user.username != username):
            user.is_admin = is_admin
            user.username = username or user.username
        return user


class PredictionRepository:
    """Answers the bot gave; their ids travel in button data."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, prediction: Prediction) -> Prediction:
        """Insert and return it with its id."""
        self.session.add(prediction)
        self.session.flush()
        return prediction

    def insert(self, **values: object) -> int:
        """Insert one row with a single statement (no ORM object to flush) and return its id."""
        result = self.session.execute(insert(Prediction).values(**values))
        return int(result.inserted_primary_key[0])

    def get(self, prediction_id: int) -> Prediction | None:
        """The prediction, or None."""
        return self.session.get(Prediction, prediction_id)

    def for_message(self, chat_id: int, message_id: int) -> Prediction | None:
        """The first answer to this photo message, if there is one."""
        query = (select(Prediction).where(Prediction.chat_id == chat_id, Prediction.message_id == message_id)
                 .order_by(Prediction.id).limit(1))
        return self.session.scalars(query).first()

    def set_reply(self, prediction_id: int, reply_message_id: int) -> None:
        """Record the bot's answer message, without loading the row first."""
        self.session.execute(
            update(Prediction).where(Prediction.id == prediction_id).values(reply_message_id=reply_message_id)
        )

    def with_pending_photo_before(self, before: datetime) -> list[Prediction]:
        """Predictions older than ``before`` whose photo still waits in the pending folder."""
        query = select(Prediction).where(
            Prediction.created_at < before, Prediction.pending_path.is_not(None)
        )
        return list(self.session.scalars(query))

    def count(self) -> int:
        """How many predictions exist."""
        return self.session.scalar(select(func.count()).select_from(Prediction)) or 0


class FeedbackRepository:
    """Confirmations and corrections; the newest per prediction counts."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, feedback: Feedback) -> Feedback:
        """Insert one feedback row."""
        self.session.add(feedback)
        self.session.flush()
        return feedback

    def for_prediction(self, prediction_id: int) -> list[Feedback]:
        """All feedback on a prediction, oldest first."""
        query = select(Feedback).where(Feedback.prediction_id == prediction_id).order_by(Feedback.id)
        return list(self.session.scalars(query))

    def latest(self, prediction_id: int) -> Feedback | None:
        """The feedback that counts for a prediction."""
        rows = self.for_prediction(prediction_id)
        return rows[-1] if rows else None

    def stored_since(self, prediction_id: int, user_id: int, verdict: str, label: str | None,
                     since: datetime) -> bool:
        """Whether the newest feedback on the prediction, stored at or after ``since``, is exactly this one.

        A retried unit of work asks this first: an attempt whose COMMIT went through but whose
        answer was lost (the connection dropped) already stored it (``bot.store.retry``).
        """
        query = (select(Feedback).where(Feedback.prediction_id == prediction_id, Feedback.created_at >= since)
                 .order_by(Feedback.id.desc()).limit(1))
        row = self.session.scalars(query).first()
        return row is not None and (row.user_id, row.verdict, row.label) == (user_id, verdict, label)

    def has_any(self, prediction_id: int) -> bool:
        """Whether anyone answered this prediction."""
        query = select(func.count()).select_from(Feedback).where(Feedback.prediction_id == prediction_id)
        return bool(self.session.scalar(query))


class ImageRepository:
    """Labelled images stored once by content hash (users, scraper, datasets)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_by_sha1(self, sha1: str) -> Image | None:
        """The image with that content hash, or None."""
        return self.session.scalar(select(Image).where(Image.sha1 == sha1))

    def exists(self, sha1: str) -> bool:
        """Whether an image with that content hash is already stored."""
        return self.get_by_sha1(sha1) is not None

    def add(self, image: Image) -> Image:
        """Insert one image row."""
        self.session.add(image)
        self.session.flush()
        return image

    def add_once(self, image: Image) -> Image:
        """Insert ``image``, or return the row another transaction just stored for its sha1."""
        try:
            with self.session.begin_nested():
                self.session.add(image)
        except IntegrityError:
            existing = self.get_by_sha1(image.sha1)
            assert existing is not None
            return existing
        return image

    def count_by_label(self) -> dict[str, int]:
        """Training images per label."""
        query = select(Image.label, func.count()).where(Image.status == "train").group_by(Image.label)
        return {label: count for label, count in self.session.execute(query)}


class SuggestionRepository:
    """Names users typed under "Not listed"."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, suggestion: Suggestion) -> Suggestion:
        """Insert one suggestion."""
        self.session.add(suggestion)
        self.session.flush()
        return suggestion

    def stored_since(self, user_id: int, text: str, since: datetime) -> Suggestion | None:
        """The user's newest suggestion if it is ``text``, stored at or after ``since`` (a retry's look-up)."""
        query = (select(Suggestion).where(Suggestion.user_id == user_id, Suggestion.created_at >= since)
                 .order_by(Suggestion.id.desc()).limit(1))
        row = self.session.scalars(query).first()
        return row if row is not None and row.text == text else None

    def for_user(self, user_id: int) -> list[Suggestion]:
        """A user's suggestions, oldest first."""
        query = select(Suggestion).where(Suggestion.user_id == user_id).order_by(Suggestion.id)
        return list(self.session.scalars(query))


class UpdateClaimRepository:
    """Claims on Telegram updates, so that replicas handle each update once (``UpdateClaim``)."""

    MINE, HANDLED, BUSY = "mine", "handled", "busy"

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(self, update_id: int, instance: str, now: datetime, *, lease_before: datetime) -> str:
        """``MINE`` when this instance takes the update now; ``HANDLED`` when it was finished; ``BUSY``
        when another instance took it after ``lease_before`` and has not finished (or this one has it)."""
        if self._insert(update_id, instance, now):
            return self.MINE
        row = self.session.get(UpdateClaim, update_id, populate_existing=True)
        if row is None:  # purged in between: take it
            return self.MINE if self._insert(update_id, instance, now) else self.BUSY
        if row.done_at is not None:
            return self.HANDLED
        if row.instance == instance or _aware(row.claimed_at) >= lease_before:
            return self.BUSY
        taken = self.session.execute(  # the old claimer died: take over, unless another replica just did
            update(UpdateClaim).where(UpdateClaim.update_id == update_id, UpdateClaim.instance == row.instance,
                                      UpdateClaim.done_at.is_(None))
            .values(instance=instance, claimed_at=now))
        return self.MINE if taken.rowcount == 1 else self.BUSY

    def finish(self, update_id: int, instance: str, now: datetime) -> None:
        """The update was handled by ``instance``."""
        self.session.execute(update(UpdateClaim).where(UpdateClaim.update_id == update_id,
                                                       UpdateClaim.instance == instance).values(done_at=now))

    def purge_before(self, before: datetime) -> int:
        """Forget claims taken before ``before``."""
        result = self.session.execute(delete(UpdateClaim).where(UpdateClaim.claimed_at < before))
        return result.rowcount or 0

    def _insert(self, update_id: int, instance: str, now: datetime) -> bool:
        """Insert the claim unless one exists (no error, no aborted transaction on PostgreSQL)."""
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = (dialect_insert(UpdateClaim).values(update_id=update_id, instance=instance, claimed_at=now)
                     .on_conflict_do_nothing(index_elements=["update_id"]).returning(UpdateClaim.update_id))
        return self.session.execute(statement).first() is not None


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class RateEventRepository:
    """Photo timestamps per user for the rate limit."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def count_since(self, user_id: int, since: datetime) -> int:
        """Photos the user sent since ``since``."""
        query = (
            select(func.count())
            .select_from(RateEvent)
            .where(RateEvent.user_id == user_id, RateEvent.created_at >= since)
        )
        return self.session.scalar(query) or 0

    def add(self, user_id: int, at: datetime) -> None:
        """Record one photo."""
        self.session.add(RateEvent(user_id=user_id, created_at=at))

    def recorded_at(self, user_id: int, at: datetime) -> bool:
        """Whether this user's photo at exactly ``at`` is counted (a retry's look-up: the earlier
        attempt's COMMIT may have gone through)."""
        query = select(RateEvent.id).where(RateEvent.user_id == user_id, RateEvent.created_at == at).limit(1)
        return self.session.scalar(query) is not None

    def add_if_fewer_than(self, limit: int, user_id: int, at: datetime, *, since: datetime) -> bool:
        """Record one photo unless the user already has ``limit`` since ``since``: one statement,
        ``INSERT ... SELECT ... WHERE (count) < limit``. True when it was recorded."""
        columns = RateEvent.__table__.c
        recent = (
            select(func.count()).select_from(RateEvent)
            .where(RateEvent.user_id == user_id, RateEvent.created_at >= since)
            .scalar_subquery()
        )
        row = select(literal(user_id, columns.user_id.type), literal(at, columns.created_at.type)).where(recent < limit)
        added = insert(RateEvent).from_select(["user_id", "created_at"], row).returning(RateEvent.id)
        return self.session.execute(added).first() is not None

    def purge_before(self, before: datetime) -> int:
        """Forget events older than ``before``."""
        result = self.session.execute(delete(RateEvent).where(RateEvent.created_at < before))
        return result.rowcount or 0

