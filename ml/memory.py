"""Instant-learning memory: nearest neighbours over embeddings of user-labelled photos.

A retrain takes minutes and needs many corrections; a user who has just corrected a
photo expects the bot to know it the very next time. The memory holds the
L2-normalised embedding of every confirmed or corrected photo with its label and who
may see it, and bends the classifier's scores towards the label of a near-identical
remembered photo.

Who sees an entry is the caller's decision (see ``bot/services/learning.py`` and
``docs/learning-loop.md``): an entry is either global (``owner is None``) or private to
one user. A lookup for a user sees the global entries plus that user's own, so one
user's corrections never change anyone else's answers until they are trusted.

Pure numpy, no database: the bot builds it from its store and keeps it in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: Cosine similarity above which two photos count as "the same or near-identical".
DEFAULT_MATCH_THRESHOLD = 0.94
#: Largest share of the final score the memory may take (at similarity 1.0).
DEFAULT_MAX_WEIGHT = 0.9


class BadEmbedding(ValueError):
    """An embedding of the wrong shape or with NaNs, or a bad memory setting."""


@dataclass(frozen=True)
class MemoryItem:
    """One remembered photo: its embedding, label and visibility."""

    key: str  # e.g. "<image sha1>:<user id>", unique in the memory
    label: str
    embedding: np.ndarray  # float32 [dim], L2-normalised
    owner: int | None  # None: global; otherwise only this user sees it


@dataclass(frozen=True)
class MemoryMatch:
    """The nearest visible remembered photo for a query."""

    key: str
    label: str
    similarity: float
    owner: int | None
    weight: float  # the share of the final score the memory took


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbeddingMemory:
    """Labelled embeddings with per-user visibility, combined with classifier scores.

    The combination is a convex blend: ``final = (1 - w) * classifier + w * onehot(label)``
    with ``w = max_weight * (sim - t) / (1 - t)`` for the nearest visible entry whose
    cosine similarity ``sim`` reaches the threshold ``t``. A near-identical photo
    (``sim`` close to 1) is answered with the remembered label; a merely similar one
    is nudged a little; anything below ``t`` is left to the classifier alone.

    Adding, replacing and removing an entry cost O(dim), not O(entries): the matrix grows by
    doubling and a removed row is filled with the last one (the bot applies every press to it).
    """

    def __init__(
        self,
        dim: int,
        *,
        match_threshold: float = DEFAULT_MATCH_THRESHOLD,
        max_weight: float = DEFAULT_MAX_WEIGHT,
    ) -> None:
        if not 0.0 < match_threshold < 1.0:
            raise BadEmbedding(f"match_threshold must be in (0, 1), got {match_threshold}")
        if not 0.0 <= max_weight <= 1.0:
            raise BadEmbedding(f"max_weight must be in [0, 1], got {max_weight}")
        self.dim = dim
        self.match_threshold = match_threshold
        self.max_weight = max_weight
        self._keys: list[str] = []
        self._labels: list[str] = []
        self._index: dict[str, int] = {}  # key -> row
        self._rows = np.zeros((0, dim), dtype=np.float32)  # capacity >= len; rows past len are unused
        self._owner_ids = np.zeros(0, dtype=np.int64)  # the owner, or 0 for a global entry
        self._global = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def _matrix(self) -> np.ndarray:
        return self._rows[: len(self._keys)]

    @classmethod
    def from_items(cls, dim: int, items: Iterable[MemoryItem], **options: float) -> EmbeddingMemory:
        """A memory holding ``items`` (later items with the same key replace earlier ones)."""
        memory = cls(dim, **options)
        latest = {item.key: item for item in items}  # dicts keep first-insertion order, values the last
        if latest:
            values = list(latest.values())
            memory._keys = list(latest)
            memory._labels = [item.label for item in values]
            memory._index = {key: row for row, key in enumerate(memory._keys)}
            memory._rows = l2_normalise(np.stack([memory._check(item.embedding) for item in values]))
            memory._owner_ids = np.array([item.owner or 0 for item in values], dtype=np.int64)
            memory._global = np.array([item.owner is None for item in values], dtype=bool)
        return memory

    def add(self, item: MemoryItem) -> None:
        """Remember one photo; an entry with the same key is replaced (the last answer counts)."""
        vector = l2_normalise(self._check(item.embedding))
        row = self._index.get(item.key)
        if row is None:
            row = len(self._keys)
            self._grow(row + 1)
            self._keys.append(item.key)
            self._labels.append(item.label)
            self._index[item.key] = row
        self._labels[row] = item.label
        self._rows[row] = vector
        self._set_owner(row, item.owner)

    def remove(self, key: str) -> bool:
        """Forget the entry with ``key``; returns whether there was one."""
        row = self._index.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        if row != last:  # the last entry takes the removed one's place
            moved = self._keys[last]
            self._keys[row], self._labels[row] = moved, self._labels[last]
            self._rows[row], self._owner_ids[row], self._global[row] = (
                self._rows[last], self._owner_ids[last], self._global[last])
            self._index[moved] = row
        self._keys.pop()
        self._labels.pop()
        return True

    def set_owner(self, key: str, owner: int | None) -> bool:
        """Change who sees the entry with ``key`` (``None``: everyone); returns whether there was one."""
        row = self._index.get(key)
        if row is None:
            return False
        self._set_owner(row, owner)
        return True

    def near_keys(self, embedding: np.ndarray) -> list[str]:
        """Keys of every entry, whoever sees it, near-identical to ``embedding`` (at the match threshold)."""
        if not self._keys:
            return []
        sims = self._matrix @ l2_normalise(self._check(embedding))
        return [self._keys[row] for row in np.flatnonzero(sims >= self.match_threshold)]

    def _set_owner(self, row: int, owner: int | None) -> None:
        self._owner_ids[row] = owner or 0
        self._global[row] = owner is None

    def _grow(self, size: int) -> None:
        """Room for ``size`` entries, doubling the capacity when it runs out."""
        capacity = self._rows.shape[0]
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 16)
        for name in ("_rows", "_owner_ids", "_global"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _visible(self, user_id: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Which entries ``user_id`` sees, and which of them are their own."""
        n = len(self._keys)
        own = (~self._global[:n]) & (self._owner_ids[:n] == user_id) if user_id is not None else np.zeros(n, bool)
        return self._global[:n] | own, own

    def nearest(self, embedding: np.ndarray, *, user_id: int | None) -> MemoryMatch | None:
        """The most similar entry ``user_id`` may see, if it reaches the match threshold.

        On equal similarity the user's own entry wins over a global one, so a user who
        corrected a globally remembered photo sees their own answer.
        """
        query = l2_normalise(self._check(embedding))
        if not self._keys:
            return None
        visible, own = self._visible(user_id)
        if not visible.any():
            return None
        sims = self._matrix @ query
        # Rank by similarity, own entries first on ties (a tiny bonus far below float noise of interest).
        ranked = np.where(visible, sims + own * 1e-6, -np.inf)
        index = int(np.argmax(ranked))
        similarity = float(sims[index])
        if similarity < self.match_threshold:
            return None
        return MemoryMatch(
            key=self._keys[index],
            label=self._labels[index],
            similarity=similarity,
            owner=None if self._global[index] else int(self._owner_ids[index]),
            weight=self._weight(similarity),
        )

    def combine(
        self, scores: Mapping[str, float], embedding: np.ndarray, *, user_id: int | None
    ) -> tuple[dict[str, float], MemoryMatch | None]:
        """Blend classifier ``scores`` (label -> probability) with the nearest remembered label.

        Returns the new scores (still summing to the classifier's total) and the match
        used, or the scores unchanged and ``None`` when nothing visible is close enough.
        A remembered label the classifier does not know yet is added to the scores.
        """
        match = self.nearest(embedding, user_id=user_id)
        if match is None:
            return dict(scores), None
        total = float(sum(scores.values())) or 1.0
        blended = {label: (1.0 - match.weight) * score for label, score in scores.items()}
        blended[match.label] = blended.get(match.label, 0.0) + match.weight * total
        return blended, match

    def agreeing_owners(self, embedding: np.ndarray, label: str) -> set[int | None]:
        """Owners of entries with ``label`` whose photo is near-identical to ``embedding``.

        Used to decide when enough distinct users agree on a photo's label to trust it
        for everyone.
        """
        if not self._keys:
            return set()
        sims = self._matrix @ l2_normalise(self._check(embedding))
        return {
            None if self._global[row] else int(self._owner_ids[row])
            for row in np.flatnonzero(sims >= self.match_threshold)
            if self._labels[row] == label
        }

    def _weight(self, similarity: float) -> float:
        share = (similarity - self.match_threshold) / (1.0 - self.match_threshold)
        return self.max_weight * float(np.clip(share, 0.0, 1.0))

    def _check(self, embedding: np.ndarray) -> np.ndarray:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise BadEmbedding(f"embedding has {vector.shape[0]} values, the memory holds {self.dim}")
        if not np.isfinite(vector).all():
            raise BadEmbedding("embedding has NaN or infinite values")
        return vector
