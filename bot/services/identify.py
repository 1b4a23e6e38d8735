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
import threading
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
from ml.errors import BadImage, CorruptImage, ImageTooLarge, ImageTooSmall, NotAnImage
from ml.predictor import Guess  # one guess as the bot shows it (the model's own type)

__all__ = ["Guess", "IdentifyResult", "IdentifyService", "PhotoRequest", "Refiner", "rejection_reason"]

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
    """Decode, predict, keep the photo pending and store the prediction."""

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

    async def run(self, request: PhotoRequest) -> IdentifyResult:
        """``identify`` off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.identify, request)

    def identify(self, request: PhotoRequest) -> IdentifyResult:
        """The whole pipeline for one photo; raises ``PhotoRejected`` for unusable files."""
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
        pending = self.keep_pending(request.data, image, sha1)
        guesses = [Guess(g.label, g.display_name, float(g.score)) for g in prediction.top]
        latency_ms = (time.perf_counter() - started) * 1000
        prediction_id = self.store(request, sha1, pending, served.version, prediction.verdict, guesses, latency_ms)
        return IdentifyResult(prediction_id, prediction.verdict, guesses, served.version, latency_ms)

    def earlier_answer(self, request: PhotoRequest) -> IdentifyResult | None:
        """The stored answer when this very message was identified before, else None.

        Why: Telegram delivers an update again when the bot stopped before confirming it (a
        crash, a kill). The photo then gets the answer it already has, stored once, and the
        handler sends it only if it was never sent.
        """
        with self.sessions() as session:
            row = PredictionRepository(session).for_message(request.chat_id, request.message_id)
            if row is None:
                return None
            guesses = [Guess(g["label"], self.models.display_name(g["label"]), float(g["score"])) for g in row.top]
            return IdentifyResult(row.id, row.verdict, guesses, row.model_version, row.latency_ms or 0.0,
                                  row.reply_message_id)

    def keep_pending(self, data: bytes, image: Any, sha1: str) -> Path:
        """Keep the photo once per content hash until someone gives feedback.

        JPEGs (all Telegram photos) are kept byte for byte; other formats are saved as JPEG.
        """
        path = self.pending_dir / f"{sha1}.jpg"
        if not path.exists():
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            if data[:3] != JPEG_MAGIC:
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=92)
                data = buffer.getvalue()
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def store(self, request: PhotoRequest, sha1: str, pending: Path, version: int | None, verdict: str,
              guesses: list[Guess], latency_ms: float) -> int:
        """One prediction row (and the user on first sight), committed in one transaction."""
        is_admin = request.user_id in self.admin_ids
        user_key = (request.user_id, request.username, is_admin)
        with self.sessions.begin() as session:
            if user_key not in self._ensured_users:  # users are never deleted: once per process is enough
                UserRepository(session).ensure(request.user_id, username=request.username, is_admin=is_admin)
            prediction_id = PredictionRepository(session).insert(
                user_id=request.user_id, chat_id=request.chat_id, message_id=request.message_id,
                image_sha1=sha1, pending_path=str(pending), model_version=version, verdict=verdict,
                top=[{"label": g.label, "score": round(g.score, 6)} for g in guesses],
                latency_ms=round(latency_ms, 2))
        if len(self._ensured_users) >= MAX_REMEMBERED_USERS:  # a bound on memory, not on correctness
            self._ensured_users.clear()
        self._ensured_users.add(user_key)
        return prediction_id

    def attach_reply(self, prediction_id: int, reply_message_id: int) -> None:
        """Remember which bot message shows this prediction (one UPDATE)."""
        with self.sessions.begin() as session:
            PredictionRepository(session).set_reply(prediction_id, reply_message_id)

    def close(self) -> None:
        """Stop the worker threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)
