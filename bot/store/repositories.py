"""Repositories: every query of the application, one class per table, each over a ``Session``.

They never commit: the caller (a service, a job, the registry) owns the transaction, so one
user action is stored all together or not at all. Nothing outside ``bot/store`` writes SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import MetaData, Table, case, delete, func, insert, inspect, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.store.models import (
    JOB_TABLE,
    AdminRequest,
    Feedback,
    Image,
    JobRun,
    MemoryEntry,
    ModelVersion,
    Notification,
    Prediction,
    RateEvent,
    ScrapeRun,
    SneakerClass,
    Suggestion,
    UpdateClaim,
    User,
    request_job_id,
    utcnow,
)

if TYPE_CHECKING:
    from sqlalchemy import CursorResult, Insert, Result

CORRECTION = "wrong"  # the feedback verdict of a correction


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (its result is a ``CursorResult``)."""
    return cast("CursorResult[Any]", result).rowcount or 0


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
        key = cast("CursorResult[Any]", result).inserted_primary_key
        assert key is not None  # an INSERT of one row
        return int(key[0])

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

    def count_by_verdict(self, since: datetime) -> dict[tuple[str, str | None], int]:
        """Predictions made since ``since``, per (verdict, detail)."""
        query = (select(Prediction.verdict, Prediction.detail, func.count()).where(Prediction.created_at >= since)
                 .group_by(Prediction.verdict, Prediction.detail))
        return {(verdict, detail): count for verdict, detail, count in self.session.execute(query)}

    def waits_on(self, pending_path: str, *, since: datetime) -> bool:
        """Whether a prediction made at or after ``since`` still waits on this pending file."""
        query = select(Prediction.id).where(Prediction.pending_path == pending_path, Prediction.created_at >= since)
        return self.session.scalars(query.limit(1)).first() is not None


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

    def count(self) -> int:
        """How many feedback rows exist."""
        return self.session.scalar(select(func.count()).select_from(Feedback)) or 0

    def count_unused_corrections(self) -> int:
        """Corrections no retrain has used yet."""
        query = select(func.count()).select_from(Feedback).where(
            Feedback.verdict == CORRECTION, Feedback.consumed_by_version.is_(None))
        return self.session.scalar(query) or 0

    def consume_unused(self, version: int) -> int:
        """Mark all unused feedback as used by ``version``; returns how much."""
        result = self.session.execute(
            update(Feedback).where(Feedback.consumed_by_version.is_(None)).values(consumed_by_version=version))
        return _rowcount(result)

    def release(self, versions: Sequence[int]) -> int:
        """Feedback consumed by ``versions`` counts as unused again; returns how much."""
        result = self.session.execute(
            update(Feedback).where(Feedback.consumed_by_version.in_(list(versions))).values(consumed_by_version=None))
        return _rowcount(result)

    def answers_since(self, since: datetime) -> list[tuple[int, str, str | None, list, str]]:
        """(prediction id, verdict, label, the prediction's top guesses and its verdict) of confirmations
        and corrections since ``since``, oldest first."""
        query = (select(Feedback.prediction_id, Feedback.verdict, Feedback.label, Prediction.top, Prediction.verdict)
                 .join(Prediction, Prediction.id == Feedback.prediction_id)
                 .where(Feedback.created_at >= since, Feedback.verdict.in_(("correct", CORRECTION)))
                 .order_by(Feedback.id))
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]

    def most_corrected_labels(self, since: datetime, limit: int) -> list[str]:
        """The labels users corrected predictions to most often since ``since``."""
        query = (select(Feedback.label, func.count())
                 .where(Feedback.verdict == CORRECTION, Feedback.label.is_not(None), Feedback.created_at >= since)
                 .group_by(Feedback.label).order_by(func.count().desc(), Feedback.label).limit(limit))
        return [str(label) for label, _count in self.session.execute(query)]


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

    def count_training(self) -> tuple[int, int]:
        """(training images, labels they cover)."""
        query = select(func.count(), func.count(func.distinct(Image.label))).where(Image.status == "train")
        images, labels = self.session.execute(query).one()
        return images or 0, labels or 0

    def count_by_source_status(self) -> dict[tuple[str, str], int]:
        """Images per (source, status), whatever their status."""
        query = select(Image.source, Image.status, func.count()).group_by(Image.source, Image.status)
        return {(source, status): count for source, status, count in self.session.execute(query)}

    def split_keys(self) -> list[tuple[int, str, str, str, str | None]]:
        """(id, sha1, label, source, split) of every image, to draw the splits not drawn yet."""
        query = select(Image.id, Image.sha1, Image.label, Image.source, Image.split).order_by(Image.id)
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]

    def set_splits(self, splits: dict[int, str]) -> None:
        """Store each image's split (by id)."""
        for image_id, split in splits.items():
            self.session.execute(update(Image).where(Image.id == image_id).values(split=split))

    def training_files(self) -> list[tuple[str, str, str, str | None, str]]:
        """(path, label, sha1, split, source) of every training image."""
        query = select(Image.path, Image.label, Image.sha1, Image.split, Image.source).where(Image.status == "train")
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]


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

    def get(self, suggestion_id: int) -> Suggestion | None:
        """The suggestion, or None."""
        return self.session.get(Suggestion, suggestion_id)

    def pending(self) -> list[Suggestion]:
        """Suggestions no admin has decided, oldest first."""
        return list(self.session.scalars(select(Suggestion).where(Suggestion.status == "pending")
                                         .order_by(Suggestion.id)))


