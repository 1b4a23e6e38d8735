"""Metrics from model outputs: top-k accuracy, per-class precision/recall, verdict rates, subsets.

``compute_metrics`` works on arrays (used at training time on val and test);
``evaluate_dir`` runs a ``Predictor`` over a dataset folder (``sneakerbot eval``);
``model_split`` gives a dataset folder the split a model's training gave it, its label audit
applied (what ``evaluate_dir`` and the benches measure a model on).
``negative_rates`` gives the verdict rates per group of negatives (``ml.negatives``): photos of
none of the classes, which a model with open-set outputs should not name as one of them.

Accuracy is always among the known classes (``ml.verdicts.known_probs``); probabilities given
with open-set outputs (more columns than classes) are judged by the same rule as served.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from ml.model_json import AUDIT_FILE, read_model_json
from ml.verdicts import VERDICTS, Detail, known_probs, verdicts

if TYPE_CHECKING:
    from ml.data import DatasetIndex

# Class subsets reported separately when all their labels are present (the original project's five).
SUBSETS: dict[str, list[str]] = {
    "air_jordan_1-5": [f"air_jordan_{i}" for i in range(1, 6)],
}


def topk_hits(probs: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: is the true class among the k most probable."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return (top == y[:, None]).any(1)


def compute_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], *,
                    footwear: np.ndarray | None = None, thresholds: dict | None = None,
                    familiarity: np.ndarray | None = None) -> dict:
    """Top-1/top-3, per-class precision and recall, verdict rates and class-subset figures.

    ``probs``: the head's outputs, the classes then any open-set outputs (the extra columns).
    """
    n = len(y)
    if n == 0:
        return {"n": 0}
    n_open = probs.shape[1] - len(classes)
    raw, probs = probs, known_probs(probs, n_open)
    pred = probs.argmax(1)
    metrics: dict = {"n": int(n), "top1": float((pred == y).mean()), "top3": float(topk_hits(probs, y, 3).mean())}
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=list(range(len(classes))), zero_division=0)
    metrics["per_class"] = {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                                    "support": int(support[i])} for i, label in enumerate(classes)}
    if footwear is not None and thresholds is not None:
        v, detail = verdicts(raw, footwear, thresholds, familiarity, n_open=n_open)
        metrics["verdicts"] = {name: float((v == name).mean()) for name in VERDICTS}
        if n_open:
            metrics["details"] = {Detail.OTHER_FOOTWEAR.value: float((detail == Detail.OTHER_FOOTWEAR.value).mean())}
        sure = v == "sneaker"
        metrics["sneaker_verdict_top1"] = float((pred[sure] == y[sure]).mean()) if sure.any() else None
    metrics["subsets"] = subset_metrics(probs, y, classes)
    return metrics


def subset_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict:
    """For each known subset: accuracy of its images among all classes and restricted to the subset."""
    out = {}
    index = {c: i for i, c in enumerate(classes)}
    for name, labels in SUBSETS.items():
        if not all(label in index for label in labels) or len(labels) == len(classes):
            continue
        cols = np.array([index[label] for label in labels])
        rows = np.isin(y, cols)
        if not rows.any():
            continue
        sub_probs, sub_y = probs[rows], y[rows]
        remap = {c: j for j, c in enumerate(cols)}
        restricted = sub_probs[:, cols]
        ry = np.array([remap[v] for v in sub_y])
        out[name] = {
            "n": int(rows.sum()),
            "top1_among_all_classes": float((sub_probs.argmax(1) == sub_y).mean()),
            "top3_among_all_classes": float(topk_hits(sub_probs, sub_y, 3).mean()),
            "top1_restricted_to_subset": float((restricted.argmax(1) == ry).mean()),
        }
    return out


def negative_rates(probs: np.ndarray, footwear: np.ndarray, thresholds: dict, negatives: pd.DataFrame,
                   familiarity: np.ndarray | None = None, *, n_open: int = 0) -> dict:
    """Verdict rates of negatives (rows of ``ml.negatives``, aligned with ``probs``), per group and per kind.

    Each entry: ``n``, ``verdicts`` (rate of each verdict) and ``other_footwear`` (the share
    answered "a shoe, but not a sneaker"). For ``sneakers`` groups ``sneaker`` is the failure the
    open set is for (a confident known name), ``unknown_sneaker`` the right answer.
    """
    v, detail = verdicts(probs, footwear, thresholds, familiarity, n_open=n_open)
    frame = negatives.reset_index(drop=True)
    out: dict = {"groups": {}, "kinds": {}}
    for key, column in (("groups", "group"), ("kinds", "kind")):
        for name, rows in sorted(frame.groupby(column).indices.items()):
            entry = {"kind": str(frame["kind"].iloc[rows[0]])} if key == "groups" else {}
            out[key][str(name)] = {**entry, **_rates(v[rows], detail[rows])}
    return out


def _rates(v: np.ndarray, detail: np.ndarray) -> dict:
    return {"n": int(len(v)), "verdicts": {name: float((v == name).mean()) for name in VERDICTS},
            Detail.OTHER_FOOTWEAR.value: float((detail == Detail.OTHER_FOOTWEAR.value).mean())}


def evaluate_negatives(predictor, negatives_dir: Path, *, split: str | None = None, batch_size: int = 32) -> dict:
    """``negative_rates`` of a predictor over a negatives folder: its groups, and the held-out groups apart.

    The split rule and held-out groups are the model's own (model.json's ``open_set``), or
    ``ml.negatives``' defaults for a model trained without negatives. Without ``split`` every
    photo that is not held out counts, those a model trained on included.
    """
    from ml.negatives import HELDOUT, index_negatives

    recorded = predictor.info.open_set.get("negatives", {}).get("holdout_groups")
    negatives = index_negatives(negatives_dir, recorded)
    report: dict = {"folder": negatives.folder, "split": split or "all", "holdout_groups": list(negatives.holdout)}
    for name, part in (("evaluated", negatives.part(split) if split else negatives.part("train", "val", "test")),
                       (HELDOUT, negatives.part(HELDOUT))):
        probs, footwear, familiarity = predictor.predict_arrays(list(part["path"]), batch_size=batch_size)
        report[name] = negative_rates(probs, footwear, predictor.thresholds, part, familiarity,
                                      n_open=predictor.n_open) if len(part) else {"groups": {}, "kinds": {}}
    return report


def model_split(model_dir: Path, data: Path | DatasetIndex) -> pd.DataFrame:
    """Every photo of ``data`` with the split the model's training gave it, as in training.

    ``data``: a dataset folder, or its index (``ml.data.index_dataset``) when the caller has one.
    ``split`` is the model's seeded split (seed and fractions from its model.json config), with
    the photos its label audit (``audit.csv``) set aside moved to "audit"; ``drawn_split`` is the
    split drawn before the audit (so a flagged test photo has ``split`` "audit", ``drawn_split``
    "test"). Every label of the folder is kept, those the model does not know too.
    """
    from ml.data import apply_exclusions, index_dataset, split_dataset  # imports torch: only when needed

    cfg = read_model_json(model_dir).get("config", {})
    index = index_dataset(data, progress=False) if isinstance(data, str | Path) else data
    frame = split_dataset(index.frame, seed=int(cfg.get("seed", 0)), val=float(cfg.get("val_fraction", 0.15)),
                          test=float(cfg.get("test_fraction", 0.15)))
    frame["drawn_split"] = frame["split"]
    audit = Path(model_dir) / AUDIT_FILE
    if audit.is_file():
        frame, _ = apply_exclusions(frame, audit)
    return frame


def evaluate_dir(predictor, data_dir: Path, *, split: str | None = None, batch_size: int = 32,
                 negatives: Path | None = None) -> dict:
    """Run the predictor over ``data_dir/<label>/*`` (optionally one split of the model's seed).

    With ``split``, the photos the model's label audit set aside (its ``audit.csv``) are left
    out as in training (``model_split``), so the figures match the model's own metrics. With
    ``negatives`` (a folder of ``ml.negatives``), the report also has their verdict rates
    (``evaluate_negatives``).
    """
    from ml.data import AUDIT_SPLIT, index_dataset

    index = index_dataset(data_dir)
    frame = index.frame
    set_aside = 0
    if split:
        frame = model_split(predictor.info.model_dir, index)
        set_aside = int(((frame["split"] == AUDIT_SPLIT) & (frame["drawn_split"] == split)).sum())
        frame = frame[frame["split"] == split]
    known = {c.label for c in predictor.classes}
    unknown = frame[~frame["label"].isin(known)]
    frame = frame[frame["label"].isin(known)].reset_index(drop=True)
    labels = [c.label for c in predictor.classes]
    class_to_idx = {c: i for i, c in enumerate(labels)}
    probs, footwear, familiarity = predictor.predict_arrays(list(frame["path"]), batch_size=batch_size)
    y = np.array([class_to_idx[c] for c in frame["label"]], dtype=int)
    report = compute_metrics(probs, y, labels, footwear=footwear, thresholds=predictor.thresholds,
                             familiarity=familiarity)
    report.update({"data_dir": str(data_dir), "split": split, "skipped_unknown_labels": int(len(unknown)),
                   "set_aside_by_audit": set_aside,
                   "problems": int(len(index.problems)), "model": str(predictor.info.model_dir)})
    if negatives is not None:
        report["negatives"] = evaluate_negatives(predictor, negatives, split=split, batch_size=batch_size)
    return report


def format_report(report: dict) -> str:
    """A readable eval report for the terminal."""
    if not report.get("n"):
        return "no images with known labels"
    lines = [f"images: {report['n']}  top-1: {report['top1']:.1%}  top-3: {report['top3']:.1%}"]
    if "verdicts" in report:
        lines.append("verdicts: " + ", ".join(f"{k} {v:.1%}" for k, v in report["verdicts"].items()))
    for name, sub in report.get("subsets", {}).items():
        lines.append(f"{name} ({sub['n']} images): top-1 among all classes {sub['top1_among_all_classes']:.1%}, "
                     f"restricted to the subset {sub['top1_restricted_to_subset']:.1%}")
    table = pd.DataFrame(report["per_class"]).T
    lines.append(table.to_string(float_format=lambda v: f"{v:.2f}"))
    if report.get("set_aside_by_audit"):
        lines.append(f"left out {report['set_aside_by_audit']} images the model's label audit set aside (audit.csv)")
    if report.get("skipped_unknown_labels"):
        lines.append(f"skipped {report['skipped_unknown_labels']} images of labels the model does not know")
    if "negatives" in report:
        lines += format_negatives(report["negatives"])
    return "\n".join(lines)


def format_negatives(report: dict) -> list[str]:
    """Lines for ``evaluate_negatives``' report: one per kind and group, the held-out groups apart."""
    lines = [f"negatives {report['folder']} (split {report['split']}; held out: "
             f"{', '.join(report['holdout_groups']) or 'none'})"]
    return lines + format_rates("negatives", report["evaluated"]) + format_rates("held-out", report["heldout"])


def format_rates(title: str, rates: dict) -> list[str]:
    """One line per kind and group of ``negative_rates``' result."""
    lines = []
    for key in ("kinds", "groups"):
        for name, entry in rates[key].items():
            verdict_rates = ", ".join(f"{k} {v:.1%}" for k, v in entry["verdicts"].items())
            lines.append(f"  {title} {name} ({entry['n']}): {verdict_rates}; "
                         f"other_footwear {entry['other_footwear']:.1%}")
    return lines
