"""Turn fitted weights into a self-describing model directory.

Runs the exact served network (``SneakerNet``, with fp16-rounded weights when those are what
ships) over val and test, calibrates the thresholds on val, measures on test, draws the
plots, exports ONNX and writes model.json and README.md.

With negatives (``ml.negatives``) the head has the open-set outputs after the classes: model.json
records them in an ``open_set`` block (``ml.negatives.OPEN_SET_METHOD``, the outputs, the negatives' counts
per group and split, the held-out groups, the split rule), the ``open`` threshold is calibrated
on the val negatives too, and the metrics give the verdict rates of the val and test negatives
and of the held-out groups per group (``metrics.negatives``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ml import artifacts
from ml.backbones import Backbone, Preprocessing
from ml.calibrate import calibrate_thresholds
from ml.config import TrainConfig
from ml.data import ImageFrameDataset
from ml.evaluate import compute_metrics, negative_rates
from ml.model import IMAGENET_FOOTWEAR, Classifier, SneakerNet, make_footwear
from ml.negatives import HELDOUT, Negatives, open_set_lines
from ml.plots import plot_confusion, plot_curves, plot_examples
from ml.transforms import eval_transform
from ml.verdicts import OPEN_SET_OUTPUTS, known_level, known_probs

log = logging.getLogger(__name__)

MAX_DIR_BYTES = 25 * 1024 * 1024  # keep model dirs small enough for the repo; ONNX is rebuilt on load otherwise
EXAMPLES = 36
NEGATIVE_SPLITS = ("val", "test", HELDOUT)


def finalize_model(cfg: TrainConfig, backbone: Backbone, head: Classifier, classes: list[str], frame: pd.DataFrame,
                   prep: Preprocessing, history: list[dict], snapshot: dict,
                   negatives: Negatives | None = None) -> Path:
    """Evaluate, calibrate, plot and write the model directory; returns its path.

    ``head`` has a row per class, then the open-set outputs when the run had ``negatives``.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    finetuned = cfg.mode == "finetune"
    backbone.eval()
    head.eval()
    if finetuned or not cfg.pretrained:
        artifacts.round_to_fp16(backbone)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    imagenet_valid = backbone.has_imagenet_head and (not finetuned or backbone.finetune_state().get("imagenet_branch"))
    centroids = _class_centroids(backbone, frame[frame["split"] == "train"], class_to_idx, prep, cfg.progress)
    if imagenet_valid:
        footwear = make_footwear(backbone)
    else:
        from ml.model import CentroidFootwear

        footwear = CentroidFootwear(centroids)
    net = SneakerNet(backbone, head, footwear).eval().to(memory_format=torch.channels_last)

    outputs = {}
    for split in ("val", "test"):
        part = frame[frame["split"] == split].reset_index(drop=True)
        ds = ImageFrameDataset(part, class_to_idx, eval_transform(prep))
        outputs[split] = (part, *_run(net, ds, f"final {split}", cfg.progress, centroids.numpy()))
    negative_outputs = _negative_outputs(net, negatives, classes, prep, cfg, centroids.numpy())
    thresholds, metrics = _calibrate_and_measure(cfg, classes, outputs, negative_outputs,
                                                 "imagenet" if imagenet_valid else "centroid")
    part, probs, _, _ = outputs["test"]
    _plots(out, history, (part, known_probs(probs, probs.shape[1] - len(classes))), classes, class_to_idx, cfg)
    audit = _audit_review(out, net, frame, class_to_idx, prep, cfg, centroids.numpy())

    # a backbone that is not the stock pretrained one must ship its weights
    files = artifacts.save_weights(out, net, finetuned=finetuned or not cfg.pretrained)
    files["centroids"] = artifacts.save_centroids(out, centroids.numpy())
    meta = {
        "format_version": artifacts.FORMAT_VERSION,
        "version": None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": {"name": cfg.backbone, "finetuned": finetuned, **backbone.finetune_state(),
                     "feature_dim": backbone.feature_dim},
        "preprocessing": prep.to_dict(),
        "classes": [{"label": c, "display_name": artifacts.display_name(c)} for c in classes],
        "footwear": {"method": footwear.method,
                     **({"imagenet_classes": {str(k): v for k, v in IMAGENET_FOOTWEAR.items()}}
                        if imagenet_valid else {})},
        "thresholds": thresholds,
        "metrics": metrics,
        "config": portable_config(asdict(cfg)),
        "data": {**snapshot, **({"audit_review": audit} if audit else {})},
        "history": history,
        "files": {**files, "onnx": None},
        **({"open_set": negatives.open_set_block()} if negatives is not None else {}),
    }
    artifacts.write_model_json(out, meta)
    meta["files"]["onnx"] = _maybe_export_onnx(out, net, prep, meta)
    meta["onnx_check"] = _onnx_check(out, net, prep, outputs["val"][0], meta["files"]["onnx"], centroids.numpy())
    artifacts.write_model_json(out, meta)
    if cfg.exclude_file and Path(cfg.exclude_file).is_file():  # the label audit travels with the model
        shutil.copyfile(cfg.exclude_file, out / artifacts.AUDIT_FILE)
        meta["config"]["exclude_file"] = artifacts.AUDIT_FILE  # recorded relative to the model directory
    artifacts.write_model_json(out, meta)
    _carry(out, frame, negatives, cfg)
    write_readme(out, artifacts.read_model_json(out))
    log.info("model written to %s (test top-1 %.3f, top-3 %.3f)", out, metrics["test"].get("top1", float("nan")),
             metrics["test"].get("top3", float("nan")))
    return out