class SneakerClassRepository:
    """The catalogue: the classes admins and the built-in list name."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, label: str) -> SneakerClass | None:
        """The class, or None."""
        return self.session.get(SneakerClass, label)

    def labels(self) -> set[str]:
        """Every label in the catalogue."""
        return set(self.session.scalars(select(SneakerClass.label)))

    def display_names(self) -> dict[str, str]:
        """Label -> display name."""
        return {label: name for label, name in self.session.execute(
            select(SneakerClass.label, SneakerClass.display_name))}

    def add(self, label: str, display_name: str, queries: Iterable[str]) -> SneakerClass:
        """Insert one class."""
        row = SneakerClass(label=label, display_name=display_name, queries=list(queries))
        self.session.add(row)
        return row

    def add_or_rename(self, label: str, display_name: str, queries: Iterable[str]) -> SneakerClass:
        """A new class, or an existing one renamed and active again (its queries kept)."""
        row = self.get(label)
        if row is None:
            return self.add(label, display_name, queries)
        row.display_name, row.active = display_name, True
        return row


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
        return self.MINE if _rowcount(taken) == 1 else self.BUSY

    def finish(self, update_id: int, instance: str, now: datetime) -> None:
        """The update was handled by ``instance``."""
        self.session.execute(update(UpdateClaim).where(UpdateClaim.update_id == update_id,
                                                       UpdateClaim.instance == instance).values(done_at=now))

    def purge_before(self, before: datetime) -> int:
        """Forget claims taken before ``before``."""
        result = self.session.execute(delete(UpdateClaim).where(UpdateClaim.claimed_at < before))
        return _rowcount(result)

    def _insert(self, update_id: int, instance: str, now: datetime) -> bool:
        """Insert the claim unless one exists (no error, no aborted transaction on PostgreSQL)."""
        dialect = self.session.get_bind().dialect.name
        values = {"update_id": update_id, "instance": instance, "claimed_at": now}
        statement: Insert  # each dialect's own INSERT: both have ON CONFLICT DO NOTHING
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert
            statement = (postgresql_insert(UpdateClaim).values(**values)
                         .on_conflict_do_nothing(index_elements=["update_id"]))
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            statement = sqlite_insert(UpdateClaim).values(**values).on_conflict_do_nothing(index_elements=["update_id"])
        return self.session.execute(statement.returning(UpdateClaim.update_id)).first() is not None


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
        return _rowcount(result)



class ModelVersionRepository:
    """The model registry's rows (``bot.registry`` owns the files and the rules)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def current_version(self) -> int | None:
        """The version every bot should answer with (one indexed query)."""
        return self.session.scalar(select(ModelVersion.version).where(ModelVersion.is_current.is_(True)))

    def current(self) -> ModelVersion | None:
        """The current version's row."""
        return self.session.scalar(select(ModelVersion).where(ModelVersion.is_current.is_(True)))

    def get(self, version: int) -> ModelVersion | None:
        """One version's row, or None."""
        return self.session.get(ModelVersion, version)

    def newest_first(self) -> list[ModelVersion]:
        """Every version, newest first."""
        return list(self.session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))

    def highest_version(self) -> int:
        """The highest version number used (0 when none)."""
        return self.session.scalar(select(func.max(ModelVersion.version))) or 0

    def versions_with_status(self, status: str) -> list[int]:
        """The versions in ``status``."""
        return list(self.session.scalars(select(ModelVersion.version).where(ModelVersion.status == status)))

    def newest_decided(self) -> ModelVersion | None:
        """The newest version the gate decided (anything but ``failed``)."""
        return self.session.scalar(select(ModelVersion).where(ModelVersion.status != "failed")
                                   .order_by(ModelVersion.version.desc()).limit(1))

    def add(self, row: ModelVersion) -> ModelVersion:
        """Insert one version."""
        self.session.add(row)
        return row

    def retire_current(self, *, keep: int) -> None:
        """The current version (unless it is ``keep``) is current no more: ``retired``."""
        self.session.execute(update(ModelVersion)
                             .where(ModelVersion.is_current.is_(True), ModelVersion.version != keep)
                             .values(is_current=False, status="retired"))


