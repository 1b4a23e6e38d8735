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
- ``open`` (a model with open-set outputs, ``ml.verdicts.OPEN_SET_OUTPUTS``): the lowest mass on
  those outputs that at most ``open_quantile`` of val's known sneakers reach; from it on, a photo
  is "some other sneaker" or "some other shoe". The val negatives' rate from it on is reported
  per group. With it, ``unsure`` is chosen on the known classes' renormalised confidence
  (``ml.verdicts.known_probs``), over the val photos the open rule lets through, val negatives
  included and counted as wrong answers: "sneaker" must be ``target_precision`` right on what
  actually reaches it, and a Vans named as an Air Jordan is a wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.verdicts import known_probs, open_score

FOOTWEAR_CLIP = {"imagenet": (0.01, 0.3), "centroid": (0.0, 0.95)}
FAMILIAR_FLOOR = 0.65


def calibrate_thresholds(probs: np.ndarray, y: np.ndarray, footwear: np.ndarray, *, target_precision: float = 0.9,
                         footwear_quantile: float = 0.02, method: str = "imagenet",
                         familiarity: np.ndarray | None = None, familiar_quantile: float = 0.25, n_open: int = 0,
                         negative_probs: np.ndarray | None = None, negative_groups: Sequence[str] = (),
                         open_quantile: float = 0.02) -> dict:
    """{"footwear", "unsure", "familiar", "open" (with ``n_open``), "calibration": {...how they were chosen...}}.

    ``probs`` and ``y``: val's known sneakers (head outputs: the classes, then ``n_open`` open-set
    outputs); ``negative_probs`` and ``negative_groups``: val's negatives (``ml.negatives``).
    """
    lo, hi = FOOTWEAR_CLIP.get(method, (0.0, 1.0))
    if len(footwear):
        fw = float(np.clip(np.quantile(footwear, footwear_quantile), lo, hi))
    else:
        fw = lo
    familiar = None
    if method == "imagenet" and familiarity is not None and len(familiarity):
        familiar = max(FAMILIAR_FLOOR, float(np.quantile(familiarity, familiar_quantile)))
    calibration = {
        "familiar_quantile": familiar_quantile if familiar is not None else None,
        "split": "val", "n": int(len(y)), "footwear_method": method, "footwear_quantile": footwear_quantile,
        "val_footwear_pass_rate": float((footwear >= fw).mean()) if len(footwear) else None,
        "target_precision": target_precision,
    }
    thresholds = {"footwear": fw, "unsure": 0.5, "familiar": familiar}
    if n_open:
        negatives = negative_probs if negative_probs is not None else np.zeros((0, probs.shape[1]), np.float32)
        thresholds.update(_open_thresholds(probs, y, n_open, negatives, list(negative_groups), target_precision,
                                           open_quantile, calibration))
    else:
        unsure, precision, coverage = confidence_threshold(probs, y, target_precision)
        thresholds["unsure"] = unsure
        calibration.update(precision_above_unsure=precision, coverage_above_unsure=coverage)
    return {**thresholds, "calibration": calibration}


def _open_thresholds(probs: np.ndarray, y: np.ndarray, n_open: int, negatives: np.ndarray, groups: list[str],
                     target: float, quantile: float, calibration: dict) -> dict:
    """{"open", "unsure"} for a model with open-set outputs; what they do on val goes into ``calibration``."""
    score, neg_score = open_score(probs, n_open), open_score(negatives, n_open)
    level = open_threshold(score, quantile)
    passed, neg_passed = score < level, neg_score < level
    known, neg_known = known_probs(probs, n_open), known_probs(negatives, n_open)
    unsure, precision, _ = confidence_threshold(
        np.concatenate([known[passed], neg_known[neg_passed]]),
        np.concatenate([y[passed], np.full(int(neg_passed.sum()), -1)]), target)  # a negative is never right
    sure = passed & (known.max(1) >= unsure) if len(y) else passed
    neg_sure = neg_passed & (neg_known.max(1) >= unsure)
    calibration.update(
        precision_above_unsure=precision,
        coverage_above_unsure=float(sure.mean()) if len(y) else None,
        unsure_counts_negatives=True, open_quantile=quantile,
        val_known_open_rate=float((~passed).mean()) if len(y) else None,
        val_negatives=_per_group(groups, ~neg_passed, neg_sure),
    )
    return {"open": level, "unsure": unsure}


def _per_group(groups: list[str], opened: np.ndarray, sure: np.ndarray) -> dict:
    """Per negative group of val: how many, the share the open rule catches, the share still named confidently."""
    out = {}
    for group in sorted(set(groups)):
        rows = np.asarray(groups) == group
        out[group] = {"n": int(rows.sum()), "open_rate": float(opened[rows].mean()),
                      "sneaker_rate": float(sure[rows].mean())}
    return out


def open_threshold(score: np.ndarray, quantile: float) -> float:
    """The lowest level that at most ``quantile`` of ``score`` reach (``>=``); 0.5 without scores.

    Just above the score ranked ``floor(quantile * n) + 1`` from the top, so ties never let more through;
    the next float32 up, as served scores are float32 and compared in float32.
    """
    if not len(score):
        return 0.5
    allowed = int(np.floor(quantile * len(score)))
    ordered = np.sort(np.asarray(score, dtype=np.float64))[::-1]
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(np.inf)))


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
