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
service's ``FeedbackListener``. What a press costs does not grow with the memory (it grew
with every answer learnt, until the bot fell behind: docs/bot.md, "Load and soak"):

- the embedding made when the photo was identified is kept (``RECENT_EMBEDDINGS`` of them), so
  a press runs the model again only when another process identified the photo;
- near-identical photos are found in the in-process matrix, and only their rows are read;
- this process's own writes are applied to its in-process memory, together with the change
  they make to the table's *fingerprint* (row count, sum of ids, sum of global ids). The
  fingerprint is read at most every ``RECHECK_S``; when it is not the one expected, another
  process (a second bot) wrote, and the memory is read again in full (float32 bytes, fast).

Its reads and writes are units of work under the engine's retry policy (``bot.store.retry``):
a remembered answer is a delete-then-insert keyed by photo and user, so a retried unit never
stores it twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from bot.services.feedback import FeedbackEvent
from bot.services.identify import Guess
from bot.services.models import ModelHolder
from bot.store.models import MemoryEntry
from bot.store.repositories import MemoryEntryRepository
from bot.store.retry import DatabaseUnavailable, retry_policy
from ml.memory import EmbeddingMemory, MemoryItem, l2_normalise
from ml.verdicts import Verdict

log = logging.getLogger(__name__)

GLOBAL = "global"
PRIVATE = "user"
#: Memory weight from which a remembered label makes the answer confident.
CONFIDENT_WEIGHT = 0.5
# How long a process trusts its copy of the memory before asking the database whether another
# process (a second bot) changed it. This process's own writes are seen at once.
RECHECK_S = 2.0
#: Embeddings of recently identified photos kept for their button press (5 KB each).
RECENT_EMBEDDINGS = 2048


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
    detail: str | None = None  # the model's ``Prediction.detail``, kept while its verdict stands


@dataclass
class MemoryChange:
    """What one write did to ``memory_entries``: applied to the in-process memory and its fingerprint."""

    removed: list[tuple[int, str, str]] = field(default_factory=list)  # (id, key, scope) of deleted rows
    added: list[tuple[int, str, int, str, np.ndarray, str]] = field(default_factory=list)  # id, key, user, label,
    # vector, scope
    rescoped: list[tuple[int, str, int, str, str]] = field(default_factory=list)  # id, key, user, old, new scope

    def fingerprint_after(self, fingerprint: tuple) -> tuple:
        """``(backbone, count, sum of ids, sum of global ids)`` once this change is made."""
        backbone, count, id_sum, global_sum = fingerprint
        for row_id, _key, scope in self.removed:
            count, id_sum = count - 1, id_sum - row_id
            global_sum -= row_id if scope == GLOBAL else 0
        for row_id, _key, _user, _label, _vector, scope in self.added:
            count, id_sum = count + 1, id_sum + row_id
            global_sum += row_id if scope == GLOBAL else 0
        for row_id, _key, _user, old, new in self.rescoped:
            global_sum += row_id * ((new == GLOBAL) - (old == GLOBAL))
        return backbone, count, id_sum, global_sum


def memory_key(sha1: str, user_id: int) -> str:
    """The in-process memory's key of one user's answer for one photo."""
    return f"{sha1}:{user_id}"


