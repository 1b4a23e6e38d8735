"""Retrain a model's head on what it carries plus new photos, without the original dataset.

``retrain_head(base_model_dir, frame, out, ...)``: the candidate keeps the base model's
backbone byte for byte and learns a new head over

- the features the base model carries (``ml.carried``: every train, val and test photo it
  was built from, under its own backbone), so no class is ever lost for want of photos;
- the new photos of ``frame`` (the database's scraped, confirmed and corrected ones),
  embedded with ONNX Runtime through the data dir's cache (``ml.features``);
- optionally a base dataset folder, used only to add photos the model does not carry yet.

Why the head is warm started from the base head: a head retrained from scratch on frozen
features must rediscover what the base head already knows, and the old retrain did it with
the fine-tune's learning rate (3e-4) for 30 full-batch steps: it stopped far short of a fit
and lost 30 points of top-1. Starting from the base head (new classes' rows from their
centroids) and keeping the best val accuracy, with the start itself as the first to beat,
a retrain with no new data reproduces the model it starts from, and a new class is learnt
in a few hundred steps of seconds each.

The candidate is a complete model directory: thresholds calibrated on val, metrics on
test, plots, the merged carried features, and ``model.json`` with no path outside it.

Open set: a model with open-set outputs (``ml.verdicts.OPEN_SET_OUTPUTS``) carries its
negatives' features too; its retrains keep the two outputs (warm started from their rows, trained
on those negatives) and recalibrate the ``open`` threshold, so the worker's retrain never drops
the open set. ``add_open_set`` gives an existing model those outputs without a fine-tune: it
embeds a negatives folder (``ml.negatives``) with the model's own backbone and retrains the head
the same way (``sneakerbot openset``).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ml import artifacts
from ml.calibrate import calibrate_thresholds
from ml.carried import CARRIED_VIEWS, Carried
from ml.data import AUDIT_SPLIT, index_dataset
from ml.errors import MLError
from ml.evaluate import compute_metrics, model_split, negative_rates
from ml.features import FeatureExtractor
from ml.head_training import fit_linear, predict_proba
from ml.model import Classifier
from ml.negatives import HELDOUT, KINDS, index_negatives, open_set_lines
from ml.plots import plot_confusion, plot_curves, plot_examples
from ml.verdicts import OPEN_SET_OUTPUTS, known_probs

log = logging.getLogger(__name__)

#: (stage, done, total): "embedding" photos, or "training" steps.
ProgressFn = Callable[[str, int, int], None]
HEAD_LR = 1e-3
EXAMPLES = 36
# ``add_open_set``: the views of a train negative it learns from (centre, mirror, two augmented views)
NEGATIVE_TRAIN_VIEWS = ("center", "flip", "aug0", "aug1")


class RetrainError(MLError):
    """A retrain that cannot run; the message says why and what to do."""


@dataclass(frozen=True)
class RetrainSettings:
    """How a head retrain runs (the worker's settings)."""

    steps: int = 300
    lr: float = HEAD_LR
    batch_size: int = 1024
    seed: int = 0
    cache_dir: Path = Path("var/cache")
    base_dataset_dir: Path | None = None
    threads: int | None = None


# --------------------------------------------------------------------------- carried data


def dataset_frame(model_dir: Path, data_dir: Path, *, progress: bool = False) -> pd.DataFrame:
    """The photos of a base dataset folder that a model knows, split exactly as its training split them.

    The split depends only on each photo's sha1 and the model's seed and fractions
    (``ml.data.split_dataset``); the label audit the model carries (``audit.csv``) sets the
    same photos aside.
    """
    labels = {c["label"] for c in artifacts.read_model_json(model_dir)["classes"]}
    frame = model_split(model_dir, index_dataset(data_dir, progress=progress))  # stratified: per label
    frame = frame[frame["label"].isin(labels)].drop(columns="drawn_split")
    return frame[frame["split"] != AUDIT_SPLIT].reset_index(drop=True)


def embed_rows(extractor: FeatureExtractor, frame: pd.DataFrame,
               progress: ProgressFn | None = None) -> Carried:
    """Carried rows for photos on disk (columns path, label, sha1, split; group for negatives): the views
    ``CARRIED_VIEWS`` names."""
    parts, total, done, photos = [], _view_count(frame), 0, int(frame["sha1"].nunique())
    if progress:
        progress("embedding", 0, photos)
    for split, views in CARRIED_VIEWS.items():
        part = frame[frame["split"] == split].reset_index(drop=True)
        if not len(part):
            continue
        for view in views:  # progress in photos: the views done so far, scaled to the photos
            step = (lambda d, _t, base=done: progress("embedding", round((base + d) * photos / total), photos)) \
                if progress else None
            feats, footwear = extractor.embed(part, [view], progress=step)[view]
            parts.append(_rows(part, view, feats, footwear))
            done += len(part)
    return Carried.concat(parts)


def _rows(part: pd.DataFrame, view: str, feats: np.ndarray, footwear: np.ndarray) -> Carried:
    """Carried rows of ``part``'s photos in one view (a negative keeps its group)."""
    group = part["group"].fillna("") if "group" in part else ""
    return Carried(part[["sha1", "label", "split"]].assign(view=view, footwear=footwear, group=group), feats)


def _view_count(frame: pd.DataFrame) -> int:
    return sum(int((frame["split"] == split).sum()) * len(views) for split, views in CARRIED_VIEWS.items())


def carry_dataset(model_dir: Path, data_dir: Path, cache_dir: Path, *, progress: ProgressFn | None = None) -> int:
    """Embed a model's base dataset into its own directory (``carried.npz``); returns the rows written.

    For a model trained before models carried their data, or to refresh what one carries. The
    negatives an open-set model carries stay (the dataset folder has only the classes' photos).
    """
    model_dir = Path(model_dir)
    carried = Carried.load(model_dir, artifacts.read_model_json(model_dir))
    negatives = _only_negatives(carried) if carried is not None else None
    return carry_frame(model_dir, dataset_frame(model_dir, data_dir), cache_dir, progress=progress, keep=negatives)


def _only_negatives(carried: Carried) -> Carried:
    mask = carried.negative_rows()
    return Carried(carried.frame[mask].reset_index(drop=True), carried.feats[mask])


def carry_frame(model_dir: Path, frame: pd.DataFrame, cache_dir: Path, *, progress: ProgressFn | None = None,
                keep: Carried | None = None) -> int:
    """Embed the train, val and test rows of ``frame`` into ``model_dir`` (``carried.npz`` and model.json).

    ``frame`` may hold negatives (``ml.negatives`` rows: labelled with their output, with a group);
    ``keep``: rows already embedded that are carried as well.
    """
    frame = frame[frame["split"].isin(list(CARRIED_VIEWS))].reset_index(drop=True)
    carried = Carried.concat([embed_rows(FeatureExtractor(model_dir, cache_dir), frame, progress),
                              keep or Carried.empty(0)])
    meta = artifacts.read_model_json(model_dir)
    meta.setdefault("files", {})["carried"] = carried.save(model_dir)
    meta["carried"] = _carried_summary(carried, model_dir, meta)
    artifacts.write_model_json(model_dir, meta)
    return len(carried)


def _carried_summary(carried: Carried, model_dir: Path, meta: dict) -> dict:
    """What ``model.json`` says of the carried features, with what 8 bits cost the current head."""
    test = carried.select(split="test", view="center")
    summary = {"rows": len(carried), "photos": int(carried.frame["sha1"].nunique()),
               "views": {split: list(views) for split, views in CARRIED_VIEWS.items()},
               "per_split": _split_counts(carried.select(view="center")),
               "quantization": "uint8 per row (min, step)"}
    negatives = _only_negatives(carried).select(view="center", negatives=True)
    if len(negatives):
        summary["negatives_per_split"] = _split_counts(negatives)
    if len(test) and (Path(model_dir) / meta["files"].get("head", artifacts.HEAD_FILE)).is_file():
        summary["test_top1_from_carried"] = _top1(artifacts.load_head(model_dir, meta), test, meta)
    return summary


def _split_counts(rows: Carried) -> dict[str, int]:
    return {str(k): int(v) for k, v in rows.frame["split"].value_counts().items()}


def _top1(head: Classifier, rows: Carried, meta: dict) -> float:
    """Top-1 among the classes (the open-set outputs, if any, left out as ``ml.verdicts.known_probs`` does)."""
    index = {c["label"]: i for i, c in enumerate(meta["classes"])}
    y = np.array([index.get(label, -1) for label in rows.frame["label"]])
    return float((predict_proba(head, rows.feats)[:, : len(index)].argmax(1) == y).mean())


def load_carried(model_dir: Path, meta: dict, extractor: FeatureExtractor, base_dataset_dir: Path | None,
                 progress: ProgressFn | None) -> Carried:
    """What the base model carries, plus base-dataset photos it does not carry yet (when that folder is given)."""
    carried = Carried.load(model_dir, meta) or Carried.empty(0)
    if base_dataset_dir is not None and Path(base_dataset_dir).is_dir():
        frame = dataset_frame(model_dir, Path(base_dataset_dir))
        fresh = frame[~frame["sha1"].isin(set(carried.frame["sha1"]))]
        if len(fresh):
            log.info("embedding %d base-dataset photos the model does not carry yet", len(fresh))
            carried = Carried.concat([carried, embed_rows(extractor, fresh, progress)])
    if not len(carried):
        raise RetrainError(
            f"{model_dir} carries no training features (carried.npz) and no base dataset folder was given: "
            "a retrain would forget every class. Set SNEAKERBOT_BASE_DATASET_DIR to the photos it was "
            "trained from, or run `sneakerbot carry MODEL_DIR DATA_DIR` once.")
    return carried


# --------------------------------------------------------------------------- retrain


def retrain_head(base_model_dir: Path, frame: pd.DataFrame, out: Path, *, settings: RetrainSettings,
                 display_names: dict[str, str] | None = None, progress: ProgressFn | None = None) -> Path:
    """Train a candidate from ``base_model_dir`` and ``frame`` (path, label, sha1, split) into ``out``.

    A base model with open-set outputs keeps them: they train on the negatives it carries.
    """
    base_model_dir, out = Path(base_model_dir), Path(out)
    meta = artifacts.read_model_json(base_model_dir)
    extractor = FeatureExtractor(base_model_dir, settings.cache_dir, threads=settings.threads)
    carried = load_carried(base_model_dir, meta, extractor, settings.base_dataset_dir, progress)
    frame = keep_test_split(frame, carried)
    new = embed_rows(extractor, frame, progress) if len(frame) else Carried.empty(carried.feature_dim)
    data = Carried.concat([carried.without(set(frame["sha1"])), new])
    base_labels = [c["label"] for c in meta["classes"]]
    classes = base_labels + sorted(set(data.labels()) - set(base_labels))
    outputs = [*classes, *artifacts.open_outputs(meta)]
    head = warm_start(artifacts.load_head(base_model_dir, meta), outputs, artifacts.head_outputs(meta), data)
    head, history = _fit(head, data.select(split="train", negatives=True),
                         data.select(split="val", view="center", negatives=True), outputs, settings, progress)
    names = {**{c["label"]: c.get("display_name") or artifacts.display_name(c["label"]) for c in meta["classes"]},
             **(display_names or {})}
    return write_candidate(base_model_dir, meta, out, head, classes, names, data, frame, history, settings)


def keep_test_split(frame: pd.DataFrame, carried: Carried) -> pd.DataFrame:
    """A photo the base model holds out for test stays in test, whatever split the database gave it."""
    held_out = set(carried.frame.loc[carried.frame["split"] == "test", "sha1"])
    frame = frame.copy()
    frame.loc[frame["sha1"].isin(held_out), "split"] = "test"
    return frame


def warm_start(base: Classifier, outputs: list[str], base_outputs: list[str], data: Carried) -> Classifier:
    """A head over ``outputs`` with the base head's rows (matched by name); a new one starts at its train
    photos' mean feature.

    The new row is that mean scaled to the base rows' mean norm, with their mean bias. It is a
    crude start (features are non-negative, so it wins most photos at first) that the first
    steps pull back. Measured with one starter class taken out and added back (50 photos):
    97.5 % on its test photos after 300 steps, the other classes 85.9 → 85.2 %. Starting it as
    a copy of the row of the class its photos are taken for reached 92.5 % and 84.2 %. The
    open-set outputs a model gets (``add_open_set``) start the same way from their negatives;
    an output without a train photo starts at zero with the lowest base bias, where nothing
    pulls it up.
    """
    head = Classifier(base.fc.in_features, len(outputs), base.dropout.p)
    rows = {name: i for i, name in enumerate(base_outputs)}
    train = data.select(split="train", view="center", negatives=True)
    with torch.no_grad():
        norm, bias = base.fc.weight.norm(dim=1).mean(), base.fc.bias.mean()
        for i, name in enumerate(outputs):
            mine = (train.frame["label"] == name).to_numpy()
            if name in rows:
                head.fc.weight[i], head.fc.bias[i] = base.fc.weight[rows[name]], base.fc.bias[rows[name]]
            elif mine.any():
                mean = torch.from_numpy(train.feats[mine].mean(0))
                head.fc.weight[i], head.fc.bias[i] = mean / mean.norm().clamp(min=1e-12) * norm, bias
            else:
                head.fc.weight[i], head.fc.bias[i] = 0.0, base.fc.bias.min()
    return head


def _fit(head: Classifier, train: Carried, val: Carried, outputs: list[str], settings: RetrainSettings,
         progress: ProgressFn | None) -> tuple[Classifier, list[dict]]:
    """Fit ``head`` (one row per output) on ``train``'s rows, keeping its best val accuracy (``fit_linear``)."""
    index = {name: i for i, name in enumerate(outputs)}
    y = train.frame["label"].map(index).to_numpy()
    y_val = val.frame["label"].map(index).to_numpy()
    if progress:
        progress("training", 0, settings.steps)
    head, history = fit_linear(train.feats, y, len(outputs), x_val=val.feats if len(val) else None,
                               y_val=y_val if len(val) else None, steps=settings.steps, lr=settings.lr,
                               seed=settings.seed, init=head, batch_size=settings.batch_size)
    if progress:
        progress("training", settings.steps, settings.steps)
    return head, history


# --------------------------------------------------------------------------- the open set of an existing model


@dataclass(frozen=True)
class OpenSetRun:
    """What ``add_open_set`` hands ``write_candidate``: model.json's ``open_set`` block and the held-out
    groups' features (centre view: measured, never carried)."""

    block: dict
    heldout: Carried


def add_open_set(model_dir: Path, negatives_dir: Path, out: Path, *, settings: RetrainSettings,
                 holdout: Sequence[str] | None = None, open_quantile: float = 0.02,
                 progress: ProgressFn | None = None) -> Path:
    """A copy of ``model_dir`` with open-set outputs, its backbone unchanged: no fine-tune needed.

    The negatives (``ml.negatives``) are embedded with the model's own backbone (train photos in
    ``NEGATIVE_TRAIN_VIEWS``, val, test and held-out ones in the centre view), then the head is
    retrained on the features the model carries plus the negatives' (``warm_start``: the class
    rows are the model's, the two new rows start from their negatives), ``open`` is calibrated
    on val (``open_quantile``) and the held-out groups are measured. A model that has the outputs
    already has them retrained on this folder's negatives, which replace those it carried.
    """
    model_dir, out = Path(model_dir), Path(out)
    meta = artifacts.read_model_json(model_dir)
    extractor = FeatureExtractor(model_dir, settings.cache_dir, threads=settings.threads)
    carried = load_carried(model_dir, meta, extractor, settings.base_dataset_dir, progress).select()
    negatives = index_negatives(negatives_dir, holdout).without(set(carried.frame["sha1"]))
    embedded = embed_rows(extractor, negatives.part("train", "val", "test"), progress)
    extra = _embed_views(extractor, negatives.part("train"), [v for v in NEGATIVE_TRAIN_VIEWS
                                                              if v not in CARRIED_VIEWS["train"]])
    heldout = _embed_views(extractor, negatives.part(HELDOUT), ["center"])
    data = Carried.concat([carried, embedded])
    classes = [c["label"] for c in meta["classes"]]
    outputs = [*classes, *OPEN_SET_OUTPUTS]
    head = warm_start(artifacts.load_head(model_dir, meta), outputs, artifacts.head_outputs(meta), data)
    train = Carried.concat([data.select(split="train", negatives=True), extra])
    head, history = _fit(head, train, data.select(split="val", view="center", negatives=True), outputs, settings,
                         progress)
    names = {c["label"]: c.get("display_name") or artifacts.display_name(c["label"]) for c in meta["classes"]}
    base = {**meta, "config": {**meta.get("config", {}), "open_quantile": open_quantile}}
    return write_candidate(model_dir, base, out, head, classes, names, data,
                           pd.DataFrame(columns=["path", "label", "sha1", "split"]), history, settings,
                           open_set=OpenSetRun(negatives.open_set_block(), heldout), mode="openset")


def _embed_views(extractor: FeatureExtractor, part: pd.DataFrame, views: list[str]) -> Carried:
    """Rows of ``part``'s photos in ``views`` (no progress: the carried views dominate the time)."""
    if not len(part) or not views:
        return Carried.empty(0)
    embedded = extractor.embed(part, views)
    return Carried.concat([_rows(part, view, *embedded[view]) for view in views])


# --------------------------------------------------------------------------- the candidate directory


def write_candidate(base_dir: Path, meta: dict, out: Path, head: Classifier, classes: list[str],
                    names: dict[str, str], data: Carried, frame: pd.DataFrame, history: list[dict],
                    settings: RetrainSettings, *, open_set: OpenSetRun | None = None,
                    mode: str = "head_retrain") -> Path:
    """Calibrate on val, measure on test, plot, and write a complete model directory.

    ``head`` has a row per class, then the open-set outputs of ``open_set`` (or of the base
    model's ``meta``). All of it or nothing: the files go into a hidden sibling of ``out`` that
    is renamed to ``out`` when complete (``out`` must not exist or be empty); on any failure, a
    full disk included (a ``RetrainError`` that says so), the partial files are removed.
    """
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        raise RetrainError(f"{out} already holds files: a candidate goes into a new or empty directory")
    block = open_set.block if open_set is not None else meta.get("open_set")
    centroids = class_centroids(data.select(split="train", view="center"), classes, base_dir, meta)
    thresholds, metrics, test = _evaluate(head, data, classes, tuple(block["outputs"]) if block else (), centroids,
                                          meta, open_set.heldout if open_set is not None else None)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        files = _write_files(base_dir, meta, staging, head, centroids, data)
        new_meta = {
            **meta, "created": datetime.now(UTC).isoformat(timespec="seconds"), "version": None,
            "classes": [{"label": c, "display_name": names.get(c) or artifacts.display_name(c)} for c in classes],
            "thresholds": thresholds, "metrics": metrics, "history": history, "files": files,
            "config": _config(meta.get("config", {}), settings, classes, meta, mode),
            "data": _snapshot(data, frame), **({"open_set": block} if block else {}),
        }
        new_meta.pop("onnx_check", None)
        new_meta["carried"] = _carried_summary(data, staging, new_meta)
        artifacts.write_model_json(staging, new_meta)
        _plots(staging, history, test, classes, data, frame)
        _readme(staging, new_meta, [c for c in classes if c not in {x["label"] for x in meta["classes"]}])
        if out.is_dir():
            out.rmdir()  # empty (checked above): the rename takes its place
        staging.rename(out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _disk_full(exc):
            raise RetrainError(f"the disk is full: no room in {out.parent} to write the candidate model "
                               f"({exc}); its partial files were removed") from exc
        raise
    log.info("retrained head written to %s (test top-1 %.3f)", out, metrics["test"].get("top1", float("nan")))
    return out


def _evaluate(head: Classifier, data: Carried, classes: list[str], open_outputs: tuple[str, ...],
              centroids: np.ndarray, meta: dict, heldout: Carried | None) -> tuple[dict, dict, tuple]:
    """(thresholds calibrated on val, metrics of val and test, test's scores) for a candidate's head.

    With open-set outputs, the carried val negatives join the calibration and the metrics give the
    negatives' verdict rates (val, test and, when given, the held-out groups).
    """
    index = {label: i for i, label in enumerate([*classes, *open_outputs])}
    method = meta.get("footwear", {}).get("method", "imagenet")
    outputs = {split: _scores(head, data.select(split=split, view="center"), centroids, index, method)
               for split in ("val", "test")}
    negatives = {split: _only_negatives(data).select(split=split, view="center", negatives=True)
                 for split in ("val", "test")} if open_outputs else {}
    if heldout is not None and len(heldout):
        negatives[HELDOUT] = heldout
    scored = {split: _scores(head, rows, centroids, index, method) for split, rows in negatives.items()}
    cfg = meta.get("config", {})
    val_negatives = scored.get("val")
    thresholds = calibrate_thresholds(
        *outputs["val"][:3], target_precision=float(cfg.get("target_precision", 0.9)),
        footwear_quantile=float(cfg.get("footwear_quantile", 0.02)), method=method,
        familiarity=outputs["val"][3], familiar_quantile=float(cfg.get("familiar_quantile", 0.25)),
        n_open=len(open_outputs), negative_probs=val_negatives[0] if val_negatives else None,
        negative_groups=list(negatives["val"].frame["group"]) if val_negatives else (),
        open_quantile=float(cfg.get("open_quantile", 0.02)))
    metrics: dict = {split: compute_metrics(probs, y, classes, footwear=fw, thresholds=thresholds, familiarity=fam)
                     for split, (probs, y, fw, fam) in outputs.items()}
    if open_outputs:
        kinds = {output: kind for kind, output in KINDS.items()}
        metrics["negatives"] = {
            split: negative_rates(probs, fw, thresholds, negatives[split].frame.assign(
                kind=negatives[split].frame["label"].map(kinds)), fam, n_open=len(open_outputs))
            for split, (probs, _, fw, fam) in scored.items() if len(probs)}
    return thresholds, metrics, outputs["test"]


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an error it came from says the disk (or a quota) is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def class_centroids(train: Carried, classes: list[str], base_dir: Path, meta: dict) -> np.ndarray:
    """L2-normalised mean of the normalised train features per class (the base centroid where none are left)."""
    base = artifacts.load_centroids(base_dir, meta)
    base_rows = {c["label"]: i for i, c in enumerate(meta["classes"])}
    feats = train.feats / np.maximum(np.linalg.norm(train.feats, axis=1, keepdims=True), 1e-12)
    rows = []
    for label in classes:
        mask = (train.frame["label"] == label).to_numpy()
        if mask.any():
            mean = feats[mask].sum(0)
        elif base is not None and label in base_rows:
            mean = base[base_rows[label]]
        else:
            mean = np.zeros(train.feature_dim, np.float32)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(rows).astype(np.float32)


def _scores(head: Classifier, rows: Carried, centroids: np.ndarray, index: dict[str, int],
            method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probs, y, footwear, familiarity) as the served graph would give them for these features."""
    if not len(rows):
        n = len(index)
        return np.zeros((0, n), np.float32), np.zeros(0, int), np.zeros(0, np.float32), np.zeros(0, np.float32)
    probs = predict_proba(head, rows.feats)
    unit = rows.feats / np.maximum(np.linalg.norm(rows.feats, axis=1, keepdims=True), 1e-12)
    familiarity = (unit @ artifacts.as_shipped(centroids).T).max(axis=1)
    footwear = rows.frame["footwear"].to_numpy(np.float32)
    if method == "centroid":
        footwear = np.clip(familiarity, 0.0, None)
    y = rows.frame["label"].map(index).to_numpy()
    return probs, y, footwear, familiarity


def _write_files(base_dir: Path, meta: dict, out: Path, head: Classifier, centroids: np.ndarray,
                 data: Carried) -> dict:
    """head.pt (new head, the base footwear scorer), backbone.pt copied byte for byte, centroids, carried."""
    files = dict(meta.get("files", {}))
    state = torch.load(base_dir / files.get("head", artifacts.HEAD_FILE), map_location="cpu", weights_only=False)
    state.update(head=head.state_dict(), n_classes=head.fc.out_features, feature_dim=head.fc.in_features)
    if state.get("footwear_method") == "centroid":
        state["footwear"] = {"centroids": torch.from_numpy(centroids)}
    buffer = io.BytesIO()  # torch's own file writer reports a full disk without its errno
    torch.save(state, buffer)
    (out / artifacts.HEAD_FILE).write_bytes(buffer.getvalue())
    for name in (files.get("backbone"), artifacts.AUDIT_FILE):
        if name and (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out / name)
    return {"head": artifacts.HEAD_FILE, "backbone": files.get("backbone"),
            "centroids": artifacts.save_centroids(out, centroids), "carried": data.save(out), "onnx": None}


def _config(base_cfg: dict, settings: RetrainSettings, classes: list[str], meta: dict, mode: str) -> dict:
    """How the candidate was made (``mode``: head_retrain or openset); the split parameters stay the base dataset's."""
    keep = ("backbone", "image_size", "seed", "val_fraction", "test_fraction", "target_precision",
            "footwear_quantile", "familiar_quantile", "open_quantile", "dropout",
            "data_dir", "exclude_file", "trainable_stages")  # provenance: by name, no path (ml.finalize)
    return {**{k: base_cfg[k] for k in keep if k in base_cfg}, "mode": mode, "epochs": settings.steps,
            "lr": settings.lr, "retrain": {"steps": settings.steps, "lr": settings.lr, "warm_start": True,
                                           "parent_created": meta.get("created"), "classes": len(classes)}}


def _snapshot(data: Carried, frame: pd.DataFrame) -> dict:
    center = data.select(view="center").frame
    negatives = _only_negatives(data).select(view="center", negatives=True)
    return {"images": int(len(center)), "classes": int(center["label"].nunique()),
            "per_class": {k: int(v) for k, v in center["label"].value_counts().sort_index().items()},
            "splits": {k: int(v) for k, v in center["split"].value_counts().items()},
            "new_photos": int(len(frame)), **({"negatives": _split_counts(negatives)} if len(negatives) else {})}


def _plots(out: Path, history: list[dict], test: tuple, classes: list[str], data: Carried,
           frame: pd.DataFrame) -> None:
    """Curves and the test confusion matrix; example photos where the files are here (the new ones)."""
    probs, y = known_probs(test[0], test[0].shape[1] - len(classes)), test[1]
    plot_curves(history, out / "plots" / "curves.png", "head retrain")
    if not len(y):
        return
    pred = probs.argmax(1)
    plot_confusion(y, pred, classes, out / "plots" / "confusion.png", "head retrain: test")
    test_rows = data.select(split="test", view="center").frame
    paths = dict(zip(frame["sha1"], frame["path"], strict=False))
    pick = [i for i, sha in enumerate(test_rows["sha1"]) if sha in paths and Path(paths[sha]).is_file()][:EXAMPLES]
    if pick:
        plot_examples([paths[test_rows["sha1"][i]] for i in pick], [classes[y[i]] for i in pick],
                      [classes[pred[i]] for i in pick], [float(probs[i].max()) for i in pick],
                      out / "plots" / "examples.png", title="head retrain: new test photos, wrong in red")


def _readme(out: Path, meta: dict, new_classes: list[str]) -> None:
    test, val = meta["metrics"].get("test", {}), meta["metrics"].get("val", {})
    lines = [f"# sneakerbot model: {meta['backbone']['name']} (head retrained)", "",
             f"Created {meta['created']}: the head of the model created {meta['config']['retrain']['parent_created']} "
             f"retrained ({meta['config']['epochs']} steps, lr {meta['config']['lr']:g}, warm started) on the "
             + ("features it carried plus a negatives folder's, with open-set outputs"
                if meta["config"]["mode"] == "openset" else "features it carried plus new photos")
             + "; the backbone is the parent's, byte for byte.", "",
             f"- Classes: {len(meta['classes'])}" + (f", new: {', '.join(new_classes)}" if new_classes else ""),
             f"- Data: {meta['data']['images']} photos {meta['data']['splits']}, {meta['data']['new_photos']} "
             "from the database", "",
             "| split | images | top-1 | top-3 |", "|---|---|---|---|",
             f"| val | {val.get('n')} | {val.get('top1', 0):.1%} | {val.get('top3', 0):.1%} |",
             f"| test | {test.get('n')} | {test.get('top1', 0):.1%} | {test.get('top3', 0):.1%} |", "",
             *open_set_lines(meta)]
    (out / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------- scoring for the promotion gate


def score_rows(model_dir: Path, rows: pd.DataFrame, cache_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Class probabilities of a model for held-out photos (columns sha1, label, path; path may be empty),
    among its classes only (``ml.verdicts.known_probs``): the gate ranks classes.

    Features come from what the model carries (by sha1) or, for a photo it does not carry,
    from the file through the feature cache. A photo with neither is an error: the gate must
    not silently compare on fewer photos.
    """
    meta = artifacts.read_model_json(model_dir)
    carried = Carried.load(model_dir, meta)
    known = carried.select(view="center", negatives=True) if carried is not None else Carried.empty(0)
    position = {sha: i for i, sha in enumerate(known.frame["sha1"])}
    missing = rows[~rows["sha1"].isin(position)]
    feats = np.zeros((len(rows), _dim(meta, known)), np.float32)
    have = rows["sha1"].isin(position).to_numpy()
    feats[have] = known.feats[[position[s] for s in rows.loc[have, "sha1"]]]
    if len(missing):
        no_file = [p for p in missing["path"] if not p or not Path(p).is_file()]
        if no_file:
            raise RetrainError(f"{len(no_file)} held-out photos are neither carried by {model_dir} nor on disk")
        embedded = FeatureExtractor(model_dir, cache_dir).embed(missing.reset_index(drop=True), ["center"])
        feats[~have] = embedded["center"][0]
    probs = predict_proba(artifacts.load_head(model_dir, meta), feats)
    return known_probs(probs, len(artifacts.open_outputs(meta))), [c["label"] for c in meta["classes"]]


def _dim(meta: dict, known: Carried) -> int:
    return known.feature_dim or int(meta["backbone"].get("feature_dim", 0))
