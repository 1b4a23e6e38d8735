"""Inference from a model directory: ``Predictor.load(model_dir, backend="onnx"|"torch")``.

ONNX Runtime is the fast path; PyTorch is the fallback (and what training uses). Both run
the same ``SneakerNet`` graph, so they give the same answers within float tolerance.
When a model directory ships without ``model.onnx`` (to keep the repo small), the graph is
exported once on first load into a cache directory, keyed by the weights' sha1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml import artifacts
from ml.artifacts import ClassInfo, ModelInfo
from ml.errors import ModelDirError
from ml.images import ImageSource, open_image
from ml.onnx_export import SplitGraphs
from ml.transforms import eval_transform
from ml.verdicts import known_sneaker, verdicts

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
    verdict: str  # "sneaker" | "unsure" | "not_sneaker"
    footwear_score: float | None  # None: not computed, the photo looks like a sneaker the model knows
    embedding: np.ndarray
    familiarity: float | None = None  # cosine similarity to the nearest class centroid

    @property
    def best(self) -> Guess:
        """The most probable guess."""
        return self.top[0]

    def to_dict(self) -> dict:
        """JSON-ready (without the embedding)."""
        return {"top": [{"label": g.label, "display_name": g.display_name, "score": round(g.score, 4)}
                        for g in self.top],
                "verdict": self.verdict,
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
        self._transform = eval_transform(info.preprocessing)
        self._names = {c.label: c.display_name for c in classes}
        self._centroids = centroids
        self.thresholds: dict[str, float | None] = {
            "footwear": float(info.thresholds["footwear"]), "unsure": float(info.thresholds["unsure"]),
            "familiar": _optional_float(info.thresholds.get("familiar")) if centroids is not None else None,
        }

    @classmethod
    def load(cls, model_dir: Path | str, *, backend: str = "onnx", cache_dir: Path | str | None = None,
             threads: int | None = None, thresholds: dict | None = None) -> Predictor:
        """Load a model directory; ``thresholds`` overrides (None values keep the model's own)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        model_dir = Path(model_dir)
        meta = artifacts.read_model_json(model_dir)
        info = artifacts.model_info(model_dir, meta)
        classes = artifacts.classes_of(meta)
        if backend == "onnx":
            graphs = _onnx_graphs(model_dir, meta, Path(cache_dir) if cache_dir else default_cache_dir(), info)
            runner = _OnnxRunner(graphs, threads)
        else:
            runner = _TorchRunner(artifacts.load_net(model_dir, meta), threads)
        predictor = cls(info, classes, runner, backend, artifacts.load_centroids(model_dir, meta))
        for key, value in (thresholds or {}).items():
            if value is not None:
                predictor.thresholds[key] = float(value)
        return predictor

    # ----------------------------------------------------------------- public API

    def display_name(self, label: str) -> str:
        """The name users see for a label (falls back to a prettified label)."""
        return self._names.get(label) or artifacts.display_name(label)

    @property
    def labels(self) -> list[str]:
        """Class labels in model order."""
        return [c.label for c in self.classes]

    def predict(self, images: Sequence[ImageSource] | ImageSource, k: int = 3, *,
                batch_size: int = 16) -> list[Prediction]:
        """Top-k guesses and a verdict per image. Raises ``BadImage`` for an unusable input.

        The footwear branch runs only for photos that need it (``ml.verdicts.known_sneaker``);
        the others get ``footwear_score`` None.
        """
        probs, embedding, footwear, familiarity = self._infer(_as_list(images), batch_size, gate="needed")
        rule = verdicts(probs, footwear, self.thresholds, familiarity)
        return [self._prediction(probs[i], embedding[i], _score(footwear[i]), rule[i],
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
        """Raw (probs [N, C], footwear [N], familiarity [N] or None) for evaluation; footwear for every image."""
        probs, _, footwear, familiarity = self._infer(list(images), batch_size, gate="all")
        return probs, footwear, familiarity

    # ----------------------------------------------------------------- internals

    def _infer(self, images: list[ImageSource], batch_size: int,
               gate: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(probs, embedding, footwear, familiarity); ``gate``: run the footwear branch for "all", "needed" or "none"."""
        outs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = torch.stack([self._transform(open_image(img)) for img in chunk]).numpy()
            out = self._runner(batch)
            familiarity = self.familiarity(out.embedding)
            outs.append((out.probs, out.embedding, self._footwear(out, familiarity, gate), familiarity))
        if not outs:
            n = len(self.classes)
            empty = np.zeros(0, np.float32)
            return np.zeros((0, n), np.float32), np.zeros((0, 0), np.float32), empty, \
                (empty if self._centroids is not None else None)
        probs, embedding, footwear, familiarity = zip(*outs)
        return (np.concatenate(probs), np.concatenate(embedding), np.concatenate(footwear),
                None if familiarity[0] is None else np.concatenate(familiarity))

    def _footwear(self, out: _Outputs, familiarity: np.ndarray | None, gate: str) -> np.ndarray:
        """Footwear scores, from the separate branch only where asked (NaN where it did not run)."""
        if out.footwear is not None:
            return out.footwear
        scores = np.full(len(out.probs), np.nan, np.float32)
        if gate == "all":
            need = np.ones(len(scores), dtype=bool)
        elif gate == "needed":
            need = ~known_sneaker(familiarity, self.thresholds, len(scores))
        else:
            need = np.zeros(len(scores), dtype=bool)
        if need.any():
            scores[need] = self._runner.gate(out.shared[need])
        return scores

    def _prediction(self, probs: np.ndarray, embedding: np.ndarray, footwear: float, verdict: str,
                    familiarity: float | None, k: int) -> Prediction:
        order = np.argsort(-probs)[: max(1, min(k, len(probs)))]
        top = [Guess(self.classes[i].label, self.classes[i].display_name, float(probs[i])) for i in order]
        return Prediction(top=top, verdict=str(verdict), footwear_score=footwear, embedding=embedding,
                          familiarity=familiarity)


def _score(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _as_list(images: Sequence[ImageSource] | ImageSource) -> list[ImageSource]:
    if isinstance(images, (bytes, str, Path)) or hasattr(images, "mode"):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Outputs:
    """One batch through the network: ``footwear`` None when the footwear branch runs apart from ``shared``."""

    probs: np.ndarray
    embedding: np.ndarray
    footwear: np.ndarray | None
    shared: np.ndarray | None = None


class _OnnxRunner:
    def __init__(self, graphs: Path | SplitGraphs, threads: int | None) -> None:
        from ml.onnx_export import onnx_session

        split = isinstance(graphs, SplitGraphs)
        self.session = onnx_session(graphs.classify if split else graphs, threads)
        # One thread for the footwear branch: it runs right after the first graph, whose thread pool
        # is still spinning; a second pool fighting it for the cores took 26 ms instead of 13 (bench.speed).
        self.gate_session = onnx_session(graphs.gate, 1) if split else None

    def __call__(self, batch: np.ndarray) -> _Outputs:
        from ml.onnx_export import run_classify, run_session

        if self.gate_session is None:
            return _Outputs(*run_session(self.session, batch))
        probs, embedding, shared = run_classify(self.session, batch)
        return _Outputs(probs, embedding, None, shared)

    def gate(self, shared: np.ndarray) -> np.ndarray:
        from ml.onnx_export import run_gate

        return run_gate(self.gate_session, shared)


class _TorchRunner:
    def __init__(self, net, threads: int | None) -> None:
        self.net = net.eval().to(memory_format=torch.channels_last)  # faster depthwise convs on CPU
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> _Outputs:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        if self.net.has_gate:
            probs, embedding, shared = self.net.classify(x)
            return _Outputs(probs.numpy(), embedding.numpy(), None, shared.numpy())
        probs, embedding, footwear = self.net(x)
        return _Outputs(probs.numpy(), embedding.numpy(), footwear.numpy())

    @torch.inference_mode()
    def gate(self, shared: np.ndarray) -> np.ndarray:
        return self.net.gate(torch.from_numpy(shared)).numpy()


def _onnx_graphs(model_dir: Path, meta: dict, cache_dir: Path, info: ModelInfo) -> Path | SplitGraphs:
    """The ONNX graph(s) to run: two when the footwear branch can be skipped, else the shipped
    model.onnx or a cached build of it. Builds go into ``cache_dir``, keyed by the weights' sha1,
    and are exported on first load."""
    from ml.onnx_export import export_onnx, export_split

    key = artifacts.weights_fingerprint(model_dir, meta)
    try:
        if _has_gate(meta):
            graphs = SplitGraphs(cache_dir / f"{key}.classify.onnx", cache_dir / f"{key}.gate.onnx")
            if not (graphs.classify.is_file() and graphs.gate.is_file()):
                log.info("building the ONNX graphs of %s into %s (once)", model_dir, cache_dir)
                export_split(artifacts.load_net(model_dir, meta), graphs.classify, graphs.gate, info.preprocessing.size)
            return graphs
        shipped = meta.get("files", {}).get("onnx")
        if shipped and (model_dir / shipped).is_file():
            return model_dir / shipped
        cached = cache_dir / f"{key}.onnx"
        if not cached.is_file():
            log.info("building the ONNX graph of %s into %s (once)", model_dir, cached)
            export_onnx(artifacts.load_net(model_dir, meta), cached, info.preprocessing.size)
        return cached
    except OSError as exc:
        raise ModelDirError(f"cannot write the ONNX build of {model_dir} to {cache_dir}: {exc}") from exc


def _has_gate(meta: dict) -> bool:
    """The model's footwear score comes from a frozen ImageNet branch of its own (``SneakerNet.has_gate``)."""
    return bool(meta["backbone"].get("imagenet_branch")) and meta.get("footwear", {}).get("method") == "imagenet"