class ScrapeRunRepository:
    """Scraper runs and their reports (the sink writes them: ``bot.store.image_sink``)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def downloads_since(self, since: datetime) -> int:
        """Images the runs started since ``since`` downloaded, by their reports."""
        reports = self.session.scalars(select(ScrapeRun.report).where(ScrapeRun.started_at >= since))
        return sum(int((report or {}).get("downloaded", 0)) for report in reports)

    def count_finished(self) -> int:
        """Runs that finished."""
        query = select(func.count()).select_from(ScrapeRun).where(ScrapeRun.finished_at.is_not(None))
        return self.session.scalar(query) or 0


class MemoryEntryRepository:
    """The instant-learning memory's rows (``bot.services.learning`` holds the rules)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def find(self, image_sha1: str, user_id: int) -> MemoryEntry | None:
        """This user's answer for this photo, or None."""
        return self.session.scalars(select(MemoryEntry).where(
            MemoryEntry.image_sha1 == image_sha1, MemoryEntry.user_id == user_id)).one_or_none()

    def for_photos(self, backbone: str, image_sha1s: Iterable[str]) -> list[MemoryEntry]:
        """Every answer for these photos, under ``backbone``."""
        return list(self.session.scalars(select(MemoryEntry).where(
            MemoryEntry.backbone == backbone, MemoryEntry.image_sha1.in_(sorted(set(image_sha1s))))))

    def add(self, entry: MemoryEntry) -> MemoryEntry:
        """Insert one answer (flushed: it has its id)."""
        self.session.add(entry)
        self.session.flush()
        return entry

    def delete(self, entry: MemoryEntry) -> None:
        """Remove one answer."""
        self.session.delete(entry)

    def fingerprint(self, backbone: str, global_scope: str) -> tuple[int, int, int]:
        """(rows, sum of ids, sum of ``global_scope`` ids) under ``backbone``: changes with every write."""
        count, id_sum, global_sum = self.session.execute(
            select(func.count(MemoryEntry.id), func.coalesce(func.sum(MemoryEntry.id), 0),
                   func.coalesce(func.sum(MemoryEntry.id).filter(MemoryEntry.scope == global_scope), 0))
            .where(MemoryEntry.backbone == backbone)).one()
        return int(count), int(id_sum), int(global_sum)

    def vectors(self, backbone: str, *, after_id: int = 0) -> list[tuple[int, str, int, str, bytes, str]]:
        """(id, sha1, user, label, vector bytes, scope) of every answer under ``backbone`` with an id
        over ``after_id``, oldest first."""
        query = (select(MemoryEntry.id, MemoryEntry.image_sha1, MemoryEntry.user_id, MemoryEntry.label,
                        MemoryEntry.vector, MemoryEntry.scope)
                 .where(MemoryEntry.backbone == backbone).order_by(MemoryEntry.id))
        if after_id:
            query = query.where(MemoryEntry.id > after_id)
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]


