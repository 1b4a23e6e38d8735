"""Label audit: find images whose folder label is probably wrong, from out-of-fold predictions.

Each image is predicted by a head that never saw it (k folds over frozen-backbone
embeddings). An image is flagged when that head gives its own label almost no probability
while being fairly sure of another one. Flagged images are left out of *train* only:
val and test stay as they are, so reported metrics are not flattered by the audit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ml.head_training import fit_linear, predict_proba

log = logging.getLogger(__name__)


def out_of_fold_proba(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0,
                      steps: int = 200) -> np.ndarray:
    """Probabilities for every row from a head trained on the other folds."""
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(x)) % folds
    proba = np.zeros((len(x), n_classes), dtype=np.float32)
    for fold in range(folds):
        held = fold_of == fold
        # no label smoothing: it would put a floor under exactly the low probabilities we look for
        head, _ = fit_linear(x[~held], y[~held], n_classes, steps=steps, seed=seed + fold, label_smoothing=0.0)
        proba[held] = predict_proba(head, x[held])
    return proba


def audit_labels(frame: pd.DataFrame, feats: np.ndarray, footwear: np.ndarray, classes: list[str], *,
                 max_own: float = 0.02, min_other: float = 0.6, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row per image with its out-of-fold view; ``flagged`` marks likely wrong labels."""
    class_to_idx = {c: i for i, c in enumerate(classes)}
    y = np.array([class_to_idx[c] for c in frame["label"]])
    proba = out_of_fold_proba(feats, y, len(classes), folds=folds, seed=seed)
    own = proba[np.arange(len(y)), y]
    top = proba.argmax(1)
    report = pd.DataFrame({
        "path": frame["path"].values, "sha1": frame["sha1"].values, "label": frame["label"].values,
        "p_label": own, "predicted": [classes[i] for i in top], "p_predicted": proba.max(1),
        "footwear": footwear,
    })
    report["flagged"] = (report["p_label"] < max_own) & (report["p_predicted"] >= min_other)
    log.info("label audit: %d of %d images flagged (oof top-1 %.3f)", int(report["flagged"].sum()), len(report),
             float((top == y).mean()))
    return report.sort_values("p_label").reset_index(drop=True)


def write_audit(report: pd.DataFrame, path: Path) -> Path:
    """The flagged rows as csv (``sha1`` column), usable as ``train --exclude``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report[report["flagged"]].to_csv(path, index=False)
    return path


def run_audit(data_dir: Path, out: Path, *, backbone: str = "efficientnet_lite0", image_size: int | None = None,
              folds: int = 5, cache_dir: Path | None = None, threads: int | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Index ``data_dir``, embed it (cached), audit it and write the flagged rows to ``out``."""
    import torch

    from ml.backbones import create_backbone
    from ml.data import index_dataset
    from ml.embeddings import embed_frame

    if threads:
        torch.set_num_threads(threads)
    frame = index_dataset(data_dir, progress=progress).frame
    net = create_backbone(backbone, pretrained=True)
    prep = net.preprocessing.with_size(image_size or net.preprocessing.size)
    feats, footwear = embed_frame(net, prep, frame, ["center"], cache_dir, progress=progress)["center"]
    report = audit_labels(frame, feats, footwear, sorted(frame["label"].unique()), folds=folds)
    write_audit(report, Path(out))
    return report
