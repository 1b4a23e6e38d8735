"""Negatives: photos that are none of a model's classes, for its open-set outputs (issue #13).

A negatives folder holds ``sneakers/<group>/*`` (sneakers of other models and brands) and
``not_sneakers/<group>/*`` (other footwear: boots, sandals, cleats...); images directly in
``sneakers/`` or ``not_sneakers/`` form a group named after that folder. Each photo trains one
open-set output (``ml.verdicts.OPEN_SET_OUTPUTS``): "some other sneaker" or "some other shoe".

The split rule, one for training, calibration, retrains, the benches and ``sneakerbot eval``:

- the groups named in ``holdout_groups`` (default Vans and Reebok) are ``heldout`` entirely:
  never trained on, never in val (early stopping, thresholds) or test, never carried. Why: they
  measure what the open set is for, sneakers of a brand the model never saw as a negative;
- every other photo goes to train, val or test (65/15/20) by a hash of its file's sha1 alone.
  Why not stratified and seeded like the class split (``ml.data.split_dataset``): a photo's
  split must not move when photos are added or removed, nor with a run's seed, so a model, its
  retrains, the benches and evaluation all hold out the same photos. A group of a handful of
  photos may get no val or test photo; the ratios hold over the folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ml.data import index_files, visible_files
from ml.errors import DatasetError
from ml.verdicts import OPEN_SET_OUTPUTS

KINDS: dict[str, str] = {"sneakers": OPEN_SET_OUTPUTS[0], "not_sneakers": OPEN_SET_OUTPUTS[1]}  # folder -> output
OPEN_SET_METHOD = "background outputs"  # known-unknown classes (Dhamija et al. 2018), one per kind of negative
DEFAULT_HOLDOUT = ("vans", "reebok")
HELDOUT = "heldout"
FRACTIONS = (("train", 0.65), ("val", 0.15), ("test", 0.20))
SPLIT_RULE = ("groups in holdout_groups: heldout; every other photo by u = sha1('negatives:' + its file's sha1) "
              "read as a fraction of 1: u < 0.65 train, u < 0.80 val, else test")
COLUMNS = ["path", "group", "kind", "split", "sha1", "label"]  # label: the head output the photo trains


def holdout_groups(groups: Sequence[str] | None) -> tuple[str, ...]:
    """The held-out group names, lower case (None: ``DEFAULT_HOLDOUT``; an empty list holds none out)."""
    if groups is None:
        return DEFAULT_HOLDOUT
    return tuple(dict.fromkeys(g.strip().lower() for g in groups if g.strip()))


def split_of(sha1: str) -> str:
    """train, val or test for a photo of a group that is not held out: from its sha1 alone."""
    position = int(hashlib.sha1(f"negatives:{sha1}".encode()).hexdigest()[:15], 16) / 16**15
    edge = 0.0
    for split, share in FRACTIONS:
        edge += share
        if position < edge:
            return split
    return FRACTIONS[-1][0]


@dataclass
class Negatives:
    """A negatives folder, indexed and split: ``frame`` has ``COLUMNS``, ``problems`` the files left out."""

    frame: pd.DataFrame
    holdout: tuple[str, ...]
    folder: str
    problems: pd.DataFrame

    def part(self, *splits: str) -> pd.DataFrame:
        """The rows of these splits (train, val, test, heldout)."""
        return self.frame[self.frame["split"].isin(splits)].reset_index(drop=True)

    def without(self, sha1s: set[str]) -> Negatives:
        """Without the photos in ``sha1s``: a photo filed under a class is a positive, not a negative."""
        keep = ~self.frame["sha1"].isin(sha1s)
        return Negatives(self.frame[keep].reset_index(drop=True), self.holdout, self.folder, self.problems)

    def open_set_block(self) -> dict:
        """model.json's ``open_set`` for a head trained on these negatives: the method, the outputs, ``summary``."""
        return {"method": OPEN_SET_METHOD, "outputs": list(OPEN_SET_OUTPUTS), "negatives": self.summary()}

    def summary(self) -> dict:
        """model.json's ``open_set.negatives``: counts per kind, group and split, the held-out groups, the rule."""
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for (kind, group, split), n in self.frame.groupby(["kind", "group", "split"]).size().items():
            counts.setdefault(str(kind), {}).setdefault(str(group), {})[str(split)] = int(n)
        return {"folder": self.folder, "counts": counts, "holdout_groups": list(self.holdout),
                "split_rule": SPLIT_RULE,
                "problems": {str(k): int(v) for k, v in self.problems["kind"].value_counts().items()}}


def index_negatives(root: Path | str, holdout: Sequence[str] | None = None, *, progress: bool = False) -> Negatives:
    """Index ``root/sneakers`` and ``root/not_sneakers`` (images verified as ``ml.data`` does) and split them."""
    root = Path(root)
    files = {str(path): (kind, group) for kind in KINDS for path, group in _kind_files(root / kind)}
    if not files:
        raise DatasetError(f"no negatives in {root}: expected images under {root}/sneakers/<group>/ "
                           f"or {root}/not_sneakers/<group>/")
    # labelled kind/group: the same photo in two groups is kept once, in both kinds it is a conflict and left out
    index = index_files([(Path(p), "/".join(origin)) for p, origin in files.items()], source=root.name,
                        progress=progress)
    held = holdout_groups(holdout)
    frame = index.frame[["path", "sha1"]].copy()
    frame["kind"] = [files[p][0] for p in frame["path"]]
    frame["group"] = [files[p][1] for p in frame["path"]]
    frame["split"] = [HELDOUT if g.lower() in held else split_of(s)
                      for g, s in zip(frame["group"], frame["sha1"], strict=True)]
    frame["label"] = frame["kind"].map(KINDS)
    return Negatives(frame[COLUMNS].reset_index(drop=True), held, root.name, index.problems)


def _kind_files(folder: Path) -> list[tuple[Path, str]]:
    """(path, group) under ``sneakers/`` or ``not_sneakers/``: each sub-folder a group, loose files the folder's own."""
    if not folder.is_dir():
        return []
    loose = [(path, folder.name) for path in visible_files(folder)]
    groups = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return loose + [(path, group.name) for group in groups for path in visible_files(group)]


def open_set_lines(meta: dict) -> list[str]:
    """The README's open-set paragraph: the negatives' verdict rates on test and in the held-out groups."""
    rates = meta["metrics"].get("negatives")
    if not rates:
        return []
    block = meta["open_set"]
    held = ", ".join(block["negatives"]["holdout_groups"]) or "none"
    lines = [f"Open set ({block['method']}: outputs {', '.join(block['outputs'])}; negatives from "
             f"`{block['negatives']['folder']}`, held out: {held}). Verdicts of the negatives:", ""]
    for split in ("test", HELDOUT):
        for kind, entry in rates.get(split, {}).get("kinds", {}).items():
            lines.append(f"- {split} {kind} ({entry['n']}): "
                         + ", ".join(f"{k} {v:.1%}" for k, v in entry["verdicts"].items()))
    return [*lines, ""]
