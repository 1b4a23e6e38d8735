"""A training run crashes or is killed halfway: nothing half-registered is ever served, and the next run starts clean.

The worker runs as in production (``python -m bot worker``, settings from the environment, a tiny
real model from ``loop_support.shared_model``) and is killed with SIGKILL at a known point:

- in the middle of training: the ``job_runs`` row reports the "training" stage and the run is
  made long (a huge step count), so the kill always lands there;
- while the registry copies the candidate in, and while the promotion gate compares it: the
  worker runs with one function replaced by a stall that writes a flag file (``STALL``), so
  the kill lands exactly there.

Then it is started again and must: keep serving the same version (its row and its files),
leave no half-written directory served or in the way, mark a candidate the killed run left
``failed`` (never current, its number not reused, its corrections counted again), and
retrain to a normal verdict. Also: an ONNX build or an embedding-cache save killed midway
never leaves a half-written file under the name readers open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from bot import render_admin
from bot.registry import ModelRegistry, NeverServed
from bot.services.retraining import INTERRUPTED, count_new_corrections
from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, JobRun, ModelVersion, Notification

from loop_support import leftovers, seed_corrections, shared_model, tree_digest, wait_for

pytestmark = pytest.mark.slow

ADMIN = 4242
CORRECTIONS = 6
LABEL = "air_jordan_1"
ENDLESS_STEPS = 100_000_000  # a retrain that is still training when it is killed, however fast the machine

#: ``python -c STALL``: the worker with ``FAULT_STALL_AT`` ("module:attr.path") replaced by a stall
#: that lets ``FAULT_STALL_AFTER`` calls through, then writes ``FAULT_FLAG`` and never returns.
STALL = """
import importlib, os, sys, time
from pathlib import Path

module, _, dotted = os.environ["FAULT_STALL_AT"].partition(":")
*parents, name = dotted.split(".")
owner = importlib.import_module(module)
for part in parents:
    owner = getattr(owner, part)
original, after, calls = getattr(owner, name), int(os.environ.get("FAULT_STALL_AFTER", "0")), [0]

def stalled(*args, **kwargs):
    calls[0] += 1
    if calls[0] > after:
        Path(os.environ["FAULT_FLAG"]).write_text(str(os.getpid()))
        while True:
            time.sleep(60)
    return original(*args, **kwargs)

setattr(owner, name, stalled)
from bot.cli import main
sys.exit(main(["worker"]))
"""


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory)


class Deployment:
    """A data dir and database shared by the worker processes this test starts (and kills)."""

    def __init__(self, root: Path, starter: Path) -> None:
        self.root, self.data_dir, self.starter = root, root / "var", starter
        self.url = f"sqlite:///{self.data_dir / 'bot.db'}"
        self.data_dir.mkdir(parents=True)
        self.engine = init_db(self.url)
        self.sessions = session_factory(self.engine)
        self.registry = ModelRegistry(self.sessions, self.data_dir / "models")
        self.processes: list[subprocess.Popen] = []
        self.logs = 0

    def env(self, steps: int, **extra: str) -> dict[str, str]:
        return {**os.environ, "SNEAKERBOT_DATA_DIR": str(self.data_dir), "SNEAKERBOT_DATABASE_URL": self.url,
                "SNEAKERBOT_STARTER_MODEL_DIR": str(self.starter), "SNEAKERBOT_ADMIN_IDS": str(ADMIN),
                "SNEAKERBOT_RETRAIN_MIN_CORRECTIONS": str(CORRECTIONS), "SNEAKERBOT_RETRAIN_CHECK_SECONDS": "1",
                "SNEAKERBOT_RETRAIN_STEPS": str(steps), "SNEAKERBOT_INFERENCE_THREADS": "1", **extra}

    def start_worker(self, steps: int, *, stall_at: str | None = None, stall_after: int = 0) -> subprocess.Popen:
        """``sneakerbot worker`` in its own process (with a stall, the ``STALL`` wrapper around it)."""
        self.logs += 1
        extra = {}
        command = [sys.executable, "-m", "bot", "worker"]
        if stall_at:
            extra = {"FAULT_STALL_AT": stall_at, "FAULT_STALL_AFTER": str(stall_after), "FAULT_FLAG": str(self.flag)}
            command = [sys.executable, "-c", STALL]
        with (self.root / f"worker-{self.logs}.log").open("w") as log:
            process = subprocess.Popen(command, cwd=self.root, env=self.env(steps, **extra), stdout=log,
                                       stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    @property
    def flag(self) -> Path:
        return self.root / "stalled.flag"

    def log(self) -> str:
        return "\n".join((self.root / f"worker-{i}.log").read_text()[-3000:] for i in range(1, self.logs + 1))

    def kill(self, process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL

    def stop(self, process: subprocess.Popen) -> None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, self.log()

    # --- state ---------------------------------------------------------------
    def versions(self) -> dict[int, str]:
        with self.sessions() as session:
            return dict(session.execute(select(ModelVersion.version, ModelVersion.status)
                                        .order_by(ModelVersion.version)).all())

    def running(self) -> list[str]:
        with self.sessions() as session:
            return [o or "" for o in session.scalars(select(JobRun.outcome).where(JobRun.finished_at.is_(None)))]

    def finished(self, job_id: str) -> list[str]:
        with self.sessions() as session:
            return [o or "" for o in session.scalars(select(JobRun.outcome).where(
                JobRun.job_id == job_id, JobRun.finished_at.is_not(None)).order_by(JobRun.id))]

    def notes(self) -> list[str]:
        with self.sessions() as session:
            return [render_admin.notification(note.kind, note.payload)
                    for note in session.scalars(select(Notification).where(Notification.chat_id == ADMIN))]

    def consumed_by(self) -> set[int | None]:
        with self.sessions() as session:
            return set(session.scalars(select(Feedback.consumed_by_version)))

    def decided(self, version: int) -> bool:
        outcomes = self.finished("retrain_check")
        return any(o.startswith(f"version {version} ") for o in outcomes) or any(
            o.startswith("failed") for o in outcomes)


@pytest.fixture
def deployment(tmp_path: Path, base_model: Path) -> Iterator[Deployment]:
    """Version 1 (the tiny model) installed, 6 corrections waiting: the worker's retrain_check retrains at once."""
    deployment = Deployment(tmp_path, base_model)
    deployment.registry.install_starter(base_model)
    seed_corrections(deployment.sessions, deployment.data_dir, CORRECTIONS, LABEL)
    yield deployment
    for process in deployment.processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    deployment.engine.dispose()


