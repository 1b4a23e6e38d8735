"""Helpers of the learning-loop tests: tiny generated "sneaker" photos and a tiny real model.

A class is a colour: each photo is a shoe-like blob of that colour on a light background,
with seeded jitter in shape, position and noise, so every photo has its own hash and the
real backbone's features still tell the classes apart. The model is trained by the ML
package itself (head mode, small input size) in a few seconds on one core.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "air_jordan_1": (210, 30, 30),   # red
    "air_jordan_3": (30, 160, 40),   # green
    "air_jordan_4": (30, 50, 200),   # blue
}
YELLOW = (230, 210, 20)  # a colour the base model has never seen
SIZE = 96


def photo(colour: tuple[int, int, int], seed: int, size: int = SIZE) -> bytes:
    """A JPEG of one shoe-like blob; ``seed`` varies shape, place and noise."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    w, h = rng.uniform(0.55, 0.8) * size, rng.uniform(0.25, 0.4) * size
    x, y = rng.uniform(0.05, 0.95 * size - w), rng.uniform(0.3 * size, 0.9 * size - h)
    shade = np.clip(np.array(colour) + rng.integers(-20, 21, 3), 0, 255)
    draw.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in shade))
    draw.rectangle([x + 0.1 * w, y + 0.6 * h, x + 0.95 * w, y + h], fill=(245, 245, 245))  # the sole
    pixels = np.asarray(image).astype(int) + rng.integers(-6, 7, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def make_dataset(root: Path, per_class: int, *, seed: int = 0, rename: dict[str, str] | None = None,
                 labels: list[str] | None = None) -> Path:
    """``root/<label>/<i>.jpg`` for the classes in ``COLOURS`` (all, or ``labels``);
    ``rename`` files a colour under another label."""
    for k, (label, colour) in enumerate(COLOURS.items()):
        if labels is not None and label not in labels:
            continue
        folder = root / (rename or {}).get(label, label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{i}.jpg").write_bytes(photo(colour, seed * 100_000 + k * 1000 + i))
    return root


def train_model(data_dir: Path, out_dir: Path, cache_dir: Path, *, epochs: int = 60) -> Path:
    """A real model directory trained by ``ml`` in head mode (small inputs, one thread)."""
    from ml.train import TrainConfig, run_training

    config = TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), backbone="efficientnet_lite0", mode="head",
                         epochs=epochs, image_size=SIZE, cache_dir=str(cache_dir), threads=1, progress=False,
                         aug_views=1)
    return Path(run_training(config))


def shared_model(tmp_path_factory, name: str = "base", *, rotate_labels: bool = False,  # noqa: ANN001
                 labels: list[str] | None = None) -> Path:
    """A model trained once per test session and reused by every loop test module.

    ``rotate_labels`` files each colour under the next class's label: a model that is
    confidently wrong on every test photo (the "worse candidate"); ``labels`` trains on
    some classes only (a model that does not know a class yet).
    """
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / f"loop-model-{name}"
    model_dir = root / "model"
    if (model_dir / "model.json").is_file():
        return model_dir
    order = list(COLOURS)
    rename = {label: order[(i + 1) % len(order)] for i, label in enumerate(order)} if rotate_labels else None
    data = make_dataset(root / "dataset", per_class=20, rename=rename, labels=labels)
    return train_model(data, model_dir, tmp_path_factory.getbasetemp() / "loop-cache")


# --------------------------------------------------------------------------- fault tests (crashes, a full disk)


def tree_digest(root: Path) -> dict[str, str]:
    """The sha1 of every file under ``root``, by relative path: "unchanged" made checkable."""
    import hashlib

    return {str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(Path(root).rglob("*")) if path.is_file()}


def leftovers(root: Path) -> list[Path]:
    """Half-made things under ``root``: hidden work entries and temporary files (``.work`` itself may stay, empty)."""
    found = []
    for path in Path(root).rglob("*"):
        name = path.name
        if name == ".work" and path.is_dir() and not any(path.iterdir()):
            continue
        if name.startswith((".work", ".incoming-")) or ".partial-" in name or name.endswith((".tmp", ".tmp.npz")):
            found.append(path)
    return sorted(found)


def seed_corrections(sessions, data_dir: Path, n: int, label: str, *, seed: int = 0,  # noqa: ANN001
                     user_id: int = 1001) -> list[str]:
    """``n`` corrections of yellow photos to ``label``, stored as the bot stores them: the photo under
    ``images/<label>/``, an ``images`` row (source user, status train), a prediction and a "wrong"
    feedback row. Returns their sha1s."""
    import hashlib

    from bot.store.models import Feedback, Image, Prediction, User

    sha1s = []
    with sessions.begin() as session:
        if session.get(User, user_id) is None:
            session.add(User(id=user_id))
            session.flush()
        for i in range(n):
            data = photo(YELLOW, seed * 1000 + i)
            sha1 = hashlib.sha1(data).hexdigest()
            relative = Path("images") / label / f"{sha1}.jpg"
            (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / relative).write_bytes(data)
            prediction = Prediction(user_id=user_id, chat_id=user_id, image_sha1=sha1, top=[], verdict="sneaker")
            session.add(prediction)
            session.flush()
            session.add(Feedback(prediction_id=prediction.id, user_id=user_id, verdict="wrong", label=label))
            session.add(Image(sha1=sha1, path=str(relative), label=label, source="user", status="train",
                              user_id=user_id))
            sha1s.append(sha1)
    return sha1s


def slim_model_copy(model_dir: Path, out: Path) -> Path:
    """A copy of a model directory without its shipped ``model.onnx`` (18 MB of the tiny model's 19):
    what a small disk holds. The graph is then built into the ONNX cache on first load."""
    import json
    import shutil

    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("model.onnx"))
    meta = json.loads((out / "model.json").read_text())
    meta.setdefault("files", {})["onnx"] = None
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    return out


def wait_for(predicate, what: str, timeout_s: float = 240.0) -> None:  # noqa: ANN001
    """Poll ``predicate`` (state: rows, files) until it holds; fail after ``timeout_s`` naming ``what``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def worker_process(log_path: Path) -> Iterator[subprocess.Popen]:
    """``sneakerbot worker`` in its own process, as in production (settings from the environment);
    stopped with SIGTERM, and it must exit cleanly (its log is shown when it does not)."""
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "bot", "worker"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
