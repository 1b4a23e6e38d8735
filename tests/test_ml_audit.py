"""Label audit and threshold calibration on synthetic features (fast, no images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ml.audit import audit_labels
from ml.calibrate import calibrate_thresholds
from ml.evaluate import compute_metrics
from ml.verdicts import known_sneaker, verdicts

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
    v, _ = verdicts(probs, footwear, th)
    assert set(v) <= {"sneaker", "unsure", "not_sneaker"}
    metrics = compute_metrics(probs, y, ["a", "b", "c", "d"], footwear=footwear, thresholds=th)
    assert abs(sum(metrics["verdicts"].values()) - 1) < 1e-9
    assert metrics["sneaker_verdict_top1"] >= 0.9


def test_familiar_photos_under_the_footwear_threshold_are_unsure_not_rejected() -> None:
    rng = np.random.default_rng(2)
    familiarity = rng.uniform(0.4, 0.95, 500)
    probs = np.full((4, 3), 0.05)
    probs[:, 0] = 0.9  # every row is a confident guess
    th = calibrate_thresholds(np.tile(probs, (125, 1)), np.zeros(500, int), np.full(500, 0.5),
                              familiarity=familiarity, familiar_quantile=0.25)
    assert th["familiar"] == pytest.approx(max(0.65, np.quantile(familiarity, 0.25)))
    th = {"footwear": 0.01, "unsure": 0.5, "familiar": 0.7}
    footwear = np.array([0.5, 0.001, 0.001, 0.5])
    familiar = np.array([0.2, 0.69, 0.71, 0.9])
    assert list(verdicts(probs, footwear, th, familiar)[0]) == ["sneaker", "not_sneaker", "unsure", "sneaker"]
    assert list(verdicts(probs, footwear, th)[0]) == ["sneaker", "not_sneaker", "not_sneaker", "sneaker"]
    assert list(verdicts(probs, footwear, {**th, "familiar": None}, familiar)[0])[2] == "not_sneaker"
    # a photo at least KNOWN_FLOOR (and ``familiar``) close to a centroid is judged on confidence alone:
    # its footwear score may be missing (NaN: not computed) or low
    known = np.array([0.2, 0.74, 0.76, 0.76])
    assert list(verdicts(probs, np.array([0.5, np.nan, np.nan, 0.001]), th, known)[0]) == \
        ["sneaker", "sneaker", "sneaker", "sneaker"]
    assert list(known_sneaker(known, th, 4)) == [False, False, True, True]
    assert list(known_sneaker(known, {**th, "familiar": 0.8}, 4)) == [False] * 4  # the model's own level if higher
    assert list(known_sneaker(None, th, 2)) == [False, False]
    assert list(verdicts(probs, np.full(4, 0.001), th, known)[0]) == ["not_sneaker", "unsure", "sneaker", "sneaker"]
    # a model scored by centroids (no ImageNet head) gets no separate familiarity rule
    assert calibrate_thresholds(probs, np.zeros(4, int), np.full(4, 0.5), method="centroid",
                                familiarity=np.ones(4))["familiar"] is None
