"""Helpers of the learning-loop tests: tiny generated "sneaker" photos and a tiny real model.

A class is a colour: each photo is a shoe-like blob of that colour on a light background,
with seeded jitter in shape, position and noise, so every photo has its own hash and the
real backbone's features still tell the classes apart. The model is trained by the ML
package itself (head mode, small input size) in a few seconds on one core.
"""

from __future__ import annotations

import io
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
