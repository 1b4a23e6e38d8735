"""Identify: photo bytes in, a stored prediction with human-readable guesses out.

Everything here is synchronous and CPU- or disk-bound; handlers call ``IdentifyService.run``,
which does the work on a small dedicated thread pool so the event loop never waits on it.
The photo is kept in ``<data_dir>/pending/<sha1>.jpg`` until feedback files it as training
data or retention deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from bot.services.errors import PhotoRejected
from bot.services.models import ModelHolder, PredictionLike, input_side
from bot.store.repositories import PredictionRepository, UserRepository
from bot.store.retry import DatabaseUnavailable, retry_policy
from ml.atomic import atomic_write_bytes
from ml.errors import BadImage, CorruptImage, ImageTooLarge, ImageTooSmall, NotAnImage
from ml.predictor import Guess  # one guess as the bot shows it (the model's own type)

__all__ = ["Guess", "IdentifyResult", "IdentifyService", "PhotoRequest", "Refiner", "rejection_reason"]

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_REMEMBERED_USERS = 100_000  # users whose row is known to be stored (skips a SELECT per photo)
# bytes (+ the smallest side the model needs, None when unknown) -> RGB PIL image, raising ml.errors.BadImage
Decoder = Callable[[bytes, int | None], Any]


@dataclass(frozen=True)
class PhotoRequest:
    """One photo a user sent."""

    data: bytes
    user_id: int
    chat_id: int
    message_id: int
    username: str | None = None


@dataclass(frozen=True)
class IdentifyResult:
    """A stored prediction, ready to render."""

    prediction_id: int
    verdict: str
    guesses: list[Guess]
    model_version: int | None
    latency_ms: float
    reply_message_id: int | None = None  # set when this photo was answered before (a repeated update)
    detail: str | None = None  # an ml.verdicts.Detail value: "other_footwear" words a not_sneaker differently


class Refiner(Protocol):
    """Adjusts a model's answer for a user (the learning loop's memory plugs in here)."""

    def refine(self, user_id: int, image_sha1: str, prediction: PredictionLike) -> PredictionLike: ...


# Which reply each kind of unusable image gets (keys of ``bot.render.REJECTIONS``).
BAD_IMAGE_REASONS: dict[type[BadImage], str] = {
    NotAnImage: "not_an_image",
    CorruptImage: "corrupt",
    ImageTooSmall: "too_small",
    ImageTooLarge: "too_many_pixels",
}


def rejection_reason(exc: BadImage) -> str:
    """The reply key for an ``ml.errors.BadImage``, most specific class first."""
    return next((BAD_IMAGE_REASONS[c] for c in type(exc).__mro__ if c in BAD_IMAGE_REASONS), "corrupt")


class IdentifyService:
    """Decode, predict, keep the photo pending and store the prediction.

    Every database step is one unit of work under the engine's retry policy
    (``bot.store.retry``): while the database is away the photo waits on this service's
    thread, and is answered once it is back. Past the budget the photo is rejected with
    reason ``db_unavailable`` ("try again in a moment") and nothing of it is kept.
    """

    def __init__(self, sessions: sessionmaker[Session], models: ModelHolder, decode: Decoder, *,
                 data_dir: Path, admin_ids: frozenset[int], top_k: int = 3, threads: int = 2) -> None:
        self.sessions = sessions
        self.models = models
        self.decode = decode
        self.pending_dir = data_dir / "pending"
        self.admin_ids = admin_ids
        self.top_k = top_k
        self.refiners: list[Refiner] = []
        self._ensured_users: set[tuple[int, str | None, bool]] = set()  # (id, username, admin) stored
        self.executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="identify")
        self.retry = retry_policy(sessions)

    async def run(self, request: PhotoRequest) -> IdentifyResult:
        """``identify`` off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.identify, request)

    def identify(self, request: PhotoRequest) -> IdentifyResult:
        """The whole pipeline for one photo; raises ``PhotoRejected`` for unusable files, and
        with reason ``db_unavailable`` when the database stayed away past the retry budget."""
        try:
            return self._identify(request)
        except DatabaseUnavailable as exc:
            log.warning("message %s in chat %s not answered: %s", request.message_id, request.chat_id, exc)
            raise PhotoRejected("db_unavailable") from exc

    def _identify(self, request: PhotoRequest) -> IdentifyResult:
        started = time.perf_counter()
        earlier = self.earlier_answer(request)
        if earlier is not None:
            return earlier
        sha1 = hashlib.sha1(request.data).hexdigest()
        served = self.models.current()
        try:  # decoded once, at the scale the model needs; the bytes are what is kept
            image = self.decode(request.data, input_side(served.identifier))
        except BadImage as exc:
            raise PhotoRejected(rejection_reason(exc)) from exc
        except (OSError, ValueError, SyntaxError) as exc:  # a decoder error the ml boundary let through
            raise PhotoRejected("corrupt") from exc
        prediction = served.identifier.predict([image], k=self.top_k)[0]
        for refiner in self.refiners:
            prediction = refiner.refine(request.user_id, sha1, prediction)
        pending, created = self._keep_pending(request.data, image, sha1)
        guesses = [Guess(g.label, g.display_name, float(g.score)) for g in prediction.top]
        detail = prediction.detail
        latency_ms = (time.perf_counter() - started) * 1000
        in_doubt: list[int] = []  # attempts whose COMMIT failed: its outcome is unknown
        try:
            prediction_id = self.store(request, sha1, pending, served.version, prediction.verdict, guesses,
                                       latency_ms, detail=detail, in_doubt=in_doubt)
        except DatabaseUnavailable:
            if created and not in_doubt:  # no row refers to it: nothing of this photo stays
                pending.unlink(missing_ok=True)
            raise
        return IdentifyResult(prediction_id, prediction.verdict, guesses, served.version, latency_ms, detail=detail)

    def earlier_answer(self, request: PhotoRequest) -> IdentifyResult | None:
        """The stored answer when this very message was identified before, else None.

        Why: Telegram delivers an update again when the bot stopped before confirming it (a
        crash, a kill). The photo then gets the answer it already has, stored once, and the
        handler sends it only if it was never sent.
        """
        def look_up(_attempt: int) -> IdentifyResult | None:
            with self.sessions() as session:
                row = PredictionRepository(session).for_message(request.chat_id, request.message_id)
                if row is None:
                    return None
                guesses = [Guess(g["label"], self.models.display_name(g["label"]), float(g["score"]))
                           for g in row.top]
                return IdentifyResult(row.id, row.verdict, guesses, row.model_version, row.latency_ms or 0.0,
                                      row.reply_message_id, row.detail)

        return self.retry.run("look up an earlier answer", look_up, read_only=True)

    def keep_pending(self, data: bytes, image: Any, sha1: str) -> Path:
        """Keep the photo once per content hash until someone gives feedback.

        JPEGs (all Telegram photos) are kept byte for byte; other formats are saved as JPEG.
        """
        return self._keep_pending(data, image, sha1)[0]

    def _keep_pending(self, data: bytes, image: Any, sha1: str) -> tuple[Path, bool]:
        """``keep_pending``, and whether this call wrote the file."""
        path = self.pending_dir / f"{sha1}.jpg"
        created = not path.exists()
        if created:
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            if data[:3] != JPEG_MAGIC:
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=92)
                data = buffer.getvalue()
            atomic_write_bytes(path, data)  # no half-written photo for a reader, whatever the replica
        return path, created

    def store(self, request: PhotoRequest, sha1: str, pending: Path, version: int | None, verdict: str,
              guesses: list[Guess], latency_ms: float, *, detail: str | None = None,
              in_doubt: list[int] | None = None) -> int:
        """One prediction row (and the user on first sight), committed in one transaction.

        The ``detail`` is stored with the verdict: an answer sent again from its row (a repeated
        update, ``earlier_answer``) must say "a shoe, but not a sneaker" as the first one did.

        Retried whole while the database is away; a retry first looks for the row of an attempt
        whose COMMIT went through unseen (one prediction per chat and message). Attempts whose
        COMMIT failed are appended to ``in_doubt``.
        """
        is_admin = request.user_id in self.admin_ids
        user_key = (request.user_id, request.username, is_admin)
        doubts = in_doubt if in_doubt is not None else []

        def insert(attempt: int) -> int:
            with self.sessions.begin() as session:
                predictions = PredictionRepository(session)
                if attempt > 1 and (stored := predictions.for_message(request.chat_id, request.message_id)):
                    return stored.id
                if user_key not in self._ensured_users:  # users are never deleted: once per process is enough
                    UserRepository(session).ensure(request.user_id, username=request.username, is_admin=is_admin)
                prediction_id = predictions.insert(
                    user_id=request.user_id, chat_id=request.chat_id, message_id=request.message_id,
                    image_sha1=sha1, pending_path=str(pending), model_version=version, verdict=verdict, detail=detail,
                    top=[{"label": g.label, "score": round(g.score, 6)} for g in guesses],
                    latency_ms=round(latency_ms, 2))
                doubts.append(attempt)  # the block commits next
            doubts.remove(attempt)
            return prediction_id

        prediction_id = self.retry.run("store a prediction", insert)
        if len(self._ensured_users) >= MAX_REMEMBERED_USERS:  # a bound on memory, not on correctness
            self._ensured_users.clear()
        self._ensured_users.add(user_key)
        return prediction_id

    def attach_reply(self, prediction_id: int, reply_message_id: int) -> None:
        """Remember which bot message shows this prediction (one UPDATE, retried while the database is away).

        The answer is already sent when this runs: past the retry budget it is logged, not
        raised (the user must not get an error after a good answer). Only a repeat of the same
        update (the bot crashed before confirming it) could then be answered a second time.
        """
        def update(_attempt: int) -> None:
            with self.sessions.begin() as session:
                PredictionRepository(session).set_reply(prediction_id, reply_message_id)

        try:
            self.retry.run("remember the reply", update)
        except DatabaseUnavailable as exc:
            log.warning("reply %s of prediction %s not recorded: %s", reply_message_id, prediction_id, exc)

    def close(self) -> None:
        """Stop the worker threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)
