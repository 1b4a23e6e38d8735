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


def open_score(probs: np.ndarray, n_open: int) -> np.ndarray:
    """The probability mass on the open-set outputs (the last ``n_open`` columns): "none of the known models"."""
    if not n_open:
        return np.zeros(len(probs), dtype=np.float32)
    return probs[:, -n_open:].sum(axis=1)


def known_probs(probs: np.ndarray, n_open: int) -> np.ndarray:
    """The known classes' probabilities renormalised over them (the open-set outputs dropped).

    Why renormalise: guesses are always known models ("the closest known models" for an unknown
    sneaker), and their scores must read as a choice among those models, summing to one.
    """
    if not n_open:
        return probs
    known = probs[:, :-n_open]
    return known / np.maximum(known.sum(axis=1, keepdims=True), 1e-12)


def verdicts(probs: np.ndarray, footwear: np.ndarray, thresholds: dict, familiarity: np.ndarray | None = None,
             *, n_open: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The verdict rule, vectorised (the Predictor applies exactly this): (verdicts, details).

    ``probs`` is the head's softmax: the known classes, then ``n_open`` open-set outputs
    (``OPEN_SET_OUTPUTS``, a model trained with negatives; 0 for others, which answer as before).

    1. ``sneaker`` when the top-1 confidence among the known classes (renormalised over them)
       reaches ``unsure``, else ``unsure``.
    2. Open set: when the mass on the open-set outputs reaches ``open``, ``unknown_sneaker``, or
       ``not_sneaker`` with detail ``other_footwear`` when "some other shoe" outweighs "some other
       sneaker".
    3. ``not_sneaker`` (no detail) when the footwear score is under its threshold, except for a
       *familiar* photo: one whose embedding is at least ``familiar`` close to a class centroid,
       as close as most sneakers of val. Those are sneakers the ImageNet footwear score misses
       (on-foot, close-ups, odd angles); they get ``unsure`` with guesses (or their open-set
       verdict), never a confident answer. A *known* photo (``known_sneaker``) is judged on its
       confidence alone: its footwear score is not consulted (NaN when skipped).

    Why the footwear rule comes last: the open-set outputs were trained on shoes only, so on a
    cat or a cup their answer means nothing, while "not footwear at all" is what the ImageNet
    score does know; such a photo is "not a sneaker", never "a shoe, but not a sneaker".
    """
    known = known_probs(probs, n_open)
    out = np.where(known.max(1) >= thresholds["unsure"], Verdict.SNEAKER.value, Verdict.UNSURE.value).astype(object)
    detail = np.full(len(probs), None, dtype=object)
    if n_open:
        _open_set(out, detail, probs, n_open, float(thresholds["open"]))
    with np.errstate(invalid="ignore"):
        low = (footwear < thresholds["footwear"]) & ~known_sneaker(familiarity, thresholds, len(probs))
    if familiarity is not None and thresholds.get("familiar") is not None:
        rescued = low & (familiarity >= thresholds["familiar"])
        out[rescued & (out == Verdict.SNEAKER.value)] = Verdict.UNSURE.value
        low &= ~rescued
    out[low] = Verdict.NOT_SNEAKER.value
    detail[low] = None
    return out, detail


def _open_set(out: np.ndarray, detail: np.ndarray, probs: np.ndarray, n_open: int, level: float) -> None:
    """Step 2 of ``verdicts``, in place: photos whose open-set mass reaches ``level``."""
    if n_open != len(OPEN_SET_OUTPUTS):
        raise ValueError(f"a head with {n_open} open-set outputs; this code knows {', '.join(OPEN_SET_OUTPUTS)}")
    other_sneaker, other_footwear = probs[:, -2], probs[:, -1]
    hit = open_score(probs, n_open) >= level
    shoe = hit & (other_footwear > other_sneaker)
    out[hit] = Verdict.UNKNOWN_SNEAKER.value
    out[shoe] = Verdict.NOT_SNEAKER.value
    detail[shoe] = Detail.OTHER_FOOTWEAR.value
