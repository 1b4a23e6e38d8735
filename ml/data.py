"""A dataset is a folder of class folders, ``<root>/<label>/*``: index it, check it, split it.

Images are verified on the way in (fastai's habit): files that are not images, are corrupt or
are too small are skipped and reported, never crash a run. Exact duplicates are kept once;
the same bytes filed under two labels is a label conflict, reported and left out, since we
cannot know which label is right.

The split is stratified per label and seeded, and an image's place in it depends only on
its sha1 and the seed, not on file names or listing order.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ml.errors import BadImage, CorruptImage, DatasetError, ImageTooLarge, ImageTooSmall, NotAnImage
from ml.images import MIN_SIDE, open_image

log = logging.getLogger(__name__)

COLUMNS = ["path", "label", "sha1", "width", "height", "source"]
PROBLEM_COLUMNS = ["path", "label", "kind", "detail"]
SPLITS = ("train", "val", "test")
AUDIT_SPLIT = "audit"  # photos a label audit set aside from every split (``apply_exclusions``)

_PROBLEM_KINDS: dict[type[BadImage], str] = {
    NotAnImage: "not_an_image",
    CorruptImage: "corrupt",
    ImageTooSmall: "too_small",
    ImageTooLarge: "too_large",
}


@dataclass
class DatasetIndex:
    """The usable images (``frame``) and everything that was left out and why (``problems``)."""

    frame: pd.DataFrame
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))

    @property
    def labels(self) -> list[str]:
        """Sorted class labels present in the index."""
        return sorted(self.frame["label"].unique())

    def summary(self) -> dict:
        """Counts for logs and model.json's data snapshot."""
        return {
            "images": int(len(self.frame)),
            "classes": int(self.frame["label"].nunique()),
            "per_class": {k: int(v) for k, v in self.frame["label"].value_counts().sort_index().items()},
            "problems": {k: int(v) for k, v in self.problems["kind"].value_counts().items()},
        }


def index_dataset(
    root: Path | str,
    *,
    min_side: int = MIN_SIDE,
    source: str | None = None,
    progress: bool = True,
) -> DatasetIndex:
    """Walk ``root/<label>/*``, verify every file and return the index with its problems."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    files = [
        (path, label_dir.name)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for path in visible_files(label_dir)
    ]
    index = index_files(files, min_side=min_side, source=source or root.name, progress=progress)
    if len(index.problems):
        log.info("index %s: %d images, %d left out (%s)", root, len(index.frame), len(index.problems),
                 dict(index.problems["kind"].value_counts()))
    return index


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder``, sorted, hidden ones (``.name``) left out."""
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def index_files(files: list[tuple[Path, str]], *, min_side: int = MIN_SIDE, source: str = "",
                progress: bool = True) -> DatasetIndex:
    """Verify ``(path, label)`` pairs: the usable images (duplicates and label conflicts dropped) and the problems."""
    rows, problems = [], []
    for path, label in tqdm(files, desc="index", unit="img", disable=not progress, leave=False):
        row, problem = _inspect(path, label, min_side)
        if problem:
            problems.append(problem)
        else:
            rows.append({**row, "source": source})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame, dup_problems = _drop_duplicates(frame)
    return DatasetIndex(frame.reset_index(drop=True), pd.DataFrame(problems + dup_problems, columns=PROBLEM_COLUMNS))


