"""The verdict rule, in one place: the Predictor, evaluation and calibration all apply it."""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class Verdict(StrEnum):
    """What the bot answers about a photo; members are the strings stored and shown in metrics."""

    SNEAKER = "sneaker"  # a confident answer
    UNSURE = "unsure"  # guesses, flagged as unsure
    NOT_SNEAKER = "not_sneaker"  # not a shoe at all, or a shoe that is not a sneaker (boot, sandal, heel...)
    UNKNOWN_SNEAKER = "unknown_sneaker"  # a sneaker, but not one of the models the bot knows yet


class Detail(StrEnum):
    """Why a verdict was given, where the reply words it differently (``Prediction.detail``)."""

    OTHER_FOOTWEAR = "other_footwear"  # not_sneaker: a shoe, but not a sneaker


# Head outputs after the known classes in a model trained with negatives (``--negatives``):
# "some other sneaker" and "some other shoe". They are never a class users can pick.
OPEN_SET_OUTPUTS = ("_other_sneaker", "_other_footwear")


VERDICTS = tuple(v.value for v in Verdict)  # plain strings: keys of metrics files

# Familiarity from which a photo counts as a sneaker the model knows, whatever the model's own
# ``familiar`` threshold. On the 160, 192 and 224 px starter models no view of the non-sneaker
# photos scikit-image, scikit-learn and matplotlib ship comes above 0.65 (``bench.gate``).
KNOWN_FLOOR = 0.75


def known_level(thresholds: dict) -> float | None:
    """The familiarity from which a photo is a *known* sneaker: ``familiar``, never under ``KNOWN_FLOOR``."""
    level = thresholds.get("familiar")
    return None if level is None else max(float(level), KNOWN_FLOOR)


def known_sneaker(familiarity: np.ndarray | None, thresholds: dict, n: int) -> np.ndarray:
    """Photos so close to a class centroid that the footwear score is not consulted.

    Why: the footwear score needs the frozen ImageNet branch, as costly as the classifier's own
    blocks. For a photo that looks like the training sneakers (about three in four real
    ones) the question it answers, "is this footwear at all?", is settled, so the predictor
    does not run it when no photo of the batch needs it.
    """
    level = known_level(thresholds)
    if familiarity is None or level is None:
        return np.zeros(n, dtype=bool)
    return familiarity >= level


def verdicts(probs: np.ndarray, footwear: np.ndarray, thresholds: dict,
             familiarity: np.ndarray | None = None) -> np.ndarray:
    """The verdict rule, vectorised (the Predictor applies exactly this).

    ``sneaker`` when the top-1 confidence reaches ``unsure``, else ``unsure``; ``not_sneaker``
    when the footwear score is under its threshold, except for a *familiar* photo: one whose
    embedding is at least ``familiar`` close to a class centroid, as close as most sneakers of
    val. Those are sneakers the ImageNet footwear score misses (on-foot, close-ups, odd angles);
    they get ``unsure`` with guesses, never a confident answer. A *known* photo (``known_sneaker``)
    is judged on its confidence alone: its footwear score is not consulted (NaN when skipped).
    """
    top1 = probs.max(1)
    out = np.where(top1 >= thresholds["unsure"], Verdict.SNEAKER.value, Verdict.UNSURE.value).astype(object)
    with np.errstate(invalid="ignore"):
        low = (footwear < thresholds["footwear"]) & ~known_sneaker(familiarity, thresholds, len(probs))
    if familiarity is not None and thresholds.get("familiar") is not None:
        rescued = low & (familiarity >= thresholds["familiar"])
        out[rescued] = Verdict.UNSURE.value
        low &= ~rescued
    out[low] = Verdict.NOT_SNEAKER.value
    return out
