"""The database schema. Alembic migrations under ``bot/store/migrations`` follow it.

One database holds everything that must survive a restart: users, predictions,
feedback, images (from users, the scraper and datasets), the sneaker catalogue,
name suggestions, the model registry, scrape runs, the admins' requests to the worker
and the worker's messages back (the outbox). APScheduler keeps its own job table
(``JOB_TABLE``) in the same database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: APScheduler's job table (``bot.jobs.scheduler`` writes it; ``/status`` reads the next run times).
JOB_TABLE = "apscheduler_jobs"


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the store uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


class User(Base):
    """A Telegram user who has talked to the bot."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    username: Mapped[str | None] = mapped_column(String(64))
    # The prediction whose "Not listed" the user pressed: their next text is the name.
    awaiting_suggestion_for: Mapped[int | None] = mapped_column(Integer)


class Prediction(Base):
    """One answer the bot gave to one photo. ``id`` is the short id in button data."""

    __tablename__ = "predictions"
    # a photo update Telegram delivers again (the bot crashed before confirming it) finds its answer
    __table_args__ = (Index("ix_predictions_chat_message", "chat_id", "message_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)  # the user's photo message
    reply_message_id: Mapped[int | None] = mapped_column(BigInteger)  # the bot's answer
    image_sha1: Mapped[str] = mapped_column(String(40), index=True)
    # Where the photo waits until feedback files it or retention deletes it.
    pending_path: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[int | None] = mapped_column(Integer)
    top: Mapped[list] = mapped_column(JSON)  # [{"label": ..., "score": ...}, ...]
    # An ml.verdicts.Verdict: sneaker | unsure | unknown_sneaker | not_sneaker (at most 15 characters).
    verdict: Mapped[str] = mapped_column(String(16))
    # Why the verdict was given, where the reply words it differently (an ml.verdicts.Detail,
    # "other_footwear": a shoe, not a sneaker); None otherwise and on rows from before it existed.
    detail: Mapped[str | None] = mapped_column(String(16))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    feedback: Mapped[list[Feedback]] = relationship(back_populates="prediction")


class Feedback(Base):
    """A user's verdict on a prediction; the latest row per prediction counts."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))  # correct | wrong | not_listed
    label: Mapped[str | None] = mapped_column(String(64))  # the confirmed or chosen label
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Set when a retrain has used this feedback, so "new corrections" can be counted.
    consumed_by_version: Mapped[int | None] = mapped_column(Integer)

    prediction: Mapped[Prediction] = relationship(back_populates="feedback")


class Image(Base):
    """A labelled image on disk, stored once by content hash."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha1: Mapped[str] = mapped_column(String(40), unique=True)
    # "<phash hex>:<colour signature hex>" (51 characters, scraper.images.image_hash); rows
    # scraped before colour signatures hold the 16-hex pHash alone.
    phash: Mapped[str | None] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    label: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(16))  # user | scraper | dataset
    status: Mapped[str] = mapped_column(String(16), default="train")  # train | review | rejected
    split: Mapped[str | None] = mapped_column(String(8))  # train | val | test, fixed once chosen
    source_url: Mapped[str | None] = mapped_column(Text)
    query: Mapped[str | None] = mapped_column(Text)
    scraper_source: Mapped[str | None] = mapped_column(String(32))  # bing | google | google-selenium
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SneakerClass(Base):
    """The catalogue: one row per sneaker model the bot knows or should learn."""

    __tablename__ = "sneaker_classes"

    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128))
    queries: Mapped[list] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suggestion(Base):
    """A name a user typed under "Not listed": never a label until an admin accepts it."""

    __tablename__ = "suggestions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|accepted|rejected
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """The model registry: every trained model, promoted or not."""

    __tablename__ = "model_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(Text)  # model directory (absolute or data-dir relative)
    status: Mapped[str] = mapped_column(String(16))  # candidate | promoted | rejected | retired
    is_current: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    backbone: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    data_snapshot: Mapped[dict] = mapped_column(JSON, default=dict)  # per-class counts, sha1s
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()


