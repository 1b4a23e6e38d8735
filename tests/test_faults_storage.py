"""The disk fills while a model or an image is saved: the current model keeps serving, nothing half-written stays.

The data dir (or the part of it under test) is a small tmpfs mounted for the test (root only;
without root the tests skip). At the right moment a filler file takes all but a little of its
room: when the retrain starts training (so the candidate cannot be written), when the registry
is asked to copy a candidate in, before a photo is filed or an ONNX graph is built. Then:

- the registry's copy and the retrain's candidate leave no partial file or directory;
- the served (current) version, its row and its files are unchanged;
- the job's ``job_runs`` row says "failed: the disk is full: ..." and the admins who asked
  (``/retrain``), or every admin for an automatic retrain (once per run of failures), are told;
- a confirmed photo that cannot be filed keeps its feedback row: only the photo is lost (logged);
- an ONNX build that cannot be written raises a clear error and the bot keeps its model;
- once there is room again, the next run works (and version numbers stay consecutive).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from bot import render_admin
from bot.registry import ModelRegistry, StorageFull, is_disk_full
from bot.services.retraining import count_new_corrections
from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, Image, JobRun, ModelVersion, Notification, Prediction, User

from loop_support import COLOURS, leftovers, photo, seed_corrections, shared_model, slim_model_copy, tree_digest

pytestmark = pytest.mark.slow

ADMIN, OTHER_ADMIN = 4242, 4343
CORRECTIONS = 6
LITTLE_ROOM = 64 * 1024  # less than a candidate of the tiny model (about 150 KB)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory)


@pytest.fixture(scope="module")
def slim_model(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Path:
    """The tiny model without its shipped graph (400 KB): what fits a small disk."""
    out = tmp_path_factory.getbasetemp() / "loop-model-slim"
    return out if (out / "model.json").is_file() else slim_model_copy(base_model, out)


@pytest.fixture
def mount_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount_disk("4m")``: a fresh tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"a small disk needs a tmpfs mount (root): {result.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """A filler file that takes all of ``disk``'s free room but ``leave`` bytes."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    size = free_bytes(disk) - leave
    with open(filler, "wb") as handle:
        if size > 0:
            os.posix_fallocate(handle.fileno(), 0, size)
    assert free_bytes(disk) <= leave + 8192
    return filler


def unfill(disk: Path) -> None:
    for filler in disk.glob("filler-*"):
        filler.unlink()


def half_made(root: Path) -> list[Path]:
    return [p for p in leftovers(root) if not p.name.startswith("filler-")]


# --------------------------------------------------------------------------- the registry's copy


def test_the_registry_copying_a_model_in_on_a_full_disk_keeps_nothing_of_it(
    tmp_path: Path, mount_disk: Callable[[str], Path], slim_model: Path,
) -> None:
    disk = mount_disk("4m")
    engine = init_db(f"sqlite:///{tmp_path / 'bot.db'}")
    registry = ModelRegistry(session_factory(engine), disk / "models")
    registry.install_starter(slim_model)
    v1 = tree_digest(registry.get(1).path)
    fill(disk, LITTLE_ROOM)

    with pytest.raises(StorageFull, match="the disk is full: no room in .* to copy in version 2") as caught:
        registry.register(slim_model, data_snapshot={})

    assert is_disk_full(caught.value)
    assert not half_made(disk) and not (disk / "models" / "2").exists()
    assert [v.version for v in registry.versions()] == [1] and registry.current_version() == 1
    assert tree_digest(registry.get(1).path) == v1

    unfill(disk)
    assert registry.register(slim_model, data_snapshot={}).version == 2  # the number was never taken
    engine.dispose()


# --------------------------------------------------------------------------- the retrain's candidate