def _inspect(path: Path, label: str, min_side: int) -> tuple[dict, dict | None]:
    try:
        data = path.read_bytes()
        image = open_image(data, min_side=min_side)
    except BadImage as exc:
        kind = next(k for cls, k in _PROBLEM_KINDS.items() if isinstance(exc, cls))
        return {}, {"path": str(path), "label": label, "kind": kind, "detail": str(exc)}
    except OSError as exc:
        return {}, {"path": str(path), "label": label, "kind": "unreadable", "detail": str(exc)}
    row = {"path": str(path), "label": label, "sha1": hashlib.sha1(data).hexdigest(),
           "width": image.width, "height": image.height}
    return row, None


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Keep one copy per (sha1, label); drop every copy of a sha1 filed under several labels."""
    problems = []
    labels_per_sha = frame.groupby("sha1")["label"].nunique()
    conflicted = set(labels_per_sha[labels_per_sha > 1].index)
    for _, row in frame[frame["sha1"].isin(conflicted)].iterrows():
        others = sorted(set(frame.loc[frame["sha1"] == row["sha1"], "label"]) - {row["label"]})
        problems.append({"path": row["path"], "label": row["label"], "kind": "label_conflict",
                         "detail": f"same image also filed under {', '.join(others)}"})
    frame = frame[~frame["sha1"].isin(conflicted)]
    dup_mask = frame.duplicated(subset=["sha1"], keep="first")
    for _, row in frame[dup_mask].iterrows():
        problems.append({"path": row["path"], "label": row["label"], "kind": "duplicate",
                         "detail": "exact copy of an image kept under the same label"})
    return frame[~dup_mask], problems


def split_dataset(frame: pd.DataFrame, seed: int = 0, val: float = 0.15, test: float = 0.15) -> pd.DataFrame:
    """Return a copy of ``frame`` with a ``split`` column: stratified per label, seeded.

    Within each label images are ordered by a seeded hash of their sha1; the first
    ``round(n*test)`` go to test, the next ``round(n*val)`` to val. Labels with at least
    three images get at least one val and one test image.
    """
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DatasetError(f"bad split fractions val={val} test={test}")
    out = frame.copy()
    out["split"] = "train"
    keys = out["sha1"].map(lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    for _, idx in out.groupby("label").groups.items():
        order = keys.loc[idx].sort_values().index
        n = len(order)
        n_test, n_val = _split_counts(n, val, test)
        out.loc[order[:n_test], "split"] = "test"
        out.loc[order[n_test:n_test + n_val], "split"] = "val"
    return out


def _split_counts(n: int, val: float, test: float) -> tuple[int, int]:
    n_test, n_val = int(round(n * test)), int(round(n * val))
    if n >= 3:
        n_test, n_val = max(n_test, 1 if test > 0 else 0), max(n_val, 1 if val > 0 else 0)
    while n_test + n_val >= n and n_test + n_val > 0:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def restrict(frame: pd.DataFrame, labels: Iterable[str]) -> pd.DataFrame:
    """Only the rows of the given labels (benchmarks on class subsets)."""
    keep = set(labels)
    return frame[frame["label"].isin(keep)].reset_index(drop=True)


def read_exclusions(path: Path) -> set[str]:
    """sha1s from a label-audit file (csv with a ``sha1`` column, or one sha1 per line)."""
    if path.suffix == ".csv":
        return set(pd.read_csv(path)["sha1"].astype(str))
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def apply_exclusions(frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Move the photos a label audit flagged out of train, val and test (their ``split`` becomes "audit").

    Why every split: a flagged photo's folder label is probably wrong. In train it teaches the
    wrong answer; in val it skews thresholds and early stopping; in test it counts a right
    answer as wrong (checked by eye for the starter model: most flagged test photos show
    another model than their folder says, and the model names that one). The split is drawn
    before this, so every other photo keeps its split; the flagged rows stay in the frame so
    the model directory can show them next to the model's answer (``plots/audit.png``).
    Returns the frame and how many photos left each split.
    """
    hit = frame["sha1"].isin(read_exclusions(path)) & (frame["split"] != AUDIT_SPLIT)
    counts = {str(k): int(v) for k, v in frame.loc[hit, "split"].value_counts().items()}
    frame = frame.copy()
    frame.loc[hit, "split"] = AUDIT_SPLIT
    return frame, counts


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights, mean 1, for imbalanced classes."""
    present = np.unique(labels)
    weights = np.zeros(n_classes, dtype=np.float64)
    if len(present):  # sklearn's "balanced" is over the classes present; ours over all, absent ones at 0
        weights[present] = compute_class_weight("balanced", classes=present, y=labels) * len(present) / n_classes
    return weights.astype(np.float32)


def load_or_blank(path: str | Path) -> Image.Image:
    """The photo, or a blank one when it changed since it was indexed (a run never dies on one file)."""
    try:
        return open_image(Path(path), min_side=1)
    except (BadImage, OSError):
        return Image.new("RGB", (64, 64), "white")


class ImageFrameDataset(Dataset):
    """Rows of an index frame as (tensor, class index); unreadable files become a blank image."""

    def __init__(self, frame: pd.DataFrame, class_to_idx: dict[str, int], transform) -> None:
        self.paths = frame["path"].tolist()
        self.targets = [class_to_idx[label] for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_or_blank(self.paths[i])), self.targets[i]
