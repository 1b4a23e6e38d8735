"""Open set: what the served model answers about shoes it does not know, and about its own models.

    python -m bench.openset [--model DIR] [--negatives ../shared/datasets/other-footwear]
                            [--data ../shared/datasets/air-jordan]

The share of each verdict (``ml.verdicts.Verdict``), as ``Predictor.predict`` gives it (the
served rule), per group of photos, next to its target:

- held-out other sneakers: the groups no model ever trains on (``ml.negatives``, the model's
  ``holdout_groups``, by default Vans and Reebok): at least 80 % not answered ``sneaker``;
- other footwear (boots, cleats, slides...), the test part of each group of the negatives
  folder's ``not_sneakers/`` (and any held-out footwear group): at least 90 % not answered ``sneaker``;
- other sneakers, the test part of the negatives' non-held-out groups (no target: these brands
  may be trained on as negatives, so they show what training on them gives);
- the known models' test split (``ml.evaluate.model_split``: the model's seeded split, without
  the photos its label audit set aside): top-1 at least 85 %, top-3 at least 92 %, and at most 3 %
  of these real sneakers answered ``not_sneaker`` or ``unknown_sneaker``;
- the sample photos scikit-image, scikit-learn and matplotlib ship (``bench.gate``: a cat, a cup,
  people, a rocket...): every one ``not_sneaker``.

A model without open-set outputs (the starter) answers only ``sneaker``, ``unsure`` and
``not_sneaker``: the figures are then today's rates, the "before" of a model trained with
``--negatives``. The split of the negatives is ``ml.negatives``' own (a hash of each photo's sha1,
not the run's seed), so every model is measured on the same photos. Saves the figures as JSON
under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bench.machine import machine_line
from bench.robustness import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    RESULTS,
    ROOT,
    known_test,
    load_predictor,
    save_results,
)
from ml.evaluate import model_split
from ml.predictor import Prediction, Predictor
from ml.verdicts import Verdict

DEFAULT_NEGATIVES = ROOT.parent / "shared" / "datasets" / "other-footwear"
HELDOUT_SNEAKERS_NOT_SNEAKER = 0.80  # share of held-out other sneakers not answered "sneaker", at least
FOOTWEAR_NOT_SNEAKER = 0.90  # share of other footwear (test part) not answered "sneaker", at least
KNOWN_TOP1, KNOWN_TOP3 = 0.85, 0.92  # the known models' test split, at least
KNOWN_REJECTED = 0.03  # share of real known sneakers answered not_sneaker or unknown_sneaker, at most
REJECTED = (Verdict.NOT_SNEAKER.value, Verdict.UNKNOWN_SNEAKER.value)


@dataclass
class Row:
    """The verdict rates of one group of photos, and the target it is held to."""

    section: str
    group: str
    images: int
    verdicts: dict[str, float] | None  # None: the same photos as the row above
    measure: str  # what the target is about: "not sneaker", "not_sneaker", "top-1", "top-3", "rejected"
    value: float | None  # the measured share, for the target
    target: str  # e.g. ">= 80 %", "" for none
    met: bool | None  # None: no target


def verdict_rates(predictions: Sequence[Prediction]) -> dict[str, float]:
    """The share of each verdict, every verdict listed (0 for those never given)."""
    counts = Counter(p.verdict for p in predictions)
    n = max(len(predictions), 1)
    return {v.value: counts[v.value] / n for v in Verdict}


def at_least(value: float, level: float) -> tuple[str, bool]:
    """A target's text and whether ``value`` meets it."""
    return f">= {level:.0%}", value >= level


def at_most(value: float, level: float) -> tuple[str, bool]:
    """A target's text and whether ``value`` meets it."""
    return f"<= {level:.0%}", value <= level


def not_sneaker_rows(section: str, predictions: Sequence[Prediction], groups: Sequence[str] | None,
                     level: float | None) -> list[Row]:
    """A row per group (when ``groups`` names more than one) and one for all: the share not answered
    ``sneaker``, against ``level``."""
    by_group: dict[str, list[Prediction]] = {}
    for prediction, group in zip(predictions, groups or ["all"] * len(predictions), strict=True):
        by_group.setdefault(group, []).append(prediction)
    parts = sorted(by_group.items()) if len(by_group) > 1 else []
    rows = []
    for group, chosen in [*parts, ("all", list(predictions))]:
        rates = verdict_rates(chosen)
        value = 1 - rates[Verdict.SNEAKER.value]
        target, met = at_least(value, level) if level is not None else ("", None)
        rows.append(Row(section, group, len(chosen), rates, "not sneaker", value, target, met))
    return rows


