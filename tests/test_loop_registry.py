"""The model registry with real model directories, a real database and the ONNX Predictor."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bot.registry import (
    BadModelDir,
    EvalResult,
    HeldOutImage,
    ModelRegistry,
    UnknownVersion,
    class_losses,
    predictor_evaluator,
    sign_test,
)

from loop_support import COLOURS, photo, shared_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory)


@pytest.fixture(scope="module")
def bad_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "rotated", rotate_labels=True)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> list[HeldOutImage]:
    """Held-out photos (seeds no model was trained on), the same for every comparison."""
    root = tmp_path_factory.mktemp("test-set")
    images = []
    for label, colour in COLOURS.items():
        for i in range(4):
            data = photo(colour, 60_000 + 10 * i + len(images))
            path = root / f"{label}-{i}.jpg"
            path.write_bytes(data)
            images.append(HeldOutImage(path, label, hashlib.sha1(data).hexdigest()))
    return images


@pytest.fixture
def registry(db_sessions: sessionmaker[Session], tmp_path: Path, good_model: Path) -> ModelRegistry:
    registry = ModelRegistry(db_sessions, tmp_path / "models")
    assert registry.install_starter(good_model).version == 1
    return registry


def test_starter_is_version_one_once(registry: ModelRegistry, good_model: Path) -> None:
    assert registry.install_starter(good_model) is None
    current = registry.current()
    assert (current.version, current.status, current.is_current) == (1, "promoted", True)
    assert (current.path / "model.json").is_file() and current.path == registry.models_path / "1"
    assert registry.current_version() == 1


def test_a_worse_candidate_is_kept_as_rejected_with_the_reason(
    registry: ModelRegistry, bad_model: Path, test_set: list[HeldOutImage]
) -> None:
    candidate = registry.register(bad_model, data_snapshot={"n": 60}, config={"reason": "test"})
    assert (candidate.version, candidate.status) == (2, "candidate")
    assert not list(registry.models_path.glob(".incoming-*"))

    decision = registry.decide(2, test_set, predictor_evaluator)

    assert not decision.promoted
    assert decision.candidate.n == decision.current.n == len(test_set)  # the same test images
    assert decision.candidate.top1 < decision.current.top1
    rejected = registry.get(2)
    # 4 photos a class are too few for a class-by-class verdict (4 of 4 lost: p = 1/16); the total decides
    assert rejected.status == "rejected" and "worse than the current model" in rejected.reason
    assert rejected.metrics["compared_with"] == 1 and rejected.data_snapshot == {"n": 60}
    assert registry.current_version() == 1


def test_a_candidate_not_worse_is_promoted_and_rollback_works(
    registry: ModelRegistry, good_model: Path, bad_model: Path, test_set: list[HeldOutImage]
) -> None:
    registry.register(bad_model, data_snapshot={})
    registry.decide(2, test_set, predictor_evaluator)
    registry.register(good_model, data_snapshot={})

    decision = registry.decide(3, test_set, predictor_evaluator)

    assert decision.promoted and decision.current_version == 1
    assert decision.candidate.top1 >= decision.current.top1 > 0.5
    assert registry.current_version() == 3
    assert [(v.version, v.status, v.is_current) for v in registry.versions()] == [
        (3, "promoted", True), (2, "rejected", False), (1, "retired", False)]

    # Rollback to any earlier version, even one that was rejected.
    assert registry.rollback(1).is_current
    assert registry.current_version() == 1
    assert registry.rollback(2).version == 2 and registry.current_version() == 2
    with pytest.raises(UnknownVersion):
        registry.rollback(9)
    shutil.rmtree(registry.get(3).path)
    with pytest.raises(BadModelDir):
        registry.rollback(3)
    assert registry.current_version() == 2


def test_a_class_the_candidate_adds_is_not_held_against_the_current_model(
    db_sessions: sessionmaker[Session], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
    good_model: Path, test_set: list[HeldOutImage],
) -> None:
    two_classes = shared_model(tmp_path_factory, "two", labels=["air_jordan_1", "air_jordan_3"])
    registry = ModelRegistry(db_sessions, tmp_path / "models")
    registry.install_starter(two_classes)
    registry.register(good_model, data_snapshot={})  # knows air_jordan_4 as well

    decision = registry.decide(2, test_set, predictor_evaluator)

    compared = [image for image in test_set if image.label != "air_jordan_4"]
    assert decision.candidate.n == decision.current.n == len(compared)
    assert decision.promoted and registry.current_version() == 2


def test_a_candidate_that_forgets_a_class_is_rejected_with_the_class_named(
    registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory, test_set: list[HeldOutImage],
) -> None:
    two_classes = shared_model(tmp_path_factory, "two", labels=["air_jordan_1", "air_jordan_3"])
    registry.register(two_classes, data_snapshot={})

    decision = registry.decide(2, test_set, predictor_evaluator)

    assert not decision.promoted and registry.current_version() == 1
    assert "does not know air_jordan_4 any more" in registry.get(2).reason


def test_a_class_loss_chance_explains_is_tolerated_one_it_does_not_is_not() -> None:
    def photos(label: str, right: list[bool]) -> dict[str, tuple[str, bool]]:
        return {f"{label}{i}": (label, r) for i, r in enumerate(right)}

    def result(hits: dict[str, tuple[str, bool]]) -> EvalResult:
        n = len(hits)
        recall = sum(r for _, r in hits.values()) / n
        return EvalResult(recall, recall, n, {"a": {"recall": recall, "top3": recall, "n": n}}, hits)

    current = result(photos("a", [True] * 26 + [False] * 11))  # 70 % of 37
    four_lost = result(photos("a", [False] * 4 + [True] * 22 + [False] * 11))  # 59 %: p = 1/16
    six_lost = result(photos("a", [False] * 6 + [True] * 20 + [False] * 11))  # p = 1/64

    assert sign_test(4, 0) == 1 / 16 and sign_test(3, 3) == pytest.approx(0.65625)
    assert class_losses(four_lost, current, 0.05) == []
    assert class_losses(six_lost, current, 0.05) == ["a 70% → 54% on its 37 test photos, 6 lost and 0 gained"]


def test_one_class_losing_more_than_the_tolerance_rejects_even_when_the_total_holds() -> None:
    def result(recalls: dict[str, float], n: int = 20) -> EvalResult:
        per_label = {label: {"recall": r, "top3": r, "n": n} for label, r in recalls.items()}
        return EvalResult(sum(recalls.values()) / len(recalls), 0.0, n * len(recalls), per_label)

    current = result({"a": 0.9, "b": 0.8})

    assert class_losses(result({"a": 0.85, "b": 0.85}), current, 0.05) == []  # one photo in 20: within
    assert class_losses(result({"a": 0.75, "b": 0.95}), current, 0.05) == ["a 90% → 75% on its 20 test photos"]
    assert class_losses(result({"a": 0.5}, n=2), result({"a": 1.0}, n=2), 0.05) == []  # one photo of two
    assert class_losses(result({"b": 0.8}), current, 0.05)[0].startswith("a 90% → 0%")  # a class it lost


def test_replicas_installing_the_starter_at_once_make_one_version(tmp_path: Path, database_url: str,
                                                                  good_model: Path) -> None:
    """Bot replicas and the worker start together on an empty registry: one starter version, no crash."""
    import threading

    from bot.registry import ModelRegistry
    from bot.store.db import init_db, session_factory
    starter = good_model
    engine = init_db(database_url)
    sessions = session_factory(engine)
    models = tmp_path / "models"
    registries = [ModelRegistry(sessions, models) for _ in range(4)]
    start = threading.Barrier(len(registries))
    installed: list[object] = []

    def install(registry: ModelRegistry) -> None:
        start.wait()
        installed.append(registry.install_starter(starter))

    threads = [threading.Thread(target=install, args=(registry,)) for registry in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()

    assert len(installed) == 4 and len([info for info in installed if info is not None]) == 1
    assert registries[0].current_version() == 1 and [v.version for v in registries[0].versions()] == [1]
    assert sorted(p.name for p in models.iterdir()) == ["1"]
