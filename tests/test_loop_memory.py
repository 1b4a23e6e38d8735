"""The instant-learning memory: nearest neighbours, visibility and the score blend."""

from __future__ import annotations

import numpy as np
import pytest

from ml.memory import BadEmbedding, EmbeddingMemory, MemoryItem, l2_normalise

DIM = 16


def _vec(seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=DIM))


def _near(vector: np.ndarray, noise: float, seed: int = 99) -> np.ndarray:
    return l2_normalise(vector + noise * np.random.default_rng(seed).normal(size=DIM))


SCORES = {"air_jordan_1": 0.7, "air_jordan_3": 0.2, "air_jordan_4": 0.1}


def test_near_identical_photo_takes_the_remembered_label() -> None:
    photo = _vec(1)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:1", "air_jordan_4", photo, owner=None))

    scores, match = memory.combine(SCORES, _near(photo, 0.01), user_id=5)

    assert match is not None and match.label == "air_jordan_4"
    assert max(scores, key=scores.get) == "air_jordan_4"
    assert sum(scores.values()) == pytest.approx(1.0)


def test_unrelated_photo_is_left_to_the_classifier() -> None:
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:1", "air_jordan_4", _vec(1), owner=None))

    scores, match = memory.combine(SCORES, _vec(2), user_id=5)

    assert match is None
    assert scores == SCORES


def test_private_entry_is_seen_only_by_its_owner() -> None:
    photo = _vec(3)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:7", "air_jordan_4", photo, owner=7))

    mine, _ = memory.combine(SCORES, photo, user_id=7)
    theirs, match = memory.combine(SCORES, photo, user_id=8)

    assert max(mine, key=mine.get) == "air_jordan_4"
    assert match is None and theirs == SCORES


def test_own_answer_wins_over_global_on_the_same_photo() -> None:
    photo = _vec(4)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:admin", "air_jordan_3", photo, owner=None))
    memory.add(MemoryItem("a:7", "air_jordan_4", photo, owner=7))

    assert memory.nearest(photo, user_id=7).label == "air_jordan_4"
    assert memory.nearest(photo, user_id=8).label == "air_jordan_3"


def test_same_key_replaces_the_earlier_answer() -> None:
    photo = _vec(5)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:7", "air_jordan_4", photo, owner=7))
    memory.add(MemoryItem("a:7", "air_jordan_3", photo, owner=7))

    assert len(memory) == 1
    assert memory.nearest(photo, user_id=7).label == "air_jordan_3"


def test_new_label_unknown_to_the_classifier_is_added() -> None:
    photo = _vec(6)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:1", "new_balance_550", photo, owner=None))

    scores, _ = memory.combine(SCORES, photo, user_id=1)

    assert max(scores, key=scores.get) == "new_balance_550"


def test_influence_grows_with_similarity_and_is_bounded() -> None:
    photo = _vec(7)
    memory = EmbeddingMemory(DIM, match_threshold=0.5, max_weight=0.8)
    memory.add(MemoryItem("a:1", "air_jordan_4", photo, owner=None))

    close = memory.nearest(_near(photo, 0.05), user_id=1)
    closer = memory.nearest(photo, user_id=1)

    assert 0.0 < close.weight < closer.weight <= 0.8


def test_agreeing_owners_counts_near_identical_photos_with_the_same_label() -> None:
    photo = _vec(8)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:1", "air_jordan_4", photo, owner=1))
    memory.add(MemoryItem("b:2", "air_jordan_4", _near(photo, 0.01, seed=1), owner=2))
    memory.add(MemoryItem("c:3", "air_jordan_3", photo, owner=3))
    memory.add(MemoryItem("d:4", "air_jordan_4", _vec(9), owner=4))

    assert memory.agreeing_owners(photo, "air_jordan_4") == {1, 2}


def test_bad_embeddings_are_refused() -> None:
    memory = EmbeddingMemory(DIM)
    with pytest.raises(BadEmbedding):
        memory.add(MemoryItem("a", "x", np.ones(DIM + 1), owner=None))
    with pytest.raises(BadEmbedding):
        memory.nearest(np.full(DIM, np.nan), user_id=None)
    with pytest.raises(BadEmbedding):
        EmbeddingMemory(DIM, match_threshold=1.5)


def test_from_items_keeps_the_last_answer_per_key() -> None:
    photo = _vec(10)
    memory = EmbeddingMemory.from_items(DIM, [
        MemoryItem("a:7", "air_jordan_4", photo, owner=7),
        MemoryItem("b:8", "air_jordan_1", _vec(11), owner=None),
        MemoryItem("a:7", "air_jordan_3", photo, owner=7),
    ])

    assert len(memory) == 2
    assert memory.nearest(photo, user_id=7).label == "air_jordan_3"
    assert memory.nearest(photo, user_id=8) is None


def test_entries_grow_past_the_capacity_and_removal_keeps_the_others() -> None:
    photos = {f"k{i}": _vec(100 + i) for i in range(40)}
    memory = EmbeddingMemory(DIM)
    for key, photo in photos.items():
        memory.add(MemoryItem(key, key, photo, owner=None))
    for key in ("k0", "k17", "k39"):  # the first, one inside, the last
        assert memory.remove(key)
        del photos[key]
    assert not memory.remove("k0")

    assert len(memory) == len(photos)
    for key, photo in photos.items():
        assert memory.nearest(photo, user_id=None).label == key
        assert memory.near_keys(photo) == [key]


def test_set_owner_changes_who_sees_an_entry() -> None:
    photo = _vec(12)
    memory = EmbeddingMemory(DIM)
    memory.add(MemoryItem("a:7", "air_jordan_4", photo, owner=7))
    assert memory.nearest(photo, user_id=8) is None

    assert memory.set_owner("a:7", None)
    assert memory.nearest(photo, user_id=8).owner is None
    assert memory.set_owner("a:7", 7) and memory.nearest(photo, user_id=8) is None
    assert not memory.set_owner("missing", None)
