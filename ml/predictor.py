"""Inference from a model directory: ``Predictor.load(model_dir, backend="onnx"|"torch")``.

ONNX Runtime is the fast path; PyTorch is the fallback (and what training uses). Both run
the same ``SneakerNet`` graph, so they give the same answers within float tolerance.
When a model directory ships without ``model.onnx`` (to keep the repo small), the graph is
exported once on first load into a cache directory, keyed by the weights' sha1.

Serving an ONNX graph that is already built imports no torch (a bot process stays ~500 MB
smaller): torch is imported only by the torch backend and by the first-load export.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import model_json
from ml.errors import ModelDirError
from ml.images import ImageSource, open_image
from ml.model_json import ClassInfo, ModelInfo
from ml.preprocessing import eval_array_transform
from ml.verdicts import known_level, known_probs, verdicts

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class Guess:
    """One candidate answer."""

    label: str
    display_name: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: top-k guesses, a verdict, the footwear score and the embedding."""

    top: list[Guess]
    verdict: str  # an ml.verdicts.Verdict value: "sneaker" | "unsure" | "unknown_sneaker" | "not_sneaker"
    footwear_score: float | None  # None: not computed, the photo looks like a sneaker the model knows
    embedding: np.ndarray
    familiarity: float | None = None  # cosine similarity to the nearest class centroid
    detail: str | None = None  # an ml.verdicts.Detail value, e.g. "other_footwear" (a shoe, not a sneaker)

    @property
    def best(self) -> Guess:
        """The most probable guess."""
        return self.top[0]

    def to_dict(self) -> dict:
        """JSON-ready (without the embedding)."""
        return {"top": [{"label": g.label, "display_name": g.display_name, "score": round(g.score, 4)}
                        for g in self.top],
                "verdict": self.verdict, "detail": self.detail,
                "footwear_score": None if self.footwear_score is None else round(self.footwear_score, 4),
                **({"familiarity": round(self.familiarity, 4)} if self.familiarity is not None else {})}


