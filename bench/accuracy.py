"""Accuracy on the test split of the Air Jordan photos: top-1 and top-3 for three class sets.

    python -m bench.accuracy [--data ../shared/datasets/air-jordan] [--model DIR ...] [--train-heads]

Class sets: ``air_jordan_1..5`` (the original project's five; its 93% is the number to beat),
``air_jordan_1..23`` and all classes. Every model here is one model over all the classes it was
trained on, so each set is reported twice: *among all classes* (the model may answer any of
its classes, what the bot does) and *restricted* (its answer is the most probable class of
the set, the setting of a model trained on just those classes). Test images are the test
split of each model's own seeded split, which training never saw, without the photos its
label audit set aside (``ml.evaluate.model_split``: ``audit.csv`` in the model directory;
``plots/audit.png`` shows them). One more row, ``all, as scraped``, keeps those photos with
their folder labels. A model with open-set outputs (``--negatives``) is ranked over its classes
only, those outputs left out (``ml.verdicts.known_probs``).

``--train-heads`` first trains head-mode models (frozen backbone + linear head, cached
embeddings) for every backbone whose weights are on this machine, into ``var/bench/``.
``--train-scratch`` trains the from-scratch baseline (``simple_cnn``, the original project's
CNN) on air_jordan_1..5, the original project's setting, into ``var/bench/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "air-jordan"
CLASS_SETS = {
    "air_jordan_1..5": [f"air_jordan_{i}" for i in range(1, 6)],
    "air_jordan_1..23": [f"air_jordan_{i}" for i in range(1, 24)],
    "all": None,
}


def class_probs(predictor: Predictor, paths: list[str], *, tta: bool = False) -> np.ndarray:
    """The served model's probabilities over its classes, one row per photo (``tta``: averaged with the
    mirrored photo). A model with open-set outputs has them dropped and the rest renormalised
    (``ml.verdicts.known_probs``): top-1 and top-3 rank the known classes, as the bot's guesses do."""
    from ml.verdicts import known_probs

    probs = predictor.predict_arrays(paths, batch_size=32)[0]
    if tta:
        from PIL import ImageOps

        from ml.images import open_image

        mirrored = [ImageOps.mirror(open_image(Path(p))) for p in paths]
        probs = (probs + predictor.predict_arrays(mirrored, batch_size=32)[0]) / 2
    return known_probs(probs, predictor.n_open)


def evaluate_model(model_dir: Path, data_dir: Path, *, threads: int = 2, tta: bool = False) -> dict:
    """Figures for one model directory on its own test split (``tta``: average with the mirrored image)."""
    from ml.evaluate import model_split, topk_hits
    from ml.predictor import Predictor

    predictor = Predictor.load(model_dir, backend="onnx", threads=threads,
                               cache_dir=ROOT / "var" / "cache" / "onnx")
    cfg = predictor.info.config
    labels = predictor.labels
    frame = model_split(model_dir, data_dir)
    test = frame[(frame["drawn_split"] == "test") & frame["label"].isin(labels)].reset_index(drop=True)
    flagged = (test["split"] != "test").to_numpy()  # set aside by the model's label audit
    probs = class_probs(predictor, list(test["path"]), tta=tta)
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in test["label"]])
    out = {"model": str(model_dir), "backbone": predictor.info.backbone,
           "mode": cfg["mode"] + ("+flipTTA" if tta else ""), "image_size": predictor.info.preprocessing.size,
           "audit_flagged_test_images": int(flagged.sum()), "sets": {}}
    sets = [(name, members, ~flagged) for name, members in CLASS_SETS.items()]
    if flagged.any():
        sets.append(("all, as scraped", None, np.ones(len(test), bool)))
    for name, members, keep in sets:
        members = [m for m in (members or labels) if m in index]
        if not members:
            continue
        cols = np.array([index[m] for m in members])
        rows = np.isin(y, cols) & keep
        sub_probs, sub_y = probs[rows], y[rows]
        remap = {c: j for j, c in enumerate(cols)}
        ry = np.array([remap[v] for v in sub_y])
        restricted = sub_probs[:, cols]
        out["sets"][name] = {
            "classes": len(members), "images": int(rows.sum()),
            "top1_among_all": float((sub_probs.argmax(1) == sub_y).mean()),
            "top3_among_all": float(topk_hits(sub_probs, sub_y, 3).mean()),
            "top1_restricted": float((restricted.argmax(1) == ry).mean()),
            "top3_restricted": float(topk_hits(restricted, ry, 3).mean()),
        }
    return out