def test_a_retrain_writing_its_candidate_on_a_full_disk_leaves_no_partial_files(
    tmp_path: Path, mount_disk: Callable[[str], Path], base_model: Path,
) -> None:
    from ml.retrain import RetrainError, RetrainSettings, retrain_head

    disk = mount_disk("4m")
    out = disk / "work" / "candidate"
    settings = RetrainSettings(steps=20, cache_dir=tmp_path / "cache", threads=1)
    nothing_new = pd.DataFrame(columns=["path", "label", "sha1", "split"])

    def fill_when_training(stage: str, done: int, total: int) -> None:
        if stage == "training" and done == 0:
            fill(disk, LITTLE_ROOM)

    with pytest.raises(RetrainError, match="the disk is full: no room in .* to write the candidate model"):
        retrain_head(base_model, nothing_new, out, settings=settings, progress=fill_when_training)

    assert not out.exists() and not half_made(disk)
    unfill(disk)
    written = retrain_head(base_model, nothing_new, out, settings=settings)
    assert (written / "model.json").is_file() and not half_made(disk)


# --------------------------------------------------------------------------- the retrain job, end to end


class DataDir:
    """The worker's settings through the environment, its data dir (and SQLite database) on a small disk."""

    def __init__(self, disk: Path, starter: Path, monkeypatch: pytest.MonkeyPatch, admins: str) -> None:
        self.disk, self.data_dir = disk, disk / "var"
        for key in ("SNEAKERBOT_DATABASE_URL", "SNEAKERBOT_MODEL_DIR"):
            monkeypatch.delenv(key, raising=False)
        for key, value in {"SNEAKERBOT_DATA_DIR": str(self.data_dir), "SNEAKERBOT_STARTER_MODEL_DIR": str(starter),
                           "SNEAKERBOT_ADMIN_IDS": admins, "SNEAKERBOT_RETRAIN_MIN_CORRECTIONS": str(CORRECTIONS),
                           "SNEAKERBOT_RETRAIN_CHECK_SECONDS": "1", "SNEAKERBOT_RETRAIN_STEPS": "30"}.items():
            monkeypatch.setenv(key, value)
        from bot.settings import get_settings

        settings = get_settings()
        settings.ensure_dirs()
        self.engine = init_db(settings.db_url)
        self.sessions = session_factory(self.engine)
        self.registry = ModelRegistry(self.sessions, settings.models_path)
        self.registry.install_starter(starter)
        seed_corrections(self.sessions, self.data_dir, CORRECTIONS, "air_jordan_1")
        self.v1 = tree_digest(self.registry.get(1).path)

    def outcomes(self, job_id: str) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(select(JobRun.outcome).where(JobRun.job_id == job_id).order_by(JobRun.id)))

    def notes(self, chat_id: int) -> list[str]:
        with self.sessions() as session:
            return [render_admin.notification(note.kind, note.payload) for note in session.scalars(
                select(Notification).where(Notification.chat_id == chat_id).order_by(Notification.id))]

    def assert_nothing_changed(self) -> None:
        """The served model is the same, nothing half-made is left, the corrections still count as new."""
        with self.sessions() as session:
            assert dict(session.execute(select(ModelVersion.version, ModelVersion.status)).all()) == {1: "promoted"}
        assert self.registry.current_version() == 1 and tree_digest(self.registry.get(1).path) == self.v1
        assert not half_made(self.disk)
        assert count_new_corrections(self.sessions) == CORRECTIONS


