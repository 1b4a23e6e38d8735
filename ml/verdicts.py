"""The verdict rule, in one place: the Predictor, evaluation and calibration all apply it."""

from __future__ import annotations

import numpy as np

VERDICTS = ("sneaker", "unsure", "not_sneaker")


def verdicts(probs: np.ndarray, footwear: np.ndarray, thresholds: dict,
             familiarity: np.ndarray | None = None) -> np.ndarray:
    """The verdict rule, vectorised (the Predictor applies exactly this).

    ``sneaker`` when the top-1 confidence reaches ``unsure``, else ``unsure``; ``not_sneaker``
    when the footwear score is under its threshold, except for a *familiar* photo: one whose
    embedding is at least ``familiar`` close to a class centroid, as close as most sneakers of
    val. Those are sneakers the ImageNet footwear score misses (on-foot, close-ups, odd angles);
    they get ``unsure`` with guesses, never a confident answer.
    """
    top1 = probs.max(1)
    out = np.where(top1 >= thresholds["unsure"], "sneaker", "unsure").astype(object)
    low = footwear < thresholds["footwear"]
    if familiarity is not None and thresholds.get("familiar") is not None:
        rescued = low & (familiarity >= thresholds["familiar"])
        out[rescued] = "unsure"
        low &= ~rescued
    out[low] = "not_sneaker"
    return out