def _calibrate_and_measure(cfg: TrainConfig, classes: list[str], outputs: dict, negative_outputs: dict,
                           method: str) -> tuple[dict, dict]:
    """(thresholds calibrated on val, metrics of val and test and of the negatives per split).

    ``outputs`` and ``negative_outputs``: {split: (rows, probs, footwear, familiarity)}; the
    latter is empty for a run without negatives, whose head has no open-set outputs.
    """
    class_to_idx = {c: i for i, c in enumerate(classes)}
    n_open = len(OPEN_SET_OUTPUTS) if negative_outputs else 0
    val_part, val_probs, val_fw, val_familiar = outputs["val"]
    y_val = np.array([class_to_idx[c] for c in val_part["label"]], dtype=int)
    val_negatives = negative_outputs.get("val")
    thresholds = calibrate_thresholds(
        val_probs, y_val, val_fw, target_precision=cfg.target_precision, footwear_quantile=cfg.footwear_quantile,
        method=method, familiarity=val_familiar, familiar_quantile=cfg.familiar_quantile, n_open=n_open,
        negative_probs=val_negatives[1] if val_negatives else None,
        negative_groups=list(val_negatives[0]["group"]) if val_negatives else (), open_quantile=cfg.open_quantile)
    metrics: dict = {}
    for split, (part, probs, fw, familiar) in outputs.items():
        y = np.array([class_to_idx[c] for c in part["label"]], dtype=int)
        metrics[split] = compute_metrics(probs, y, classes, footwear=fw, thresholds=thresholds, familiarity=familiar)
    if negative_outputs:
        metrics["negatives"] = {split: negative_rates(probs, fw, thresholds, part, familiar, n_open=n_open)
                                for split, (part, probs, fw, familiar) in negative_outputs.items()}
    return thresholds, metrics


MACHINE_PATHS = ("data_dir", "init_from", "negatives")


def portable_config(cfg: dict) -> dict:
    """The resolved config as model.json records it: no path that only resolves where the model was built.

    The data and negatives folders and the model a run warm started from are recorded by their folder
    names (provenance: nothing reads them back; a retrain uses what the directory carries), the output
    and cache folders not at all, the label audit as the copy inside the model directory.
    """
    cfg = dict(cfg)
    for key in MACHINE_PATHS:
        if cfg.get(key):
            cfg[key] = Path(cfg[key]).name
    cfg["out_dir"], cfg["cache_dir"] = ".", None
    return cfg


def _carry(out: Path, frame: pd.DataFrame, negatives: Negatives | None, cfg) -> None:
    """The features of every train, val and test photo under this model's backbone (``ml.carried``):
    what a later head retrain needs instead of the photos; the negatives' too (never the held-out groups)."""
    from ml.retrain import carry_frame

    if negatives is not None:
        frame = pd.concat([frame.assign(group=""), negatives.part("train", "val", "test")], ignore_index=True)
    with tempfile.TemporaryDirectory() as tmp:
        carry_frame(out, frame, Path(cfg.cache_dir) if cfg.cache_dir else Path(tmp))