class ScrapeRun(Base):
    """One scraper run and its report."""

    __tablename__ = "scrape_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(64), index=True)
    report: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class RateEvent(Base):
    """Per-user photo timestamps for the rate limit (survives restarts)."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_user_time", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UpdateClaim(Base):
    """Which bot process took a Telegram update, and whether it finished (webhook replicas).

    Telegram delivers an update again when it did not get the webhook's answer; behind a proxy
    the second delivery may reach another replica while the first still works on it. The first
    process to insert the row handles the update; a claim not finished within the lease (its
    process died) may be taken over. Rows older than a day are purged (Telegram keeps updates 24 h).
    """

    __tablename__ = "update_claims"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    instance: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    done_at: Mapped[datetime | None] = mapped_column(default=None)


class MemoryEntry(Base):
    """Instant-learning memory: an embedding of a user-labelled photo.

    ``scope`` is ``global`` (admin, accepted, or agreed by enough users) or
    ``user`` (counts only for ``user_id`` until promoted).
    """

    __tablename__ = "memory_entries"
    __table_args__ = (UniqueConstraint("image_sha1", "user_id", name="uq_memory_image_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_sha1: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # the L2-normalised embedding, little-endian float32
    scope: Mapped[str] = mapped_column(String(8), default="user")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationKind(StrEnum):
    """What a notification reports; its ``payload`` holds the values, ``bot.render_admin`` the words."""

    TEXT = "text"  # {"text"}: a plain message (rows from before the outbox was structured)
    RETRAIN_STAGE = "retrain_stage"  # {"stage", "done", "total"}
    RETRAIN_RESULT = "retrain_result"  # ``RetrainOutcome.as_payload()``
    RETRAIN_FAILED = "retrain_failed"  # {"reason", "current_version", "job": the automatic job's id or None}
    SCRAPE_RESULT = "scrape_result"  # {"label", "found", "stored", "duplicates", "rejected", "failed", "blocked",
    #                                   "retrain_queued"}
    SCRAPE_SKIPPED = "scrape_skipped"  # {"label", "budget", "retrain_queued"}: today's budget is used up
    WORKER_RECOVERED = "worker_recovered"  # {"summary", "current_version"}: a restart cleared a killed retrain


class Notification(Base):
    """An outcome for a chat, written by the worker and sent by a bot process (the outbox).

    The worker needs no Telegram token and may run on another machine: it leaves what
    happened here as a ``kind`` and a JSON ``payload`` (e.g. ``retrain_result`` with the
    versions and metrics), and the bot renders it (``bot.render_admin.notification``) when it
    sends it, so the wording lives in one place and the worker never imports Telegram code.
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(index=True)


class RequestKind(StrEnum):
    """What an admin asked the worker for."""

    RETRAIN = "retrain"  # {} (``/retrain``; an ``/addclass`` scrape asks for one when it is done)
    SCRAPE = "scrape"  # {"label", "max_items", "then_retrain"} (``/scrape``, ``/addclass``)


def request_job_id(kind: str, label: str | None = None) -> str:
    """The job a request runs as, in ``job_runs`` and ``/status``: ``retrain_now`` or ``scrape_now:<label>``."""
    return "retrain_now" if kind == RequestKind.RETRAIN else f"scrape_now:{label}"


class AdminRequest(Base):
    """Work an admin asked the worker for, waiting for the worker's request jobs to take it.

    Why a row and not a one-off scheduler job: the bot then needs no scheduler and no job
    function's dotted path, the worker reads requests with an ordinary interval job, and a
    request asked for twice before the worker looked (same ``job_id``) runs once, telling
    every chat that asked. ``taken_at`` is set when a worker takes it.
    """

    __tablename__ = "admin_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str] = mapped_column(String(96), index=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    chat_ids: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    taken_at: Mapped[datetime | None] = mapped_column(index=True)


class JobRun(Base):
    """One run of a worker job, for ``/status`` ("last runs") and to audit the scheduler."""

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_job_started", "job_id", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    outcome: Mapped[str | None] = mapped_column(Text)  # a one-line summary, or the error
