"""Instant learning: a confirmation or correction changes the very next answer.

Every confirmed or corrected photo is remembered as the embedding the current model
gives it (``memory_entries``), and each answer is blended with the label of the nearest
remembered near-identical photo (``ml.memory.EmbeddingMemory``). Who may see an entry
bounds its influence, so one user cannot poison answers for everyone:

- an admin's answer is **global** at once (and overrides other global answers for
  that photo, which go back to counting for their owners only);
- an ordinary user's answer is **private**: it counts for that user at once, and for
  everyone once an admin gives the same label to that photo (accepts it) or
  ``memory_agree_users`` distinct users gave it the same label.

"That photo" means the same or a near-identical one (cosine similarity of the
embeddings at least ``memory_match_threshold``). The rule is documented in
``docs/learning-loop.md``.

The service plugs into the bot as the identify service's ``Refiner`` and the feedback
service's ``FeedbackListener``. Its in-process memory is rebuilt from the database when
the table changed (one cheap query per answer), so several bot processes agree.

Its reads and writes are units of work under the engine's retry policy (``bot.store.retry``):
a remembered answer is a delete-then-insert keyed by photo and user, so a retried unit never
stores it twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.services.feedback import FeedbackEvent
from bot.services.identify import Guess
from bot.services.models import ModelHolder
from bot.store.models import MemoryEntry
from bot.store.retry import DatabaseUnavailable, retry_policy
from ml.memory import EmbeddingMemory, MemoryItem, l2_normalise

log = logging.getLogger(__name__)

GLOBAL = "global"
PRIVATE = "user"
#: Memory weight from which a remembered label makes the answer confident.
CONFIDENT_WEIGHT = 0.5
# How long a process trusts its copy of the memory before asking the database whether another
# process (a second bot) changed it. This process's own writes are seen at once.
RECHECK_S = 2.0


@dataclass(frozen=True)
class MemoryRules:
    """The knobs of instant learning (from the settings)."""

    admin_ids: frozenset[int]
    agree_users: int = 3
    match_threshold: float = 0.97
    max_weight: float = 0.9


@dataclass(frozen=True)
class RefinedPrediction:
    """A prediction after the memory had its say (satisfies ``PredictionLike``)."""

    top: list[Guess]
    verdict: str
    footwear_score: float | None
    embedding: np.ndarray | None
    memory_label: str | None = None


# image path -> (backbone, embedding), or None when the served model gives no embeddings
Embedder = Callable[[Path], "tuple[str, np.ndarray] | None"]


def embedder_for(models: ModelHolder, decode: Callable[[bytes], Any]) -> Embedder:
    """Embed a stored photo with the served model (the same features answers are made of)."""

    def embed(path: Path) -> tuple[str, np.ndarray] | None:
        identifier = models.current().identifier
        if not hasattr(identifier, "embed"):
            return None
        vector = np.asarray(identifier.embed([decode(Path(path).read_bytes())]))[0]
        return backbone_of(identifier), vector

    return embed


def backbone_of(identifier: Any) -> str:
    """The backbone name a served model's embeddings come from."""
    info = getattr(identifier, "info", None)
    backbone = getattr(info, "backbone", None) or "unknown"
    return backbone if isinstance(backbone, str) else getattr(backbone, "name", str(backbone))


def learning_service_for(sessions: sessionmaker[Session], models: ModelHolder, decode: Callable[[bytes], Any],
                         rules: MemoryRules) -> LearningService:
    """The service wired to the served model (how the bot builds it)."""
    return LearningService(
        sessions,
        rules,
        embed=embedder_for(models, decode),
        current_backbone=lambda: backbone_of(models.current().identifier),
        display_name=models.display_name,
    )