def train_heads(data_dir: Path, threads: int) -> list[Path]:
    """Head-mode models for every backbone whose pretrained weights are here."""
    from ml.backbones import available_backbones, create_backbone
    from ml.errors import WeightsUnavailable
    from ml.train import TrainConfig, run_training

    made = []
    for name in available_backbones():
        try:
            backbone = create_backbone(name, pretrained=True)
        except WeightsUnavailable as exc:
            print(f"skip {name}: {exc}")
            continue
        if backbone.from_scratch:
            print(f"skip {name}: trains from scratch (use `sneakerbot train --mode finetune --backbone {name}`)")
            continue
        out = ROOT / "var" / "bench" / f"{name}-head"
        size = 160 if name == "efficientnet_lite0" else None
        cfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out), backbone=name, mode="head", image_size=size,
                          aug_views=0, flip_view=False, cache_dir=str(ROOT / "var" / "cache"), threads=threads,
                          progress=False)
        made.append(Path(run_training(cfg)))
    return made


def train_scratch(data_dir: Path, threads: int, epochs: int = 30) -> list[Path]:
    """The from-scratch backbones, fine-tuned on the original project's five classes."""
    from ml.backbones import available_backbones, create_backbone
    from ml.train import TrainConfig, run_training

    made = []
    for name in available_backbones():
        if not create_backbone(name, pretrained=False).from_scratch:
            continue
        out = ROOT / "var" / "bench" / f"{name}-scratch-aj1-5"
        cfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out), backbone=name, mode="finetune", epochs=epochs,
                          classes=CLASS_SETS["air_jordan_1..5"], patience=epochs, threads=threads, progress=True)
        made.append(Path(run_training(cfg, resume=True)))
    return made


def format_rows(results: list[dict]) -> str:
    """One line per model and class set."""
    lines = [f"{'model':<34} {'set':<17} {'imgs':>5}  {'top1 all':>8} {'top3 all':>8}  {'top1 restr':>10} "
             f"{'top3 restr':>10}"]
    for result in results:
        tag = f"{result['backbone']}/{result['mode']}@{result['image_size']}"
        for name, s in result["sets"].items():
            lines.append(f"{tag:<34} {name:<17} {s['images']:>5}  {s['top1_among_all']:>8.1%} "
                         f"{s['top3_among_all']:>8.1%}  {s['top1_restricted']:>10.1%} {s['top3_restricted']:>10.1%}")
        lines.append(f"{'':<34} ({result['model']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, action="append", help="model directory (repeatable)")
    parser.add_argument("--train-heads", action="store_true")
    parser.add_argument("--train-scratch", action="store_true", help="train simple_cnn from scratch on AJ 1-5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tta", action="store_true", help="also report flip test-time augmentation (2x the cost)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data}")
        return 1
    models = list(args.model or [])
    if args.train_heads:
        models += train_heads(args.data, args.threads)
    if args.train_scratch:
        models += train_scratch(args.data, args.threads)
    if not models:
        models = [ROOT / "models" / "starter"]
        models += sorted(p for p in (ROOT / "var" / "bench").glob("*") if (p / "model.json").is_file())
    results = [evaluate_model(m, args.data, threads=args.threads) for m in models]
    if args.tta:
        results += [evaluate_model(m, args.data, threads=args.threads, tta=True) for m in models]
    print(json.dumps(results, indent=1) if args.json else format_rows(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
