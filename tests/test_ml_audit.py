"""Label audit and threshold calibration on synthetic features (fast, no images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ml.audit import audit_labels
from ml.calibrate import calibrate_thresholds
from ml.evaluate import compute_metrics, verdicts

torch.set_num_threads(1)


def blobs(per_class: int = 60, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, dim))
    y = np.repeat(np.arange(3), per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


def test_audit_flags_flipped_labels_only() -> None:
    x, y = blobs()
    classes = ["a", "b", "c"]
    labels = [classes[i] for i in y]
    flipped = [5, 70, 130]
    for i in flipped:
        labels[i] = classes[(y[i] + 1) % 3]
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(y))], "sha1": [f"s{i}" for i in range(len(y))],
                          "label": labels})
    report = audit_labels(frame, x, np.ones(len(y)), classes, folds=4)
    flagged = set(report.loc[report["flagged"], "sha1"])
    assert flagged == {f"s{i}" for i in flipped}


def test_calibration_meets_precision_target_on_val() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    confident = rng.random(400) < 0.7
    probs = np.full((400, 4), 0.1)
    probs[np.arange(400), np.where(confident, y, (y + 1) % 4)] = np.where(confident, 0.9, 0.4)
    probs /= probs.sum(1, keepdims=True)
    footwear = np.clip(rng.normal(0.8, 0.2, 400), 0, 1)
    th = calibrate_thresholds(probs, y, footwear, target_precision=0.9)
    kept = probs.max(1) >= th["unsure"]
    assert (probs.argmax(1)[kept] == y[kept]).mean() >= 0.9
    assert 0.01 <= th["footwear"] <= 0.3
    v = verdicts(probs, footwear, th)
    assert set(v) <= {"sneaker", "unsure", "not_sneaker"}
    metrics = compute_metrics(probs, y, ["a", "b", "c", "d"], footwear=footwear, thresholds=th)
    assert abs(sum(metrics["verdicts"].values()) - 1) < 1e-9
    assert metrics["sneaker_verdict_top1"] >= 0.9