def assert_next_retrain_is_normal(deployment: Deployment, version: int, v1_files: dict[str, str]) -> None:
    """The restarted worker retrains on its own and the gate decides ``version``; v1 is untouched."""
    wait_for(lambda: deployment.decided(version), f"a verdict on version {version}\n{deployment.log()}")
    outcome = deployment.finished("retrain_check")[-1]
    assert outcome.startswith(f"version {version} "), outcome
    status = deployment.versions()[version]
    assert status in {"promoted", "rejected"} and f" {status}: " in outcome
    info = deployment.registry.get(version)
    assert (info.path / "model.json").is_file() and (info.path / "head.pt").is_file()
    assert deployment.registry.current_version() == (version if status == "promoted" else 1)
    assert tree_digest(deployment.registry.get(1).path) == v1_files
    assert count_new_corrections(deployment.sessions) == 0 and deployment.consumed_by() == {version}
    assert not leftovers(deployment.registry.models_path)


def test_a_worker_killed_while_training_leaves_the_served_model_and_the_next_run_clean(
    deployment: Deployment,
) -> None:
    v1_files = tree_digest(deployment.registry.get(1).path)
    worker = deployment.start_worker(ENDLESS_STEPS)
    wait_for(lambda: any("training" in o for o in deployment.running()),
             f"the retrain to reach its training stage\n{deployment.log()}")
    half_made = list((deployment.registry.models_path / ".work").iterdir())
    assert half_made, "the run builds its candidate in .work"

    deployment.kill(worker)

    # Killed mid-training: the same model is current, nothing half-made is registered.
    assert deployment.versions() == {1: "promoted"} and deployment.registry.current_version() == 1
    assert tree_digest(deployment.registry.get(1).path) == v1_files
    assert deployment.consumed_by() == {None}  # the corrections still count as new
    assert sorted(p.name for p in deployment.registry.models_path.iterdir() if p.name.isdigit()) == ["1"]

    # Restarted (with a normal step count): the interrupted run is closed, its dir goes, and the
    # next retrain_check trains version 2 and the gate decides it.
    worker = deployment.start_worker(100)
    assert_next_retrain_is_normal(deployment, 2, v1_files)
    assert not any(path.exists() for path in half_made)
    with deployment.sessions() as session:
        interrupted = session.scalars(select(JobRun.outcome).where(JobRun.outcome.like("interrupted%"))).all()
    assert len(interrupted) == 1 and "retrain: training" in interrupted[0]
    assert any("stopped in the middle of a retrain" in note and "Version 1 still answers" in note
               for note in deployment.notes())
    deployment.stop(worker)


