"""The training data a model directory carries: its photos' features under its own backbone.

Why carry features and not rely on the photos: a deployment has no copy of the dataset a
model was built from (Docker, a fresh clone), and a retrain that sees only the database's
photos would forget every class nobody corrected. A head retrain needs nothing but the
backbone's features of the old photos, so ``carried.npz`` keeps them: the ``center`` view
of every train, val and test photo and the ``flip`` view of the train photos, with their
label, split, sha1 and ImageNet footwear score (val thresholds are calibrated on it).

A model with open-set outputs (``ml.verdicts.OPEN_SET_OUTPUTS``) also carries its negatives'
train, val and test photos (``ml.negatives``; never the held-out groups), labelled with the
output they train and keeping their group, so a retrain keeps those outputs and recalibrates
the ``open`` threshold. Readers that rank classes never see them unless they ask
(``select(negatives=True)``): the promotion gate's test photos, top-1 figures and class lists
are about the known classes.

Why 8 bits: the features are post-ReLU6 averages, so each row is stored as uint8 between
its own minimum and maximum (1 byte per value instead of 2 for fp16, 15 MB instead of 30
for the starter's 8,700 photos). ``quantization_check`` measures what it costs: the
starter's head gives the same top-1 answer on the dequantised test features as on the
float ones for all but a handful of photos (the figure is in ``model.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ml.atomic import atomic_path
from ml.verdicts import OPEN_SET_OUTPUTS

CARRIED_FILE = "carried.npz"
COLUMNS = ["sha1", "label", "split", "view", "footwear", "group"]  # group: a negative's (ml.negatives), else ""
CARRIED_VIEWS = {"train": ("center", "flip"), "val": ("center",), "test": ("center",)}


@dataclass
class Carried:
    """Rows of (sha1, label, split, view, footwear, group) and their features, float32 ``[N, D]``."""

    frame: pd.DataFrame
    feats: np.ndarray

    def __post_init__(self) -> None:
        if "group" not in self.frame:  # rows made before negatives were carried
            self.frame = self.frame.assign(group="")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def feature_dim(self) -> int:
        """Width of the feature rows."""
        return int(self.feats.shape[1]) if self.feats.ndim == 2 else 0

    def select(self, *, split: str | None = None, view: str | None = None, negatives: bool = False) -> Carried:
        """The known classes' rows of one split and/or view; with ``negatives``, the negatives' rows too."""
        mask = np.ones(len(self.frame), dtype=bool) if negatives else ~self.negative_rows()
        if split is not None:
            mask &= (self.frame["split"] == split).to_numpy()
        if view is not None:
            mask &= (self.frame["view"] == view).to_numpy()
        return Carried(self.frame[mask].reset_index(drop=True), self.feats[mask])

    def without(self, sha1s: set[str]) -> Carried:
        """Every row whose photo is not in ``sha1s`` (a newer label replaces a carried one)."""
        keep = ~self.frame["sha1"].isin(sha1s).to_numpy()
        return Carried(self.frame[keep].reset_index(drop=True), self.feats[keep])

    def negative_rows(self) -> np.ndarray:
        """Boolean per row: a negative's (labelled with an open-set output)."""
        return self.frame["label"].isin(OPEN_SET_OUTPUTS).to_numpy()

    def labels(self) -> list[str]:
        """The class labels present, sorted (the open-set outputs are not classes)."""
        return sorted(self.frame.loc[~self.negative_rows(), "label"].unique())

    @classmethod
    def empty(cls, dim: int) -> Carried:
        """No rows."""
        return cls(pd.DataFrame(columns=COLUMNS), np.zeros((0, dim), np.float32))

    @classmethod
    def concat(cls, parts: list[Carried]) -> Carried:
        """All rows of ``parts``, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(0)
        frame = pd.concat([p.frame[COLUMNS] for p in parts], ignore_index=True)
        return cls(frame, np.concatenate([p.feats for p in parts]).astype(np.float32))

    def save(self, model_dir: Path) -> str:
        """Write ``carried.npz`` into ``model_dir``; returns its file name.

        Through a temporary file renamed into place: a crash or a full disk never leaves a
        half-written ``carried.npz``, and a failed write leaves no temporary file either.
        """
        q, lo, step = quantize(self.feats)
        path = Path(model_dir) / CARRIED_FILE
        with atomic_path(path, suffix=".tmp.npz") as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(
                handle, q=q, lo=lo, step=step, footwear=self.frame["footwear"].to_numpy(np.float16),
                **{name: np.asarray(self.frame[name].fillna("").astype(str).tolist(), dtype=str)
                   for name in ("sha1", "label", "split", "view", "group")})
        return CARRIED_FILE

    @classmethod
    def load(cls, model_dir: Path, meta: dict) -> Carried | None:
        """The features a model directory carries, or None for one that carries none."""
        name = meta.get("files", {}).get("carried")
        if not name or not (Path(model_dir) / name).is_file():
            return None
        with np.load(Path(model_dir) / name, allow_pickle=False) as data:
            frame = pd.DataFrame({key: data[key].astype(str) for key in ("sha1", "label", "split", "view")})
            frame["footwear"] = data["footwear"].astype(np.float32)
            frame["group"] = data["group"].astype(str) if "group" in data.files else ""
            feats = dequantize(data["q"], data["lo"], data["step"])
        return cls(frame, feats)


def quantize(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows to uint8 between each row's own min and max: (codes, row minimum, row step)."""
    feats = np.asarray(feats, dtype=np.float32)
    if not len(feats):
        return np.zeros(feats.shape, np.uint8), np.zeros(0, np.float32), np.zeros(0, np.float32)
    lo = feats.min(axis=1)
    step = np.maximum((feats.max(axis=1) - lo) / 255.0, 1e-12).astype(np.float32)
    q = np.clip(np.rint((feats - lo[:, None]) / step[:, None]), 0, 255).astype(np.uint8)
    return q, lo.astype(np.float32), step


def dequantize(q: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Float32 rows back from ``quantize``'s codes."""
    return (q.astype(np.float32) * step[:, None] + lo[:, None]).astype(np.float32)