def known_rows(predictions: Sequence[Prediction], labels: Sequence[str]) -> list[Row]:
    """The known models' test split: top-1, top-3 and the share of real sneakers rejected."""
    rates = verdict_rates(predictions)
    n = max(len(predictions), 1)
    top1 = sum(p.top[0].label == y for p, y in zip(predictions, labels, strict=True)) / n
    top3 = sum(y in [g.label for g in p.top] for p, y in zip(predictions, labels, strict=True)) / n
    rejected = sum(rates[v] for v in REJECTED)
    section, count = "known models, test split", len(predictions)
    return [Row(section, "all", count, rates, "rejected", rejected, *at_most(rejected, KNOWN_REJECTED)),
            Row(section, "", count, None, "top-1", top1, *at_least(top1, KNOWN_TOP1)),
            Row(section, "", count, None, "top-3", top3, *at_least(top3, KNOWN_TOP3))]


def package_rows(predictor: Predictor) -> tuple[list[Row], list[str]]:
    """The sample photos the installed packages ship (``bench.gate``): every one must be ``not_sneaker``.
    Also returns the names of those that were not."""
    from bench.gate import package_photos

    photos = package_photos()
    predictions = predictor.predict(list(photos.values()), k=3)
    rates = verdict_rates(predictions)
    value = rates[Verdict.NOT_SNEAKER.value]
    missed = [f"{name} ({p.verdict})" for name, p in zip(photos, predictions, strict=True)
              if p.verdict != Verdict.NOT_SNEAKER.value]
    row = Row("package sample photos", "all", len(predictions), rates, "not_sneaker", value, "= 100%", value == 1.0)
    return [row], missed


def negative_rows(predictor: Predictor, negatives: pd.DataFrame) -> list[Row]:
    """Held-out other sneakers, other footwear (test part and any held-out group), other sneakers' test part."""
    from ml.negatives import HELDOUT

    sneakers, footwear = negatives["kind"] == "sneakers", negatives["kind"] == "not_sneakers"
    parts = [  # (section, photos, target, a row per group)
        ("held-out other sneakers", negatives[sneakers & (negatives["split"] == HELDOUT)],
         HELDOUT_SNEAKERS_NOT_SNEAKER, True),
        ("other footwear, test part", negatives[footwear & negatives["split"].isin(["test", HELDOUT])],
         FOOTWEAR_NOT_SNEAKER, True),
        ("other sneakers, test part", negatives[sneakers & (negatives["split"] == "test")], None, False),
    ]
    rows: list[Row] = []
    for section, part, level, per_group in parts:
        if len(part):
            predictions = predictor.predict(list(part["path"]), k=3)
            rows += not_sneaker_rows(section, predictions, list(part["group"]) if per_group else None, level)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """One line per group: each verdict's share, the measured figure, its target and whether it is met."""
    names = [v.value for v in Verdict]
    lines = [f"{'group':<32} {'imgs':>5} " + " ".join(f"{n:>15}" for n in names)
             + f"  {'figure':>20}  {'target':>7}"]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"{section}:")
        figure = "" if row.value is None else f"{row.measure} {row.value:.1%}"
        mark = "" if row.met is None else ("ok" if row.met else "MISSED")
        rates = " ".join(f"{row.verdicts[n]:>15.1%}" if row.verdicts else f"{'':>15}" for n in names)
        lines.append(f"  {row.group:<30} {row.images:>5} {rates}  {figure:>20}  {row.target:>7} {mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.openset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--negatives", type=Path, default=DEFAULT_NEGATIVES)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder the JSON figures go to")
    args = parser.parse_args(argv)
    for folder in (args.data, args.negatives):
        if not folder.is_dir():
            print(f"folder not found: {folder}")
            return 1
    from ml.negatives import index_negatives

    machine = machine_line()
    print(machine, flush=True)
    predictor = load_predictor(args.model, args.threads)
    frame = model_split(args.model, args.data)
    holdout = predictor.info.config.get("holdout_groups")
    negatives = index_negatives(args.negatives, holdout).without(set(frame["sha1"]))  # a class's photo is no negative
    test = known_test(frame, predictor)
    print(f"model {args.model} ({predictor.info.backbone}@{predictor.info.preprocessing.size}, "
          f"open-set outputs: {predictor.n_open or 'none'}); thresholds "
          + ", ".join(f"{k} {v:.4f}" for k, v in predictor.thresholds.items() if v is not None)
          + f"; held-out groups: {', '.join(negatives.holdout) or 'none'}", flush=True)
    rows = negative_rows(predictor, negatives.frame)
    rows += known_rows(predictor.predict(list(test["path"]), k=3), list(test["label"]))
    package, missed = package_rows(predictor)
    rows += package
    print(format_table(rows))
    if missed:
        print(f"package photos not answered not_sneaker: {', '.join(missed)}")
    path = save_results("openset", {"machine": machine, "model": str(args.model), "data": str(args.data),
                                    "negatives": str(args.negatives), "holdout_groups": list(negatives.holdout),
                                    "rows": [asdict(r) for r in rows], "package_photos_missed": missed},
                        args.results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
