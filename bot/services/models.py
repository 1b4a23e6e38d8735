"""Which model the bot serves: the ``Identifier`` protocol, the holder and the first load.

The identify service depends only on the small ``Identifier`` protocol, which
``ml.predictor.Predictor`` satisfies. Versions live in ``bot.registry``; when the current
version changes, ``ModelHolder.swap`` serves the new model without a restart.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from bot.registry import BadModelDir, ModelRegistry
from bot.services.errors import ModelUnavailable

log = logging.getLogger(__name__)


class ClassInfoLike(Protocol):
    """A class the model knows."""

    label: str
    display_name: str


class GuessLike(Protocol):
    """One of the top-k guesses."""

    label: str
    display_name: str
    score: float


class PredictionLike(Protocol):
    """What the identifier says about one image."""

    top: Sequence[GuessLike]
    verdict: str
    footwear_score: float | None  # None: not computed (the photo looks like a sneaker the model knows)
    detail: str | None  # an ml.verdicts.Detail value: "other_footwear" words a not_sneaker differently


class Identifier(Protocol):
    """What the bot needs from a model (``ml.predictor.Predictor`` is one)."""

    @property
    def classes(self) -> Sequence[ClassInfoLike]: ...

    def predict(self, images: Sequence[Any], k: int = 3) -> Sequence[PredictionLike]: ...


@dataclass(frozen=True)
class ServedModel:
    """A model and its registry version (None when it is not in the registry)."""

    version: int | None
    identifier: Identifier


def input_side(identifier: object) -> int | None:
    """The smallest image side the model's preprocessing resizes from (its resize target), or None.

    Decoding need not produce more pixels than this; models without ``info.preprocessing``
    (size and crop fraction, as ``ml.predictor.Predictor`` has) get the full image.
    """
    prep = getattr(getattr(identifier, "info", None), "preprocessing", None)
    size, crop = getattr(prep, "size", None), getattr(prep, "crop_pct", None) or 1.0
    if not isinstance(size, int) or not isinstance(crop, (int, float)) or size <= 0 or crop <= 0:
        return None
    return math.ceil(size / crop) + 1  # one spare pixel against the resize's rounding


def natural_key(text: str) -> list[object]:
    """Sort "Air Jordan 2" before "Air Jordan 10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class ModelHolder:
    """The served model; swapping it is atomic, readers never see half a model."""

    def __init__(self, served: ServedModel) -> None:
        self._served = served
        self._lock = threading.Lock()

    def current(self) -> ServedModel:
        """The model to use for the next photo."""
        with self._lock:
            return self._served

    def swap(self, served: ServedModel) -> None:
        """Serve another model from now on."""
        with self._lock:
            self._served = served
        log.info("serving model version %s", served.version)

    def sorted_classes(self) -> list[ClassInfoLike]:
        """Known classes in the order the correction keyboard shows them."""
        return sorted(self.current().identifier.classes, key=lambda c: natural_key(c.display_name))

    def knows(self, label: str) -> bool:
        """Whether the served model has this label."""
        return any(info.label == label for info in self.current().identifier.classes)

    def display_name(self, label: str) -> str:
        """Human name of a label, or the label itself when the model does not know it."""
        for info in self.current().identifier.classes:
            if info.label == label:
                return info.display_name
        return label


def load_served_model(sessions: sessionmaker[Session], *, starter_dir: Path, models_dir: Path,
                      backend: str = "onnx", threads: int | None = 1,
                      thresholds: dict[str, float | None] | None = None) -> ServedModel:
    """Load the registry's current model, installing the starter model as version 1 on first start.

    ``threads`` is per inference call: the identify service runs several calls in parallel.
    ``thresholds`` overrides the model's calibrated ones where a value is not None.
    """
    registry = ModelRegistry(sessions, models_dir)
    current = registry.current()
    if current is None:
        try:
            current = registry.install_starter(starter_dir) or registry.current()
        except BadModelDir as exc:
            raise ModelUnavailable(f"no model in the registry and no starter model: {exc}") from exc
    if current is None:
        raise ModelUnavailable("the model registry has versions but none is current")
    return ServedModel(current.version, open_predictor(current.path, backend=backend, threads=threads,
                                                       thresholds=thresholds))


def open_predictor(path: Path | str, *, backend: str = "onnx", threads: int | None = 1,
                   thresholds: dict[str, float | None] | None = None) -> Any:
    """A model directory loaded the way the bot serves it: at start and on every hot swap alike.

    On the ONNX backend this imports no torch when the graph is already built (shipped or cached).
    """
    from ml.predictor import Predictor  # imported here: loading it pulls in onnxruntime

    predictor = Predictor.load(path, backend=backend, threads=threads, thresholds=thresholds)
    if backend == "onnx":  # the torch backend sets its own threads from ``threads``
        _single_threaded_torch()
    return predictor


def _single_threaded_torch() -> None:
    """One torch thread, in a process that has loaded torch (to build a model's ONNX graph on first load).

    Serving runs no torch op (preprocessing is PIL and NumPy); should any run, a torch thread
    pool would only add synchronisation (its workers spin-wait for the next op, which on a busy
    machine costs more CPU than the op): the identify pool is the parallelism. A process without
    torch does not import it for this.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
