"""Backbone features per image, cached by sha1 + backbone so a retrain only embeds new images.

One store per (backbone weights, preprocessing, view) under ``<cache>/embeddings/<key>/<view>.npz``.
Views: ``center`` (the eval preset, what inference sees), ``flip`` (its mirror image) and
``aug<i>`` (the train preset with a seed derived from the image's sha1 and ``i``, so the same
augmented view is reproducible and cacheable). Each entry also keeps the ImageNet footwear
score when the backbone has that head.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from ml.atomic import atomic_path, remove_stale
from ml.backbones import Backbone, Preprocessing
from ml.data import load_or_blank
from ml.model import IMAGENET_FOOTWEAR
from ml.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


def view_names(aug_views: int, flip: bool = True) -> list[str]:
    """The views a head-mode run embeds for train images."""
    return ["center", *(["flip"] if flip else []), *(f"aug{i}" for i in range(aug_views))]


def cache_key(backbone: Backbone, prep: Preprocessing, weights_tag: str = "imagenet") -> str:
    """Identifies the features: backbone, its weights and the preprocessing."""
    return f"{backbone.name}-{weights_tag}-{prep.size}-{prep.resize}"


class EmbeddingStore:
    """sha1 -> (feature, footwear score) for one key and view, kept in one npz file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, tuple[np.ndarray, float]] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                for sha, feat, fw in zip(data["sha1"], data["feats"], data["footwear"], strict=False):
                    self.items[str(sha)] = (feat, float(fw))
        self.dirty = False

    def missing(self, sha1s: Sequence[str]) -> list[str]:
        return [s for s in dict.fromkeys(sha1s) if s not in self.items]

    def put(self, sha1: str, feat: np.ndarray, footwear: float) -> None:
        self.items[sha1] = (feat.astype(np.float16), float(footwear))
        self.dirty = True

    def get(self, sha1s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        feats = np.stack([self.items[s][0] for s in sha1s]).astype(np.float32)
        return feats, np.array([self.items[s][1] for s in sha1s], dtype=np.float32)

    def save(self) -> None:
        """Write the store through a temporary file renamed into place (readers never see half a file).

        The temporary name is hidden and this process's own; a failed write (a full disk) removes
        it and leaves the previous file as it was, and a write killed midway leaves only a stale
        temporary file, which the next save of this store removes.
        """
        if not self.dirty:
            return
        directory = self.path.parent
        remove_stale(directory, f".{self.path.stem}.*.tmp.npz")  # also the names of earlier versions
        remove_stale(directory, self.path.with_suffix(".tmp.npz").name)
        shas = list(self.items)
        with atomic_path(self.path, suffix=".tmp.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, sha1=np.array(shas), feats=np.stack([self.items[s][0] for s in shas]),
                     footwear=np.array([self.items[s][1] for s in shas], dtype=np.float32))
        self.dirty = False


def view_transform(view: str, prep: Preprocessing):
    """The transform of one view: ``center`` (the eval preset), ``flip`` (its mirror), ``aug<i>`` (the train preset)."""
    if view == "center":
        return eval_transform(prep)
    if view == "flip":
        return T.Compose([T.RandomHorizontalFlip(1.0), eval_transform(prep)])
    return train_transform(prep)


def seed_for(sha1: str, view: str) -> int:
    """The seed of an augmented view: the same photo always gets the same view, so it can be cached."""
    return int(hashlib.sha1(f"{view}:{sha1}".encode()).hexdigest()[:8], 16)


def footwear_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """ImageNet probability mass on footwear classes."""
    idx = torch.tensor(sorted(IMAGENET_FOOTWEAR), device=logits.device)
    return torch.softmax(logits, dim=1).index_select(1, idx).sum(1)


@torch.inference_mode()
def compute_features(backbone: Backbone, images: list[Image.Image], transform,
                     seeds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and footwear scores (NaN without an ImageNet head) for a batch of images."""
    tensors = []
    for i, image in enumerate(images):
        if seeds is not None:
            torch.manual_seed(seeds[i])
        tensors.append(transform(image))
    batch = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
    if backbone.has_imagenet_head:
        feats, logits = backbone.features_and_imagenet(batch)
        assert logits is not None  # has_imagenet_head
        footwear = footwear_from_logits(logits).numpy()
    else:
        feats, footwear = backbone(batch), np.full(len(images), np.nan, dtype=np.float32)
    return feats.float().numpy(), footwear


def embed_frame(backbone: Backbone, prep: Preprocessing, frame: pd.DataFrame, views: Sequence[str],
                cache_dir: Path | None, *, weights_tag: str = "imagenet", batch_size: int = 64,
                progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{view: (features [N, D], footwear [N])} aligned with ``frame`` rows, using and filling the cache."""
    backbone.eval().to(memory_format=torch.channels_last)  # ~3x faster depthwise convs on CPU
    key = cache_key(backbone, prep, weights_tag)
    root = Path(cache_dir) / "embeddings" / key if cache_dir else None
    paths = dict(zip(frame["sha1"], frame["path"], strict=False))
    out = {}
    for view in views:
        store = EmbeddingStore(root / f"{view}.npz") if root else EmbeddingStore(Path("/nonexistent/x.npz"))
        todo = store.missing(list(frame["sha1"]))
        transform = view_transform(view, prep)
        bar = tqdm(total=len(todo), desc=f"embed {view}", unit="img", disable=not progress or not todo, leave=False)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = [load_or_blank(paths[s]) for s in chunk]
            seeds = None if view in ("center", "flip") else [seed_for(s, view) for s in chunk]
            feats, footwear = compute_features(backbone, images, transform, seeds)
            for sha, feat, fw in zip(chunk, feats, footwear, strict=False):
                store.put(sha, feat, fw)
            bar.update(len(chunk))
            if root and start and start % (batch_size * 20) == 0:
                store.save()  # an interrupted embedding run keeps what it did
        bar.close()
        if root:
            store.save()
        out[view] = store.get(list(frame["sha1"]))
        if todo:
            log.info("embedded %d new images (%s, %s); %d from cache", len(todo), key, view, len(frame) - len(todo))
    return out