def _negative_outputs(net: SneakerNet, negatives: Negatives | None, classes: list[str], prep: Preprocessing, cfg,
                      centroids: np.ndarray) -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]]:
    """{split: (rows, probs, footwear, familiarity)} of the val, test and held-out negatives ({} without any)."""
    if negatives is None:
        return {}
    index = {name: i for i, name in enumerate([*classes, *OPEN_SET_OUTPUTS])}
    out = {}
    for split in NEGATIVE_SPLITS:
        part = negatives.part(split)
        ds = ImageFrameDataset(part, index, eval_transform(prep))
        out[split] = (part, *_run(net, ds, f"negatives {split}", cfg.progress, centroids))
    return out


@torch.inference_mode()
def _run(net: SneakerNet, ds, desc: str, progress: bool,
         centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, footwear, familiarity) over a dataset; familiarity as the Predictor computes it."""
    probs, footwear, familiar = [], [], []
    rounded = artifacts.as_shipped(centroids)
    for images, _ in tqdm(DataLoader(ds, batch_size=64), desc=desc, unit="batch", disable=not progress, leave=False):
        p, embedding, fw = net(images.contiguous(memory_format=torch.channels_last))
        probs.append(p.numpy())
        footwear.append(fw.numpy())
        familiar.append((embedding.numpy() @ rounded.T).max(axis=1))
    if not probs:
        empty = np.zeros(0, np.float32)
        return np.zeros((0, net.head.fc.out_features), np.float32), empty, empty
    return np.concatenate(probs), np.concatenate(footwear), np.concatenate(familiar)


def _audit_review(out: Path, net: SneakerNet, frame: pd.DataFrame, class_to_idx: dict, prep: Preprocessing,
                  cfg, centroids: np.ndarray) -> dict | None:
    """The photos the label audit set aside, next to this model's answer (``plots/audit.png``).

    Why: dropping photos from val and test must be checkable by a person. The model never
    trained on them; when it mostly names another model than the folder does, the audit was right.
    """
    from ml.data import AUDIT_SPLIT
    part = frame[(frame["split"] == AUDIT_SPLIT) & frame["label"].isin(class_to_idx)].reset_index(drop=True)
    if not len(part):
        return None
    probs = _run(net, ImageFrameDataset(part, class_to_idx, eval_transform(prep)), "audit", cfg.progress,
                 centroids)[0]
    probs = known_probs(probs, probs.shape[1] - len(class_to_idx))
    y = np.array([class_to_idx[c] for c in part["label"]], dtype=int)
    pred = probs.argmax(1)
    classes = list(class_to_idx)
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(part), min(len(part), EXAMPLES), replace=False))
    plot_examples(list(part["path"].iloc[pick]), [classes[i] for i in y[pick]], [classes[i] for i in pred[pick]],
                  list(probs[pick].max(1)), out / "plots" / "audit.png",
                  title="set aside by the label audit: this model's answer (red: not the folder's label)",
                  truth="folder")
    return {"images": len(part), "model_agrees_with_folder": int((pred == y).sum())}


@torch.inference_mode()
def _class_centroids(backbone: Backbone, train: pd.DataFrame, class_to_idx: dict, prep: Preprocessing,
                     progress: bool) -> torch.Tensor:
    sums = torch.zeros(len(class_to_idx), backbone.feature_dim)
    ds = ImageFrameDataset(train, class_to_idx, eval_transform(prep))
    for images, targets in tqdm(DataLoader(ds, batch_size=64), desc="centroids", disable=not progress, leave=False):
        feats = torch.nn.functional.normalize(backbone(images.contiguous(memory_format=torch.channels_last)), dim=1)
        sums.index_add_(0, targets, feats)
    return torch.nn.functional.normalize(sums, dim=1)


def _plots(out: Path, history: list[dict], test, classes: list[str], class_to_idx: dict, cfg) -> None:
    """Curves, the test confusion matrix and examples; ``test`` is (rows, probabilities over the classes)."""
    part, probs = test
    plots = out / "plots"
    title = f"{cfg.backbone} {cfg.mode}"
    plot_curves(history, plots / "curves.png", title)
    if not len(part):
        return
    y = np.array([class_to_idx[c] for c in part["label"]], dtype=int)
    pred = probs.argmax(1)
    plot_confusion(y, pred, classes, plots / "confusion.png", f"{title}: test")
    rng = np.random.default_rng(cfg.seed)
    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    n_wrong = min(len(wrong), EXAMPLES // 3)
    pick = np.concatenate([rng.choice(wrong, n_wrong, replace=False) if n_wrong else [],
                           rng.choice(right, min(len(right), EXAMPLES - n_wrong), replace=False)]).astype(int)
    pick = np.sort(pick)
    plot_examples(list(part["path"].iloc[pick]), [classes[i] for i in y[pick]], [classes[i] for i in pred[pick]],
                  list(probs[pick].max(1)), plots / "examples.png",
                  title=f"{title}: test examples, wrong in red ({len(wrong)} of {len(y)} wrong)")


def _maybe_export_onnx(out: Path, net: SneakerNet, prep: Preprocessing, meta: dict) -> str | None:
    """Export into the model dir when it fits the size budget; otherwise it is built on first load.

    A model with a separate footwear branch is served as a gated graph built on first load
    (``ml.predictor``, ``export_gated``), so it ships none.
    """
    from ml.onnx_export import export_onnx

    if net.has_gate:
        return None
    path = out / artifacts.ONNX_FILE
    export_onnx(net, path, prep.size)
    if artifacts.dir_size(out) > MAX_DIR_BYTES:
        log.info("model.onnx would take the model dir over %d MB: it is built on first load instead",
                 MAX_DIR_BYTES // 2**20)
        path.unlink()
        return None
    return artifacts.ONNX_FILE


def _onnx_check(out: Path, net: SneakerNet, prep: Preprocessing, val: pd.DataFrame, onnx_file: str | None,
                centroids: np.ndarray) -> dict:
    """Max absolute difference between ONNX Runtime (the graphs as served) and PyTorch on a few val images."""
    from ml.images import open_image

    transform = eval_transform(prep)
    batch = torch.stack([transform(open_image(Path(p), min_side=1)) for p in val["path"].head(8)]) \
        if len(val) else None
    if batch is None:
        return {}
    with torch.inference_mode():
        expected = [t.numpy() for t in net(batch)]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        got = _served_onnx_outputs(net, batch.numpy(), out / onnx_file if onnx_file else None, Path(tmp), prep.size,
                                   centroids)
    names = ("probs", "embedding", "footwear")
    return {"images": int(len(batch)),
            "max_abs_diff": {name: float(np.abs(a - b).max())
                             for name, a, b in zip(names, expected, got, strict=False)}}


def _served_onnx_outputs(net: SneakerNet, batch: np.ndarray, shipped: Path | None, tmp: Path,
                         size: int, centroids: np.ndarray) -> list[np.ndarray]:
    """(probs, embedding, footwear) from the ONNX graph the predictor would run (the footwear branch forced on)."""
    from ml.onnx_export import export_gated, export_onnx, onnx_session, run_gated, run_session

    if net.has_gate:
        path = export_gated(net, tmp / "gated.onnx", size, artifacts.as_shipped(centroids))
        return list(run_gated(onnx_session(path, threads=2), batch, float("inf")))
    path = shipped or export_onnx(net, tmp / "check.onnx", size)
    return list(run_session(onnx_session(path, threads=2), batch))


def write_readme(out: Path, meta: dict) -> Path:
    """README.md: how the model was made and its test metrics."""
    cfg, test, val = meta["config"], meta["metrics"].get("test", {}), meta["metrics"].get("val", {})
    th = meta["thresholds"]
    lines = [
        f"# sneakerbot model: {meta['backbone']['name']} ({cfg['mode']})",
        "",
        f"Created {meta['created']} by `{train_command(cfg)}`",
        f"(resolved config in `model.json` → `config`; lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, "
        f"label smoothing {cfg.get('label_smoothing')}, weight decay {cfg.get('weight_decay')}).",
        "",
        f"- Classes: {len(meta['classes'])} ({', '.join(c['display_name'] for c in meta['classes'][:6])}, ...)",
        f"- Data: {meta['data'].get('images')} images, split (seed {cfg['seed']}) "
        f"{meta['data'].get('splits')}; set aside by the label audit: {_audit_line(meta['data'])}",
        f"- Input: {meta['preprocessing']['size']} px ({meta['preprocessing']['resize']}), "
        f"footwear score: {meta['footwear']['method']}",
        f"- Thresholds (calibrated on val): footwear >= {th['footwear']:.3f}, top-1 confidence >= "
        f"{th['unsure']:.3f} for a sure answer"
        + (f"; a photo under the footwear threshold but at least {th['familiar']:.2f} similar to a class "
           "centroid is answered \"unsure\", not \"not a sneaker\"; from "
           f"{known_level(th):.2f} the footwear score is not consulted (nor computed when served)"
           if th.get("familiar") is not None else "")
        + (f"; a photo with at least {th['open']:.3f} of its probability on the open-set outputs is an unknown "
           "sneaker or another shoe" if th.get("open") is not None else ""),
        "",
        "## Metrics",
        "",
        "| split | images | top-1 | top-3 |",
        "|---|---|---|---|",
        f"| val | {val.get('n')} | {val.get('top1', 0):.1%} | {val.get('top3', 0):.1%} |",
        f"| test | {test.get('n')} | {test.get('top1', 0):.1%} | {test.get('top3', 0):.1%} |",
        "",
    ]
    for name, sub in test.get("subsets", {}).items():
        lines += [f"Test images of {name} ({sub['n']}): top-1 {sub['top1_among_all_classes']:.1%} when the model "
                  f"chooses among all {len(meta['classes'])} classes; {sub['top1_restricted_to_subset']:.1%} when "
                  f"its answer is restricted to those classes (the original project's 5-class setting).", ""]
    if "verdicts" in test:
        lines += ["Verdicts on test (all are sneakers): "
                  + ", ".join(f"{k} {v:.1%}" for k, v in test["verdicts"].items()),
                  ""]
    lines += open_set_lines(meta)
    lines += ["Plots: `plots/curves.png`, `plots/confusion.png`, `plots/examples.png` (wrong answers in red)"
              + (", `plots/audit.png` (the photos the label audit set aside)." if meta["data"].get("audit_review")
                 else "."), ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _audit_line(data: dict) -> str:
    """How many photos the label audit took from each split, and how often this model agrees with their folder."""
    taken = data.get("excluded_by_audit") or {}
    if not taken:
        return "none"
    text = ", ".join(f"{n} from {split}" for split, n in sorted(taken.items()))
    review = data.get("audit_review")
    if review:
        text += (f"; this model gives {review['model_agrees_with_folder']} of them their folder's label "
                 "(`plots/audit.png`)")
    return text


def train_command(cfg: dict) -> str:
    """The ``sneakerbot train`` command line that reproduces a resolved config."""
    parts = ["sneakerbot train", cfg["data_dir"], "--backbone", cfg["backbone"], "--mode", cfg["mode"],
             "--epochs", str(cfg["epochs"]), "--image-size", str(cfg["image_size"]), "--seed", str(cfg["seed"]),
             "--lr", f"{cfg['lr']:g}"]
    if cfg.get("classes"):
        parts += ["--classes", ",".join(cfg["classes"])]
    if cfg["mode"] == "finetune":  # always named: the default changed once ("standard" before "phone")
        parts += ["--augment", cfg.get("augment", "standard")]
    if cfg.get("init_from"):
        parts += ["--init-from", cfg["init_from"]]
    if cfg.get("distill_imagenet") and cfg["mode"] == "finetune":
        parts += ["--distill-imagenet", f"{cfg['distill_imagenet']:g}"]
    if cfg.get("teacher") and cfg["mode"] == "finetune":
        parts += ["--teacher", cfg["teacher"], "--teacher-weight", f"{cfg.get('teacher_weight', 1.0):g}"]
    if cfg.get("trainable_stages"):
        parts += ["--trainable-stages", str(cfg["trainable_stages"])]
    if cfg["mode"] == "head":
        parts += ["--aug-views", str(cfg.get("aug_views", 2))]
        parts += [] if cfg.get("flip_view", True) else ["--no-flip-view"]
    if cfg.get("exclude_file"):
        parts += ["--exclude", cfg["exclude_file"]]
    if cfg.get("negatives"):
        parts += ["--negatives", cfg["negatives"]]
        if cfg.get("holdout_groups"):
            parts += ["--holdout-groups", ",".join(cfg["holdout_groups"])]
        if cfg.get("open_quantile", 0.02) != 0.02:
            parts += ["--open-quantile", f"{cfg['open_quantile']:g}"]
    return " ".join(parts)