class NotificationRepository:
    """The outbox: outcomes the worker leaves for chats, sent by a bot process."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, chat_id: int, kind: str, payload: dict) -> None:
        """Leave one outcome for ``chat_id``."""
        self.session.add(Notification(chat_id=chat_id, kind=str(kind), payload=payload))

    def unsent(self, limit: int) -> list[tuple[int, int, str, dict]]:
        """(id, chat, kind, payload) of the oldest unsent notifications."""
        query = (select(Notification.id, Notification.chat_id, Notification.kind, Notification.payload)
                 .where(Notification.sent_at.is_(None)).order_by(Notification.id).limit(limit))
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]

    def claim(self, note_id: int, now: datetime) -> bool:
        """Mark it sent unless another process did first; True when this one got it."""
        result = self.session.execute(update(Notification)
                                      .where(Notification.id == note_id, Notification.sent_at.is_(None))
                                      .values(sent_at=now))
        return _rowcount(result) == 1

    def unclaim(self, note_id: int) -> None:
        """Unsent again (sending it failed)."""
        self.session.execute(update(Notification).where(Notification.id == note_id).values(sent_at=None))


class JobRunRepository:
    """The worker's job runs: what ``/status`` and ``/metrics`` show."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, run_id: int | None) -> JobRun | None:
        """The run, or None."""
        return self.session.get(JobRun, run_id) if run_id is not None else None

    def start(self, job_id: str, started_at: datetime, outcome: str | None = None) -> JobRun:
        """A run that has not finished (flushed: it has its id)."""
        row = JobRun(job_id=job_id, started_at=started_at, outcome=outcome)
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: JobRun) -> None:
        """Forget a run."""
        self.session.delete(row)

    def last_finished(self, job_id: str, *, besides: int | None = None) -> tuple[str | None, datetime] | None:
        """(outcome, finished at) of the job's last finished run (other than ``besides``), or None."""
        query = select(JobRun.outcome, JobRun.finished_at).where(JobRun.job_id == job_id,
                                                                 JobRun.finished_at.is_not(None))
        if besides is not None:
            query = query.where(JobRun.id != besides)
        row = self.session.execute(query.order_by(JobRun.finished_at.desc(), JobRun.id.desc()).limit(1)).first()
        return None if row is None else (row.outcome, row.finished_at)

    def newest_per_job(self) -> list[JobRun]:
        """Each job's newest run, finished or not."""
        newest = select(JobRun.job_id, func.max(JobRun.id).label("id")).group_by(JobRun.job_id).subquery()
        return list(self.session.scalars(select(JobRun).join(newest, JobRun.id == newest.c.id)))

    def unfinished(self) -> list[JobRun]:
        """Runs without ``finished_at``."""
        return list(self.session.scalars(select(JobRun).where(JobRun.finished_at.is_(None))))

    def finished_by_status(self) -> list[tuple[str, str, int, datetime | str]]:
        """(job id, status, runs, last finished) of finished runs; status ``failed``, ``interrupted`` or ``ok``
        from the outcome. SQLite gives the last time back as text."""
        status = case((JobRun.outcome.like("failed:%"), "failed"),
                      (JobRun.outcome.like("interrupted%"), "interrupted"), else_="ok")
        # Grouped over a subquery: PostgreSQL does not see a CASE with bound values in GROUP BY as the selected one.
        runs = select(JobRun.job_id, status.label("status"), JobRun.finished_at).where(
            JobRun.finished_at.is_not(None)).subquery()
        query = (select(runs.c.job_id, runs.c.status, func.count(), func.max(runs.c.finished_at))
                 .group_by(runs.c.job_id, runs.c.status))
        return [tuple(row) for row in self.session.execute(query)]  # type: ignore[misc]


class AdminRequestRepository:
    """Work admins asked the worker for (``AdminRequest``)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, kind: str, params: dict, chat_ids: Iterable[int]) -> AdminRequest:
        """Ask for ``kind``; a request for the same job not taken yet takes these params and chats instead."""
        job_id = request_job_id(kind, params.get("label"))
        row = self.session.scalars(select(AdminRequest).where(AdminRequest.job_id == job_id,
                                                              AdminRequest.taken_at.is_(None))
                                   .order_by(AdminRequest.id).limit(1)).first()
        if row is None:
            row = AdminRequest(kind=str(kind), job_id=job_id, params=dict(params), chat_ids=[])
            self.session.add(row)
        then_retrain = bool((row.params or {}).get("then_retrain") or params.get("then_retrain"))
        row.params = {**(row.params or {}), **params, **({"then_retrain": True} if then_retrain else {})}
        row.chat_ids = list(dict.fromkeys([*(row.chat_ids or []), *chat_ids]))
        self.session.flush()
        return row

    def pending(self) -> list[AdminRequest]:
        """Requests no worker has taken, oldest first."""
        return list(self.session.scalars(select(AdminRequest).where(AdminRequest.taken_at.is_(None))
                                         .order_by(AdminRequest.id)))

    def take(self, kind: str, now: datetime | None = None) -> list[AdminRequest]:
        """Take the oldest pending request of ``kind`` and every pending one for the same job (asked again
        meanwhile, perhaps by another bot process); empty when none is pending or another worker took them."""
        first = self.session.scalars(select(AdminRequest).where(AdminRequest.kind == str(kind),
                                                                AdminRequest.taken_at.is_(None))
                                     .order_by(AdminRequest.id).limit(1)).first()
        if first is None:
            return []
        ids = list(self.session.scalars(
            update(AdminRequest).where(AdminRequest.job_id == first.job_id, AdminRequest.taken_at.is_(None))
            .values(taken_at=now or utcnow()).returning(AdminRequest.id)))
        query = select(AdminRequest).where(AdminRequest.id.in_(ids)).order_by(AdminRequest.id)
        return list(self.session.scalars(query, execution_options={"populate_existing": True}))


class ScheduledJobRepository:
    """APScheduler's job table, read only: the worker's scheduler owns it."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def next_runs(self) -> dict[str, datetime | None]:
        """Each stored job's next run time (UTC); empty before a worker created the table."""
        bind = self.session.get_bind()
        if not inspect(bind).has_table(JOB_TABLE):
            return {}
        table = Table(JOB_TABLE, MetaData(), autoload_with=bind)
        rows = self.session.execute(select(table.c.id, table.c.next_run_time)).all()
        return {job_id: datetime.fromtimestamp(ts, UTC) if ts is not None else None for job_id, ts in rows}