def default_cache_dir() -> Path:
    """Where ONNX builds go when the caller names no cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sneakerbot" / "onnx"


class Predictor:
    """A loaded model. Thread-safe for concurrent ``predict`` calls on the ONNX backend."""

    def __init__(self, info: ModelInfo, classes: list[ClassInfo], runner, backend: str,
                 centroids: np.ndarray | None = None) -> None:
        self.info, self.classes, self.backend = info, classes, backend
        self._runner = runner
        self._transform = eval_array_transform(info.preprocessing)
        self._names = {c.label: c.display_name for c in classes}
        self._centroids = centroids
        self.n_open = len(info.open_outputs)  # open-set outputs after the classes (``ml.verdicts.OPEN_SET_OUTPUTS``)
        self.thresholds: dict[str, float | None] = {
            "footwear": float(info.thresholds["footwear"]), "unsure": float(info.thresholds["unsure"]),
            "familiar": _optional_float(info.thresholds.get("familiar")) if centroids is not None else None,
            **({"open": float(info.thresholds["open"])} if self.n_open else {}),
        }

    @classmethod
    def load(cls, model_dir: Path | str, *, backend: str = "onnx", cache_dir: Path | str | None = None,
             threads: int | None = None, thresholds: dict | None = None) -> Predictor:
        """Load a model directory; ``thresholds`` overrides (None values keep the model's own)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        model_dir = Path(model_dir)
        meta = model_json.read_model_json(model_dir)
        info = model_json.model_info(model_dir, meta)
        classes = model_json.classes_of(meta)
        centroids = model_json.load_centroids(model_dir, meta)
        runner: _OnnxRunner | _TorchRunner
        if backend == "onnx":
            path, gated = _onnx_path(model_dir, meta, Path(cache_dir) if cache_dir else default_cache_dir(), info,
                                     centroids)
            runner = _OnnxRunner(path, threads, gated)
        else:
            from ml.artifacts import load_net  # torch, only for this backend

            runner = _TorchRunner(load_net(model_dir, meta), threads, centroids)
        predictor = cls(info, classes, runner, backend, centroids)
        for key, value in (thresholds or {}).items():
            if value is not None:
                predictor.thresholds[key] = float(value)
        return predictor

    # ----------------------------------------------------------------- public API

    def display_name(self, label: str) -> str:
        """The name users see for a label (falls back to a prettified label)."""
        return self._names.get(label) or model_json.display_name(label)

    @property
    def labels(self) -> list[str]:
        """Class labels in model order."""
        return [c.label for c in self.classes]

    def predict(self, images: Sequence[ImageSource] | ImageSource, k: int = 3, *,
                batch_size: int = 16) -> list[Prediction]:
        """Top-k guesses and a verdict (with its detail) per image. Raises ``BadImage`` for an unusable input.

        The guesses are always known classes, scored among them (``ml.verdicts.known_probs``), also
        for an "unknown sneaker" (the closest known models). The footwear branch runs only when a
        photo of the batch needs it (``ml.verdicts.known_sneaker``); when it did not run,
        ``footwear_score`` is None.
        """
        probs, embedding, footwear, familiarity = self._infer(_as_list(images), batch_size, gate="needed")
        rule, detail = verdicts(probs, footwear, self.thresholds, familiarity, n_open=self.n_open)
        known = known_probs(probs, self.n_open)
        return [self._prediction(known[i], embedding[i], _score(footwear[i]), rule[i], detail[i],
                                 None if familiarity is None else float(familiarity[i]), k)
                for i in range(len(probs))]

    def familiarity(self, embedding: np.ndarray) -> np.ndarray | None:
        """Cosine similarity of each embedding to its nearest class centroid (None without centroids)."""
        if self._centroids is None or not len(embedding):
            return None
        return (embedding @ self._centroids.T).max(axis=1)

    def embed(self, images: Sequence[ImageSource] | ImageSource, *, batch_size: int = 16) -> np.ndarray:
        """L2-normalised features ``[N, D]`` (the memory's vectors)."""
        return self._infer(_as_list(images), batch_size, gate="none")[1]

    def predict_arrays(self, images: Sequence[ImageSource], *,
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw (probs [N, C], footwear [N], familiarity [N] or None) for evaluation; footwear for every image.

        ``probs`` are the head's outputs as ``ml.verdicts.verdicts`` takes them: the classes, then
        the ``n_open`` open-set outputs of a model trained with negatives.
        """
        probs, _, footwear, familiarity = self._infer(list(images), batch_size, gate="all")
        return probs, footwear, familiarity

    # ----------------------------------------------------------------- internals

    def _infer(self, images: list[ImageSource], batch_size: int,
               gate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(probs, embedding, footwear, familiarity).

        ``gate``: run the footwear branch for "all" batches, for those with a photo that "needed"
        it, or for "none" (footwear NaN where it did not run).
        """
        level = {"all": np.inf, "none": -np.inf}.get(gate)
        if level is None:  # no "familiar" threshold (a model without centroids): every photo needs it
            level = known_level(self.thresholds) or np.inf
        outs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = np.stack([self._transform(open_image(img)) for img in chunk])
            probs, embedding, footwear = self._runner(batch, level)
            outs.append((probs, embedding, footwear, self.familiarity(embedding)))
        if not outs:
            n = len(self.classes) + self.n_open
            empty = np.zeros(0, np.float32)
            return np.zeros((0, n), np.float32), np.zeros((0, 0), np.float32), empty, \
                (empty if self._centroids is not None else None)
        probs, embedding, footwear, familiarity = zip(*outs, strict=False)
        return (np.concatenate(probs), np.concatenate(embedding), np.concatenate(footwear),
                None if familiarity[0] is None else np.concatenate(familiarity))

    def _prediction(self, probs: np.ndarray, embedding: np.ndarray, footwear: float | None, verdict: str,
                    detail: str | None, familiarity: float | None, k: int) -> Prediction:
        """One answer; ``probs`` over the known classes only."""
        order = np.argsort(-probs)[: max(1, min(k, len(probs)))]
        top = [Guess(self.classes[i].label, self.classes[i].display_name, float(probs[i])) for i in order]
        return Prediction(top=top, verdict=str(verdict), footwear_score=footwear, embedding=embedding,
                          familiarity=familiarity, detail=None if detail is None else str(detail))


def _score(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _as_list(images: Sequence[ImageSource] | ImageSource) -> list[ImageSource]:
    if isinstance(images, (bytes, str, Path)) or hasattr(images, "mode"):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


class _OnnxRunner:
    def __init__(self, path: Path, threads: int | None, gated: bool) -> None:
        from ml.onnx_runtime import onnx_session

        self.session, self.gated = onnx_session(path, threads), gated

    def __call__(self, batch: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ml.onnx_runtime import run_gated, run_session

        return run_gated(self.session, batch, level) if self.gated else run_session(self.session, batch)


class _TorchRunner:
    """The same semantics as the ONNX graphs: the footwear branch runs when a photo is under ``level``."""

    def __init__(self, net, threads: int | None, centroids: np.ndarray | None) -> None:
        import torch

        self.net = net.eval().to(memory_format=torch.channels_last)  # faster depthwise convs on CPU
        self.centroids = torch.from_numpy(centroids) if centroids is not None and net.has_gate else None
        if threads:
            torch.set_num_threads(threads)

    def __call__(self, batch: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            if self.centroids is None:
                return tuple(t.numpy() for t in self.net(x))  # type: ignore[return-value]
            probs, embedding, shared = self.net.classify(x)
            if bool(((embedding @ self.centroids.T).max(dim=1).values < level).any()):
                footwear = self.net.gate(shared)
            else:
                footwear = torch.full((len(batch),), float("nan"))
            return probs.numpy(), embedding.numpy(), footwear.numpy()


def _onnx_path(model_dir: Path, meta: dict, cache_dir: Path, info: ModelInfo,
               centroids: np.ndarray | None) -> tuple[Path, bool]:
    """The ONNX graph to run and whether it is gated (``export_gated``): the shipped model.onnx
    or a build cached in ``cache_dir``, keyed by the weights' sha1 (and the centroids a gated
    graph holds), exported on first load (the only step here that imports torch)."""
    gated = _has_gate(meta) and centroids is not None
    key = model_json.weights_fingerprint(model_dir, meta)
    shipped = meta.get("files", {}).get("onnx")
    if shipped and (model_dir / shipped).is_file() and not gated:
        return model_dir / shipped, False
    if gated:
        key = hashlib.sha1(key.encode() + centroids.tobytes()).hexdigest()  # type: ignore[union-attr]
    cached = cache_dir / f"{key}{'.gated' if gated else ''}.onnx"
    if cached.is_file():
        return cached, gated
    log.info("building the ONNX graph of %s into %s (once)", model_dir, cached)
    from ml.artifacts import load_net  # torch: building the graph needs the network
    from ml.onnx_export import export_gated, export_onnx

    try:
        net = load_net(model_dir, meta)
        if gated:
            return export_gated(net, cached, info.preprocessing.size, centroids), True  # type: ignore[arg-type]
        return export_onnx(net, cached, info.preprocessing.size), False
    except OSError as exc:  # the partial file is gone (``_write_atomically``); whoever serves a model keeps it
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModelDirError(f"the disk is full: no room in {cache_dir} for the ONNX build of {model_dir} "
                                f"({exc}); nothing was left half-written") from exc
        raise ModelDirError(f"cannot write the ONNX build of {model_dir} to {cache_dir}: {exc}") from exc


def _has_gate(meta: dict) -> bool:
    """The model's footwear score comes from a frozen ImageNet branch of its own (``SneakerNet.has_gate``)."""
    return bool(meta["backbone"].get("imagenet_branch")) and meta.get("footwear", {}).get("method") == "imagenet"
