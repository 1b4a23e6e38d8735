"""Thresholds chosen on val (never on test) and stored with the model.

- ``footwear``: every val image is a sneaker, so the threshold is a low quantile of their
  footwear scores: at most ``footwear_quantile`` of real sneaker photos get "not_sneaker".
  For the ImageNet score it is clipped to [0.01, 0.3]: non-footwear photos (a cat, a cup)
  put well under 1% of the mass on footwear classes, so the floor keeps the rule honest
  even when val is tiny.
- ``unsure``: the smallest top-1 confidence above which val answers are at least
  ``target_precision`` right; below it the bot says it is unsure.
- ``familiar`` (ImageNet footwear score only): the ``familiar_quantile`` quantile of val
  sneakers' cosine similarity to their nearest class centroid, never under
  ``FAMILIAR_FLOOR``. A photo under the footwear threshold but at least this familiar is
  answered "unsure" instead of "not a sneaker"; from ``max(familiar, KNOWN_FLOOR)`` on, the
  footwear score is not consulted at all (``ml.verdicts.known_sneaker``). The floor was
  measured on the 160 and 192 px starter models: no non-sneaker sample photo shipped with
  scikit-image, scikit-learn or matplotlib comes above 0.64, while the median test sneaker is
  near 0.8.
"""

from __future__ import annotations

import numpy as np

FOOTWEAR_CLIP = {"imagenet": (0.01, 0.3), "centroid": (0.0, 0.95)}
FAMILIAR_FLOOR = 0.65


def calibrate_thresholds(probs: np.ndarray, y: np.ndarray, footwear: np.ndarray, *, target_precision: float = 0.9,
                         footwear_quantile: float = 0.02, method: str = "imagenet",
                         familiarity: np.ndarray | None = None, familiar_quantile: float = 0.25) -> dict:
    """{"footwear", "unsure", "familiar", "calibration": {...how they were chosen...}}."""
    lo, hi = FOOTWEAR_CLIP.get(method, (0.0, 1.0))
    if len(footwear):
        fw = float(np.clip(np.quantile(footwear, footwear_quantile), lo, hi))
    else:
        fw = lo
    unsure, precision, coverage = confidence_threshold(probs, y, target_precision)
    familiar = None
    if method == "imagenet" and familiarity is not None and len(familiarity):
        familiar = max(FAMILIAR_FLOOR, float(np.quantile(familiarity, familiar_quantile)))
    return {
        "footwear": fw,
        "unsure": unsure,
        "familiar": familiar,
        "calibration": {
            "familiar_quantile": familiar_quantile if familiar is not None else None,
            "split": "val", "n": int(len(y)), "footwear_method": method, "footwear_quantile": footwear_quantile,
            "val_footwear_pass_rate": float((footwear >= fw).mean()) if len(footwear) else None,
            "target_precision": target_precision, "precision_above_unsure": precision,
            "coverage_above_unsure": coverage,
        },
    }


def confidence_threshold(probs: np.ndarray, y: np.ndarray, target: float) -> tuple[float, float | None, float | None]:
    """Smallest confidence t with precision(conf >= t) >= target; (t, precision, coverage)."""
    if not len(y):
        return 0.5, None, None
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    order = np.argsort(-conf)
    cum_precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    sorted_conf = conf[order]
    # a threshold keeps every tie of its value: only cut where the confidence changes
    group_end = np.append(sorted_conf[:-1] > sorted_conf[1:], True)
    ok = np.flatnonzero((cum_precision >= target) & group_end)
    if not len(ok):
        return float(conf.max()), None, 0.0
    # the largest prefix (lowest threshold) whose precision still meets the target
    cut = ok.max()
    threshold = float(conf[order[cut]])
    kept = conf >= threshold
    return threshold, float(correct[kept].mean()), float(kept.mean())
