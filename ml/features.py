"""A model directory's backbone features through ONNX Runtime, cached by the backbone's weights.

A head retrain needs the features of its new photos under the current model's own
backbone. Eager PyTorch embeds about 14 photos a second on one of this machine's two
cores; the same backbone exported to ONNX and run with one thread per core is several
times faster. The graph (``images -> features, footwear``) is exported once per backbone
into ``<cache>/onnx/`` and the features are kept in ``<cache>/embeddings/<key>/<view>.npz``,
keyed by a fingerprint of the backbone's weights, so a retrain only embeds photos no
earlier run embedded, and a candidate that keeps its parent's backbone (every head
retrain) hits the same cache.

Views are those of ``ml.embeddings``: ``center`` (what inference sees), ``flip`` and
seeded ``aug<i>`` views for training.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ml import artifacts
from ml.backbones import Backbone
from ml.embeddings import EmbeddingStore, footwear_from_logits, load_or_blank, seed_for, view_transform

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total) photos of the current view
FEATURES, FOOTWEAR = "features", "footwear"


def backbone_key(model_dir: Path, meta: dict) -> str:
    """Identifies a model's features: its backbone weights and input size (not its head).

    A fine-tuned backbone is keyed by the sha1 of its ``backbone.pt`` (a head retrain copies
    that file byte for byte, so parent and candidate share the key); a stock pretrained one
    by its name.
    """
    size = meta["preprocessing"]["size"]
    name = meta["backbone"]["name"]
    weights = meta.get("files", {}).get("backbone")
    if not weights:
        return f"{name}-pretrained-{size}"
    digest = hashlib.sha1((Path(model_dir) / weights).read_bytes()).hexdigest()[:16]
    return f"{name}-{digest}-{size}"


class _FeaturesGraph(torch.nn.Module):
    """images -> (raw features the head reads, ImageNet footwear mass or NaN)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backbone.has_imagenet_head:
            feats, logits = self.backbone.features_and_imagenet(x)
            assert logits is not None  # has_imagenet_head
            return feats, footwear_from_logits(logits)
        feats = self.backbone(x)
        return feats, torch.full((x.shape[0],), float("nan"))


class FeatureExtractor:
    """Embeds photos with a model directory's backbone on ONNX Runtime, through the cache."""

    def __init__(self, model_dir: Path, cache_dir: Path, *, threads: int | None = None,
                 batch_size: int = 32) -> None:
        self.model_dir, self.cache_dir = Path(model_dir), Path(cache_dir)
        self.meta = artifacts.read_model_json(self.model_dir)
        self.key = backbone_key(self.model_dir, self.meta)
        self.prep = artifacts.model_info(self.model_dir, self.meta).preprocessing
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self._session: Any = None  # an onnxruntime.InferenceSession, made on first use

    def embed(self, frame: pd.DataFrame, views: Sequence[str], *,
              progress: Progress | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{view: (features [N, D], footwear [N])} aligned with ``frame`` (columns sha1, path)."""
        paths = dict(zip(frame["sha1"], frame["path"], strict=False))
        out = {}
        for view in views:
            store = EmbeddingStore(self.cache_dir / "embeddings" / self.key / f"{view}.npz")
            todo = store.missing(list(frame["sha1"]))
            self._fill(store, todo, paths, view, progress)
            out[view] = store.get(list(frame["sha1"])) if len(frame) else _empty()
        return out

    def _fill(self, store: EmbeddingStore, todo: list[str], paths: dict, view: str,
              progress: Progress | None) -> None:
        """Embed ``todo`` into ``store``, saving every few batches so an interrupted run keeps its work."""
        if not todo:
            return
        transform = view_transform(view, self.prep)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            tensors = []
            for sha in chunk:
                if view.startswith("aug"):
                    torch.manual_seed(seed_for(sha, view))
                tensors.append(transform(load_or_blank(paths[sha])))
            feats, footwear = self._run(torch.stack(tensors).numpy())
            for sha, feat, fw in zip(chunk, feats, footwear, strict=False):
                store.put(sha, feat, fw)
            if start // self.batch_size % 20 == 19:
                store.save()
            if progress:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        store.save()
        log.info("embedded %d photos (%s, %s) with ONNX Runtime", len(todo), self.key, view)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._session is None:
            from ml.onnx_export import onnx_session

            self._session = onnx_session(self._graph(), self.threads)
        feats, footwear = self._session.run([FEATURES, FOOTWEAR], {"images": batch.astype(np.float32)})
        return feats, footwear

    def _graph(self) -> Path:
        """The features graph of this backbone, exported on first use into the cache."""
        from ml.onnx_export import export_module

        path = self.cache_dir / "onnx" / f"features-{self.key}.onnx"
        if path.is_file():
            return path
        backbone = artifacts.load_net(self.model_dir, self.meta).backbone.eval()
        log.info("exporting the features graph of %s into %s (once)", self.model_dir, path)
        return export_module(_FeaturesGraph(backbone), self.prep.size, [FEATURES, FOOTWEAR], path)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