def vector_of(row_vector: bytes) -> np.ndarray:
    """A stored embedding (little-endian float32 bytes) as an array."""
    return np.frombuffer(row_vector, dtype="<f4").astype(np.float32)


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
        self._lock = threading.RLock()  # guards the in-process memory, changed in place
        self._fingerprint: tuple | None = None  # the table as the in-process memory knows it
        self._last_id = 0  # the highest row id the in-process memory holds: newer rows are read alone
        self._memory: EmbeddingMemory | None = None
        self._trusted_until = float("-inf")  # no database check needed before this clock time
        self._recent: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()  # sha1 -> (backbone, embedding)
        self.retry = retry_policy(sessions)

    # --- FeedbackListener -----------------------------------------------------
    def on_feedback(self, event: FeedbackEvent) -> None:
        """Remember a confirmed or corrected photo, then apply the scope rules.

        The feedback is already stored when this runs: a failure here is logged and costs
        only the instant effect (the photo still reaches the next retrain).
        """
        try:
            embedded = self._recent_embedding(event.image_sha1) or self.embed(event.image_path)
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
        def forget(_attempt: int) -> tuple[str, MemoryChange]:
            change = MemoryChange()
            with self.sessions.begin() as session:
                entries = MemoryEntryRepository(session)
                row = entries.find(image_sha1, user_id)
                if row is None:
                    return "", change
                change.removed.append((row.id, memory_key(image_sha1, user_id), row.scope))
                entries.delete(row)
                return row.backbone, change

        try:
            backbone, change = self.retry.run("forget a memory entry", forget)
        except DatabaseUnavailable:
            log.exception("memory: could not forget %s for user %s", image_sha1[:10], user_id)
            return
        self._apply(backbone, change)
        log.info("memory: user %s withdrew their label for %s", user_id, image_sha1[:10])

    def remember(
        self, sha1: str, user_id: int, label: str, backbone: str, vector: np.ndarray, *, is_admin: bool
    ) -> str:
        """Store one answer (the user's last answer for this photo counts); returns its scope."""
        vector = l2_normalise(np.asarray(vector, dtype=np.float32).reshape(-1))
        with self._lock:  # the memory changes in place: read it under the lock
            memory = self._current_memory(backbone, len(vector), force_check=True)
            near = {sha1} | {key.rsplit(":", 1)[0] for key in (memory.near_keys(vector) if memory else [])}

        def store(_attempt: int) -> tuple[str, MemoryChange]:
            change = MemoryChange()
            with self.sessions.begin() as session:
                entries = MemoryEntryRepository(session)
                rows = entries.for_photos(backbone, near)
                for row in [row for row in rows if row.image_sha1 == sha1 and row.user_id == user_id]:
                    # A changed answer is a new row (a new id): other processes see the change.
                    change.removed.append((row.id, memory_key(sha1, user_id), row.scope))
                    entries.delete(row)
                    rows.remove(row)
                session.flush()
                entry = entries.add(MemoryEntry(image_sha1=sha1, user_id=user_id, label=label, backbone=backbone,
                                                vector=vector.astype("<f4").tobytes(),
                                                scope=GLOBAL if is_admin else PRIVATE))
                similar = [entry, *self._near_identical(rows, vector)]
                before = {row.id: row.scope for row in similar}
                if is_admin:
                    self._admin_decides(similar, label)
                else:
                    self._maybe_agreed(similar, label)
                change.added.append((entry.id, memory_key(sha1, user_id), user_id, label, vector, entry.scope))
                change.rescoped.extend((row.id, memory_key(row.image_sha1, row.user_id), row.user_id,
                                        before[row.id], row.scope)
                                       for row in similar[1:] if row.scope != before[row.id])
                return entry.scope, change

        scope, change = self.retry.run("remember an answer", store)
        self._apply(backbone, change)
        log.info("memory: user %s labelled %s as %s (%s)", user_id, sha1[:10], label, scope)
        return scope

    # --- Refiner --------------------------------------------------------------
    def refine(self, user_id: int, image_sha1: str, prediction: Any) -> Any:
        """Blend the model's answer with what this user may see of the memory.

        Only entries this user may see count (their own, and global ones): one user's answer
        never changes another's. A remembered label that wins on a near-identical photo makes
        the answer a confident "sneaker", whatever the model said (not a sneaker, a sneaker it
        does not know); otherwise the model's verdict and its detail stand, and an
        unknown_sneaker's reordered guesses are still shown as the closest known models only.
        """
        embedding = getattr(prediction, "embedding", None)
        if embedding is None:
            return prediction
        backbone = self.current_backbone()
        self._keep_recent(image_sha1, backbone, embedding)
        scores = {guess.label: float(guess.score) for guess in prediction.top}
        with self._lock:  # the memory changes in place: read it under the lock
            memory = self._current_memory(backbone, len(np.asarray(embedding).reshape(-1)))
            if memory is None:
                return prediction
            blended, match = memory.combine(scores, embedding, user_id=user_id)
        if match is None:
            return prediction
        k = max(1, len(prediction.top))
        ranked = sorted(blended.items(), key=lambda item: item[1], reverse=True)[:k]
        top = [Guess(label, self.display_name(label), score) for label, score in ranked]
        if top[0].label == match.label and match.weight >= CONFIDENT_WEIGHT:  # a person told us what this photo is
            return RefinedPrediction(top, Verdict.SNEAKER.value, prediction.footwear_score, embedding, match.label)
        return RefinedPrediction(top, prediction.verdict, prediction.footwear_score, embedding, match.label,
                                 prediction.detail)

    # --- scope rules ------------------------------------------------------------
    def _near_identical(self, rows: Sequence[MemoryEntry], vector: np.ndarray) -> list[MemoryEntry]:
        """The rows (read for the candidate photos) whose embedding is near-identical to ``vector``."""
        if not rows:
            return []
        sims = l2_normalise(np.stack([vector_of(row.vector) for row in rows])) @ vector
        return [row for row, sim in zip(rows, sims, strict=True) if sim >= self.rules.match_threshold]

    def _admin_decides(self, similar: Sequence[MemoryEntry], label: str) -> None:
        """An admin's label is the one everybody sees for this photo."""
        for row in similar:
            if row.label == label:
                row.scope = GLOBAL
            elif row.scope == GLOBAL and row.user_id not in self.rules.admin_ids:
                row.scope = PRIVATE

    def _maybe_agreed(self, similar: Sequence[MemoryEntry], label: str) -> None:
        """Enough distinct users agree (or an admin already said so): make it global."""
        agreeing = [row for row in similar if row.label == label]
        users = {row.user_id for row in agreeing}
        admin_said_so = any(row.user_id in self.rules.admin_ids for row in agreeing)
        admin_said_other = any(row.user_id in self.rules.admin_ids and row.label != label for row in similar)
        if admin_said_other or not (admin_said_so or len(users) >= self.rules.agree_users):
            return
        for row in agreeing:
            row.scope = GLOBAL

    # --- the in-process memory ---------------------------------------------------
    def _keep_recent(self, sha1: str, backbone: str, embedding: Any) -> None:
        """Keep a served photo's embedding for its button press (the oldest go first)."""
        with self._lock:
            self._recent[sha1] = (backbone, np.asarray(embedding, dtype=np.float32).reshape(-1))
            self._recent.move_to_end(sha1)
            while len(self._recent) > RECENT_EMBEDDINGS:
                self._recent.popitem(last=False)

    def _recent_embedding(self, sha1: str) -> tuple[str, np.ndarray] | None:
        """The embedding this process made when it identified the photo, if still kept and of the served backbone."""
        with self._lock:
            kept = self._recent.get(sha1)
        return kept if kept is not None and kept[0] == self.current_backbone() else None

    def _apply(self, backbone: str, change: MemoryChange) -> None:
        """This process wrote ``change``: make it in the in-process memory and in its expected fingerprint."""
        with self._lock:
            memory, fingerprint = self._memory, self._fingerprint
            if memory is None or fingerprint is None or fingerprint[0] != backbone:
                self._trusted_until = float("-inf")  # not the memory in use: the next answer checks
                return
            for _row_id, key, _scope in change.removed:
                memory.remove(key)
            for _row_id, key, user_id, label, vector, scope in change.added:
                if len(vector) == memory.dim:
                    memory.add(MemoryItem(key, label, vector, None if scope == GLOBAL else user_id))
            for _row_id, key, user_id, _old, new in change.rescoped:
                memory.set_owner(key, None if new == GLOBAL else user_id)
            self._fingerprint = change.fingerprint_after(fingerprint)
            self._last_id = max([self._last_id, *(row[0] for row in change.added)])

    def _current_memory(self, backbone: str, dim: int, *, force_check: bool = False) -> EmbeddingMemory | None:
        """The memory for ``backbone``, checked against the database at most every ``recheck_s``.

        Why: the check is an aggregate query, and it ran for every photo (over a quarter of the
        bot's database time per photo under load). A write checks first (``force_check``): the
        scope rules look at near-identical photos another process may have added.
        """
        with self._lock:
            now = self._clock()
            fresh = (self._memory is not None and self._memory.dim == dim and now < self._trusted_until
                     and not force_check and self._fingerprint is not None and self._fingerprint[0] == backbone)
            if not fresh:
                fingerprint = self._read_fingerprint(backbone)
                if fingerprint != self._fingerprint and not self._caught_up(backbone, dim, fingerprint):
                    self._memory, self._last_id = self._load(backbone, dim)
                    self._fingerprint = fingerprint
                self._trusted_until = now + self.recheck_s
            assert self._memory is not None
            return self._memory if len(self._memory) else None

    def _caught_up(self, backbone: str, dim: int, fingerprint: tuple) -> bool:
        """Add the rows other processes inserted since this one last looked; True when that explains
        ``fingerprint`` (the database's), so no full read is needed.

        Why: with replicas, every press of another replica changes the fingerprint; reading the
        whole table each time made a press cost grow with everything learnt (``bench.replicas``).
        A deletion or a change of scope elsewhere, or a row committed out of id order, leaves the
        fingerprint unexplained: then the caller reads the table in full, as before.
        """
        memory, known = self._memory, self._fingerprint
        if memory is None or known is None or known[0] != backbone or memory.dim != dim:
            return False

        def read(_attempt: int) -> list:
            with self.sessions() as session:
                return MemoryEntryRepository(session).vectors(backbone, after_id=self._last_id)

        rows = self.retry.run("read the memory's new rows", read, read_only=True)
        change = MemoryChange(added=[(row_id, memory_key(sha1, user_id), user_id, label, vector_of(vector), scope)
                                     for row_id, sha1, user_id, label, vector, scope in rows])
        if change.fingerprint_after(known) != fingerprint:
            return False
        self._apply(backbone, change)
        return True

    def _read_fingerprint(self, backbone: str) -> tuple:
        def read(_attempt: int) -> tuple:
            with self.sessions() as session:
                return MemoryEntryRepository(session).fingerprint(backbone, GLOBAL)

        return (backbone, *self.retry.run("read the memory's fingerprint", read, read_only=True))

    def _load(self, backbone: str, dim: int) -> tuple[EmbeddingMemory, int]:
        """The whole memory for ``backbone`` and the highest row id in it."""
        def read(_attempt: int) -> list:
            with self.sessions() as session:
                return MemoryEntryRepository(session).vectors(backbone)

        rows = self.retry.run("load the memory", read, read_only=True)
        items = (
            MemoryItem(memory_key(sha1, user_id), label, vector_of(vector), None if scope == GLOBAL else user_id)
            for _row_id, sha1, user_id, label, vector, scope in rows
            if len(vector) == 4 * dim
        )
        memory = EmbeddingMemory.from_items(
            dim, items, match_threshold=self.rules.match_threshold, max_weight=self.rules.max_weight
        )
        return memory, max((row[0] for row in rows), default=0)