@pytest.fixture
def data_dir(tmp_path: Path, mount_disk: Callable[[str], Path], slim_model: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[DataDir]:
    monkeypatch.chdir(tmp_path)
    state = DataDir(mount_disk("32m"), slim_model, monkeypatch, f"{ADMIN},{OTHER_ADMIN}")
    yield state
    state.engine.dispose()


def fill_at(moment: str, disk: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Fill the disk when the retrain starts training (the candidate cannot be written) or when the
    registry is asked to copy the written candidate in (the copy cannot be made); returns the undo."""
    from bot.jobs.retrain import RetrainProgress

    if moment == "training":
        report = RetrainProgress.__call__

        def filling(self: RetrainProgress, stage: str, done: int, total: int) -> None:
            report(self, stage, done, total)
            if stage == "training" and done == 0:
                fill(disk, LITTLE_ROOM)

        monkeypatch.setattr(RetrainProgress, "__call__", filling)
        return lambda: monkeypatch.setattr(RetrainProgress, "__call__", report)
    register = ModelRegistry.register

    def filling_register(self: ModelRegistry, *args: object, **kwargs: object):  # noqa: ANN202
        fill(disk, LITTLE_ROOM)
        return register(self, *args, **kwargs)

    monkeypatch.setattr(ModelRegistry, "register", filling_register)
    return lambda: monkeypatch.setattr(ModelRegistry, "register", register)


@pytest.mark.parametrize(("moment", "where"), [
    ("training", "to write the candidate model"),
    ("registering", "to copy in version 2"),
])
def test_a_retrain_on_a_full_disk_fails_cleanly_and_tells_the_admin_who_asked(
    data_dir: DataDir, monkeypatch: pytest.MonkeyPatch, moment: str, where: str,
) -> None:
    from bot.jobs.retrain import retrain_now

    undo = fill_at(moment, data_dir.disk, monkeypatch)
    with pytest.raises(Exception) as caught:  # noqa: PT011 (the job re-raises whatever failed)
        retrain_now(notify_chat_ids=[ADMIN])

    assert is_disk_full(caught.value)
    data_dir.assert_nothing_changed()
    outcome = data_dir.outcomes("retrain_now")[-1]
    assert outcome.startswith("failed: the disk is full: ") and where in outcome
    report = data_dir.notes(ADMIN)[-1]
    assert report.startswith("Retrain failed: the disk is full: ") and report.endswith("Version 1 still answers.")
    assert not data_dir.notes(OTHER_ADMIN)  # /retrain answers the admin who asked

    # With room again, the next /retrain goes through, as version 2.
    undo()
    unfill(data_dir.disk)
    outcome = retrain_now(notify_chat_ids=[ADMIN])
    assert outcome is not None and outcome.startswith(("version 2 promoted", "version 2 rejected"))
    assert "promoted v2" in data_dir.notes(ADMIN)[-1]
    assert count_new_corrections(data_dir.sessions) == 0 and not half_made(data_dir.disk)


def test_an_automatic_retrain_on_a_full_disk_tells_every_admin_once_and_waits_before_trying_again(
    data_dir: DataDir, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.jobs.retrain import retrain_if_due

    undo = fill_at("registering", data_dir.disk, monkeypatch)
    with pytest.raises(StorageFull):
        retrain_if_due()
    data_dir.assert_nothing_changed()
    assert data_dir.outcomes("retrain_check")[-1].startswith("failed: the disk is full: ")
    for admin in (ADMIN, OTHER_ADMIN):
        notes = data_dir.notes(admin)
        assert len(notes) == 1 and notes[0].startswith("retrain_check: Retrain failed: the disk is full: ")

    assert retrain_if_due() is None  # the next check, a second later, does not train again in vain
    monkeypatch.setenv("SNEAKERBOT_RETRAIN_CHECK_SECONDS", "0")  # the wait is over
    with pytest.raises(StorageFull):
        retrain_if_due()
    assert [len(data_dir.notes(admin)) for admin in (ADMIN, OTHER_ADMIN)] == [1, 1]  # told once, not per try

    undo()
    unfill(data_dir.disk)
    assert retrain_if_due().startswith(("version 2 promoted", "version 2 rejected"))
    assert not half_made(data_dir.disk)


# --------------------------------------------------------------------------- the ONNX build on model load


def test_an_onnx_build_on_a_full_disk_leaves_no_file_and_the_bot_keeps_its_model(
    tmp_path: Path, mount_disk: Callable[[str], Path], slim_model: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.learning_loop import LearningLoop
    from bot.services.models import ModelHolder, ServedModel
    from ml.errors import ModelDirError
    from ml.predictor import Predictor

    disk = mount_disk("8m")  # the graph is 18 MB
    fill(disk, 1024 * 1024)
    with pytest.raises(ModelDirError, match="the disk is full: no room in .* for the ONNX build"):
        Predictor.load(slim_model, cache_dir=disk / "onnx")
    assert list((disk / "onnx").iterdir()) == []  # not even a temporary file

    # The bot's hot swap to a version whose graph cannot be built: it keeps serving the one it has.
    monkeypatch.setenv("XDG_CACHE_HOME", str(disk))  # where the bot builds its graphs
    engine = init_db(f"sqlite:///{tmp_path / 'bot.db'}")
    registry = ModelRegistry(session_factory(engine), tmp_path / "models")
    registry.install_starter(slim_model)
    holder = ModelHolder(ServedModel(1, SimpleNamespace(classes=[])))
    loop = LearningLoop(registry._sessions, registry, holder)
    registry.register(slim_model, data_snapshot={}, promote_reason="promoted")

    with pytest.raises(ModelDirError, match="the disk is full"):
        loop.refresh_model()  # the bot's poll logs this and tries again later
    assert holder.current().version == 1
    assert list((disk / "sneakerbot" / "onnx").iterdir()) == []
    engine.dispose()


# --------------------------------------------------------------------------- caches


def test_an_embedding_cache_save_on_a_full_disk_keeps_the_previous_file(mount_disk: Callable[[str], Path]) -> None:
    from ml.embeddings import EmbeddingStore

    disk = mount_disk("2m")
    path = disk / "embeddings" / "key" / "center.npz"
    store = EmbeddingStore(path)
    store.put("a" * 40, np.zeros(1280, np.float32), 0.5)
    store.save()
    before = path.read_bytes()
    for i in range(400):
        store.put(f"{i:040d}", np.full(1280, i, np.float32), 0.5)
    fill(disk, 32 * 1024)

    with pytest.raises(OSError) as caught:
        store.save()

    assert is_disk_full(caught.value)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["center.npz"]


# --------------------------------------------------------------------------- the bot filing a photo


def test_a_photo_filed_on_a_full_disk_keeps_the_feedback_and_loses_only_the_photo(
    tmp_path: Path, mount_disk: Callable[[str], Path], caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.services.feedback import FeedbackService

    disk = mount_disk("2m")
    data_dir = disk / "var"
    engine = init_db(f"sqlite:///{tmp_path / 'bot.db'}")  # the database lives elsewhere (PostgreSQL)
    sessions = session_factory(engine)
    data = photo(COLOURS["air_jordan_1"], 77)
    sha1 = hashlib.sha1(data).hexdigest()
    pending = data_dir / "pending" / f"{sha1}.jpg"
    pending.parent.mkdir(parents=True)
    pending.write_bytes(data)
    with sessions.begin() as session:
        session.add(User(id=7))
        session.flush()
        prediction = Prediction(user_id=7, chat_id=7, image_sha1=sha1, pending_path=str(pending), verdict="sneaker",
                                top=[{"label": "air_jordan_1", "score": 0.9}, {"label": "air_jordan_3", "score": 0.1}])
        session.add(prediction)
        session.flush()
        prediction_id = prediction.id
    service = FeedbackService(sessions, data_dir=data_dir, retention_days=7, known_label=lambda label: True,
                              admin_ids=frozenset())
    events = []
    service.listeners.append(SimpleNamespace(on_feedback=events.append))

    def stored() -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        with sessions() as session:
            return (session.execute(select(Feedback.verdict, Feedback.label).order_by(Feedback.id)).all(),
                    session.execute(select(Image.label, Image.status, Image.path)).all())

    fill(disk, 0)
    with caplog.at_level(logging.ERROR, logger="bot.services.feedback"):
        assert service.confirm(prediction_id, 7) == "air_jordan_1"

    feedback, images = stored()
    assert feedback == [("correct", "air_jordan_1")] and images == []  # the answer is kept, the photo is not filed
    assert "its photo was not filed" in caplog.text and "No space left on device" in caplog.text
    assert not [p for p in (data_dir / "images").rglob("*") if p.is_file()] and not half_made(disk)
    assert events[-1].image_path == pending  # the instant memory still learns the answer from the waiting photo

    unfill(disk)
    service.correct(prediction_id, 7, "air_jordan_3")  # with room again, the next answer files it
    feedback, images = stored()
    assert feedback[-1] == ("wrong", "air_jordan_3")
    assert images == [("air_jordan_3", "train", f"images/air_jordan_3/{sha1}.jpg")]
    assert (data_dir / images[0][2]).read_bytes() == data

    fill(disk, 0)  # a later answer that cannot be filed: its earlier label no longer trains
    service.correct(prediction_id, 7, "air_jordan_4")
    feedback, images = stored()
    assert feedback[-1] == ("wrong", "air_jordan_4")
    assert images == [("air_jordan_3", "review", f"images/air_jordan_3/{sha1}.jpg")] and not half_made(disk)
    engine.dispose()