class LearningService:
    """The memory of user-labelled photos, its scope rules, and refined answers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        rules: MemoryRules,
        *,
        embed: Embedder,
        current_backbone: Callable[[], str],
        display_name: Callable[[str], str],
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.rules = rules
        self.embed = embed
        self.current_backbone = current_backbone
        self.display_name = display_name
        self.recheck_s, self._clock = recheck_s, clock
        self._lock = threading.Lock()
        self._fingerprint: tuple | None = None
        self._memory: EmbeddingMemory | None = None
        self._trusted_until = float("-inf")  # no database check needed before this clock time
        self.retry = retry_policy(sessions)

    # --- FeedbackListener -----------------------------------------------------
    def on_feedback(self, event: FeedbackEvent) -> None:
        """Remember a confirmed or corrected photo, then apply the scope rules.

        The feedback is already stored when this runs: a failure here is logged and costs
        only the instant effect (the photo still reaches the next retrain).
        """
        try:
            embedded = self.embed(event.image_path)
            if embedded is None:
                return
            backbone, vector = embedded
            self.remember(event.image_sha1, event.user_id, event.label, backbone, vector, is_admin=event.is_admin)
        except Exception:
            log.exception("memory: could not remember %s for user %s", event.image_sha1[:10], event.user_id)

    def on_withdrawn(self, user_id: int, image_sha1: str) -> None:
        """Forget this user's label for the photo: they now say its model is not listed.

        The "not listed" is already stored when this runs: past the retry budget the failure is
        logged, as in ``on_feedback``.
        """
        def forget(_attempt: int) -> None:
            with self.sessions.begin() as session:
                session.execute(
                    delete(MemoryEntry).where(MemoryEntry.image_sha1 == image_sha1, MemoryEntry.user_id == user_id)
                )

        try:
            self.retry.run("forget a memory entry", forget)
        except DatabaseUnavailable:
            log.exception("memory: could not forget %s for user %s", image_sha1[:10], user_id)
            return
        self._changed()
        log.info("memory: user %s withdrew their label for %s", user_id, image_sha1[:10])

    def remember(
        self, sha1: str, user_id: int, label: str, backbone: str, vector: np.ndarray, *, is_admin: bool
    ) -> str:
        """Store one answer (the user's last answer for this photo counts); returns its scope."""
        vector = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(-1))
        own_scope = GLOBAL if is_admin else PRIVATE

        def store(_attempt: int) -> str:
            scope = own_scope
            with self.sessions.begin() as session:
                # A changed answer is a new row: readers notice the change by its newer time.
                session.execute(
                    delete(MemoryEntry).where(MemoryEntry.image_sha1 == sha1, MemoryEntry.user_id == user_id))
                entry = MemoryEntry(image_sha1=sha1, user_id=user_id, label=label, backbone=backbone,
                                    embedding=[round(float(v), 6) for v in vector], scope=scope)
                session.add(entry)
                session.flush()
                similar = self._near_identical(session, backbone, vector)
                if is_admin:
                    self._admin_decides(session, similar, label)
                else:
                    scope = self._maybe_agreed(session, similar, label) or scope
            return scope

        scope = self.retry.run("remember an answer", store)
        self._changed()
        log.info("memory: user %s labelled %s as %s (%s)", user_id, sha1[:10], label, scope)
        return scope

    # --- Refiner --------------------------------------------------------------
    def refine(self, user_id: int, image_sha1: str, prediction: Any) -> Any:
        """Blend the model's answer with what this user may see of the memory."""
        embedding = getattr(prediction, "embedding", None)
        if embedding is None:
            return prediction
        memory = self._current_memory(self.current_backbone(), len(np.asarray(embedding).reshape(-1)))
        if memory is None:
            return prediction
        scores = {guess.label: float(guess.score) for guess in prediction.top}
        blended, match = memory.combine(scores, embedding, user_id=user_id)
        if match is None:
            return prediction
        k = max(1, len(prediction.top))
        ranked = sorted(blended.items(), key=lambda item: item[1], reverse=True)[:k]
        top = [Guess(label, self.display_name(label), score) for label, score in ranked]
        verdict = prediction.verdict
        if top[0].label == match.label and match.weight >= CONFIDENT_WEIGHT:
            verdict = "sneaker"  # a person told us what this very photo is
        return RefinedPrediction(top, verdict, prediction.footwear_score, embedding, match.label)

    # --- scope rules ------------------------------------------------------------
    def _near_identical(self, session: Session, backbone: str, vector: np.ndarray) -> list[MemoryEntry]:
        rows = list(session.scalars(select(MemoryEntry).where(MemoryEntry.backbone == backbone)))
        if not rows:
            return []
        matrix = l2_normalise(np.asarray([row.embedding for row in rows], dtype=np.float32))
        sims = matrix @ vector
        return [row for row, sim in zip(rows, sims, strict=True) if sim >= self.rules.match_threshold]

    def _admin_decides(self, session: Session, similar: Sequence[MemoryEntry], label: str) -> None:
        """An admin's label is the one everybody sees for this photo."""
        for row in similar:
            if row.label == label:
                row.scope = GLOBAL
            elif row.scope == GLOBAL and row.user_id not in self.rules.admin_ids:
                row.scope = PRIVATE

    def _maybe_agreed(self, session: Session, similar: Sequence[MemoryEntry], label: str) -> str | None:
        """Enough distinct users agree (or an admin already said so): make it global."""
        agreeing = [row for row in similar if row.label == label]
        users = {row.user_id for row in agreeing}
        admin_said_so = any(row.user_id in self.rules.admin_ids for row in agreeing)
        admin_said_other = any(row.user_id in self.rules.admin_ids and row.label != label for row in similar)
        if admin_said_other or not (admin_said_so or len(users) >= self.rules.agree_users):
            return None
        session.execute(
            update(MemoryEntry).where(MemoryEntry.id.in_([row.id for row in agreeing])).values(scope=GLOBAL)
        )
        return GLOBAL

    # --- the in-process memory ---------------------------------------------------
    def _changed(self) -> None:
        """This process wrote the memory: the next answer reads it again."""
        with self._lock:
            self._trusted_until = float("-inf")

    def _current_memory(self, backbone: str, dim: int) -> EmbeddingMemory | None:
        """The memory for ``backbone``, checked against the database at most every ``recheck_s``.

        Why: the check is an aggregate query, and it ran for every photo (over a quarter of the
        bot's database time per photo under load).
        """
        with self._lock:
            now = self._clock()
            fresh = (self._memory is not None and self._memory.dim == dim and now < self._trusted_until
                     and self._fingerprint is not None and self._fingerprint[0] == backbone)
            if not fresh:
                fingerprint = self._read_fingerprint(backbone)
                if fingerprint != self._fingerprint or self._memory is None or self._memory.dim != dim:
                    self._memory = self._load(backbone, dim)
                    self._fingerprint = fingerprint
                self._trusted_until = now + self.recheck_s
            return self._memory if len(self._memory) else None

    def _read_fingerprint(self, backbone: str) -> tuple:
        def read(_attempt: int) -> tuple:
            with self.sessions() as session:
                return tuple(session.execute(
                    select(
                        func.count(MemoryEntry.id),
                        func.max(MemoryEntry.id),
                        func.max(MemoryEntry.created_at),  # ids of deleted rows may be reused
                        func.count(MemoryEntry.id).filter(MemoryEntry.scope == GLOBAL),
                    ).where(MemoryEntry.backbone == backbone)
                ).one())

        return (backbone, *self.retry.run("read the memory's fingerprint", read, read_only=True))

    def _load(self, backbone: str, dim: int) -> EmbeddingMemory:
        def read(_attempt: int) -> list:
            with self.sessions() as session:
                return list(session.execute(
                    select(MemoryEntry.image_sha1, MemoryEntry.user_id, MemoryEntry.label, MemoryEntry.embedding,
                           MemoryEntry.scope).where(MemoryEntry.backbone == backbone).order_by(MemoryEntry.id)
                ).all())

        rows = self.retry.run("load the memory", read, read_only=True)
        items = (
            MemoryItem(f"{sha1}:{user_id}", label, np.asarray(embedding, dtype=np.float32),
                       None if scope == GLOBAL else user_id)
            for sha1, user_id, label, embedding, scope in rows
            if len(embedding) == dim
        )
        return EmbeddingMemory.from_items(
            dim, items, match_threshold=self.rules.match_threshold, max_weight=self.rules.max_weight
        )