@pytest.mark.parametrize("kill_point", ["copying the candidate in", "comparing with the current model"])
def test_a_worker_killed_while_registering_or_comparing_never_serves_the_candidate(
    deployment: Deployment, kill_point: str,
) -> None:
    v1_files = tree_digest(deployment.registry.get(1).path)
    if kill_point == "copying the candidate in":  # the first file of version 2 is in, the second never comes
        worker = deployment.start_worker(100, stall_at="shutil:copy2", stall_after=1)
    else:
        worker = deployment.start_worker(100, stall_at="bot.registry:ModelRegistry.decide")
    wait_for(deployment.flag.is_file, f"the worker to stall {kill_point}\n{deployment.log()}")
    deployment.kill(worker)
    models = deployment.registry.models_path

    assert deployment.registry.current_version() == 1
    assert tree_digest(deployment.registry.get(1).path) == v1_files
    if kill_point == "copying the candidate in":
        staging = list(models.glob(".incoming-*"))  # half a copy, under a hidden name (version 2, this process)
        assert len(staging) == 1 and staging[0].name.startswith(".incoming-2-")
        assert len([f for f in staging[0].rglob("*") if f.is_file()]) == 1
        assert deployment.versions() == {1: "promoted"} and not (models / "2").exists()
        next_version = 2  # never committed: the number is free
    else:
        assert deployment.versions() == {1: "promoted", 2: "candidate"}
        assert deployment.consumed_by() == {2}
        next_version = 3

    worker = deployment.start_worker(100)
    assert_next_retrain_is_normal(deployment, next_version, v1_files)
    if kill_point == "comparing with the current model":
        version_2 = deployment.registry.get(2)
        assert version_2.status == "failed" and version_2.reason == INTERRUPTED
        assert not version_2.path.exists()  # files of a version that can never be served are removed
        with pytest.raises(NeverServed):
            deployment.registry.rollback(2)
        assert any("version 2 marked failed" in note for note in deployment.notes())
    deployment.stop(worker)


def test_staging_dirs_are_left_alone_while_no_version_is_current(tmp_path: Path) -> None:
    """A bot installing the starter model into an empty registry may be copying it in right now."""
    engine = init_db(f"sqlite:///{tmp_path / 'bot.db'}")
    registry = ModelRegistry(session_factory(engine), tmp_path / "models")
    (tmp_path / "models" / ".incoming-1").mkdir(parents=True)
    (tmp_path / "models" / ".work" / "retrain-x" / "model").mkdir(parents=True)

    removed = registry.sweep_unfinished()

    assert removed == [tmp_path / "models" / ".work" / "retrain-x"]
    assert (tmp_path / "models" / ".incoming-1").is_dir()
    engine.dispose()


# --------------------------------------------------------------------------- caches killed mid-write

WRITE_AND_STALL = """
import os, sys, time
from pathlib import Path
flag, target = Path(sys.argv[1]), Path(sys.argv[2])

def half_then_stall(handle_or_path, *args, **kwargs):
    opened = open(handle_or_path, "wb") if isinstance(handle_or_path, (str, Path)) else handle_or_path
    opened.write(b"PK half of a file")
    opened.flush()
    flag.write_text("stalled")
    while True:
        time.sleep(60)

if sys.argv[3] == "onnx":
    from ml.onnx_export import _write_atomically
    _write_atomically(target, half_then_stall)
else:
    import numpy as np
    from ml.embeddings import EmbeddingStore
    np.savez = half_then_stall
    store = EmbeddingStore(target)
    store.put("b" * 40, np.ones(4, np.float32), 0.5)
    store.save()
"""


def kill_mid_write(tmp_path: Path, target: Path, kind: str) -> None:
    flag = tmp_path / f"{kind}.flag"
    process = subprocess.Popen([sys.executable, "-c", WRITE_AND_STALL, str(flag), str(target), kind])
    try:
        wait_for(flag.is_file, f"the {kind} write to stall", timeout_s=120)
    finally:
        process.kill()
        process.wait()


def age(paths: list[Path], seconds: float) -> None:
    for path in paths:
        then = time.time() - seconds
        os.utime(path, (then, then))


def test_an_onnx_build_killed_midway_leaves_no_graph_and_the_next_build_clears_the_leftover(tmp_path: Path) -> None:
    from ml.onnx_export import _write_atomically

    target = tmp_path / "onnx" / "abc.gated.onnx"
    kill_mid_write(tmp_path, target, "onnx")

    assert not target.exists()  # readers open only the final name: nothing to half-load
    stale = list(target.parent.glob(".abc.gated.onnx.*.tmp"))
    assert len(stale) == 1

    age(stale, 2 * 3600)
    _write_atomically(target, lambda tmp: tmp.write_bytes(b"the whole graph"))
    assert target.read_bytes() == b"the whole graph"
    assert sorted(p.name for p in target.parent.iterdir()) == ["abc.gated.onnx"]


def test_an_embedding_cache_save_killed_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    from ml.embeddings import EmbeddingStore

    path = tmp_path / "embeddings" / "key" / "center.npz"
    store = EmbeddingStore(path)
    store.put("a" * 40, np.zeros(4, np.float32), 0.25)
    store.save()
    before = path.read_bytes()

    kill_mid_write(tmp_path, path, "npz")

    assert path.read_bytes() == before  # the previous store, whole
    reloaded = EmbeddingStore(path)
    assert list(reloaded.items) == ["a" * 40]
    stale = list(path.parent.glob(".center.*.tmp.npz"))
    assert len(stale) == 1

    age(stale, 2 * 3600)
    reloaded.put("c" * 40, np.ones(4, np.float32), 0.75)
    reloaded.save()
    assert sorted(EmbeddingStore(path).items) == ["a" * 40, "c" * 40]
    assert sorted(p.name for p in path.parent.iterdir()) == ["center.npz"]
