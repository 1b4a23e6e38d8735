"""``sneakerbot train | predict | eval | audit | carry | openset``: parse, read settings, call ``ml``; no logic here."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC
from pathlib import Path

from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add train, predict, eval, audit, carry and openset."""
    _register_train(sub)
    _register_predict(sub)
    _register_eval(sub)
    _register_audit(sub)
    _register_carry(sub)
    _register_openset(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a folder of class folders",
                       description="Train a model on DATA_DIR/<label>/* and write a model directory.")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--backbone", default=None, help="registered backbone (default: settings.backbone)")
    p.add_argument("--mode", choices=["finetune", "head"], default="finetune",
                   help="finetune (default): train the last blocks too; head: a linear head on frozen features")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="model directory (default: <model dir>/<timestamp>)")
    p.add_argument("--image-size", type=int, default=None, help="input resolution (default: the backbone's)")
    p.add_argument("--trainable-stages", type=int, default=None, help="finetune: train only the last N stages")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=float, default=0.15, help="val fraction")
    p.add_argument("--test", type=float, default=0.15, help="test fraction")
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--aug-views", type=int, default=2, help="head: augmented views embedded per train image")
    p.add_argument("--no-flip-view", action="store_true", help="head: do not embed mirrored train images")
    p.add_argument("--exclude", type=Path, default=None,
                   help="sha1 list (label audit) to leave out of train, val and test")
    p.add_argument("--augment", choices=["phone", "strong", "standard"], default="phone",
                   help="finetune: train views (phone, the default: strong plus the degradations of photos "
                        "people take, ml.degrade; strong: random-resized crops and random erasing; standard: "
                        "the 2019 project's)")
    p.add_argument("--negatives", type=Path, default=None, metavar="DIR",
                   help="a folder of photos that are none of the classes: DIR/sneakers/... (other sneakers) "
                        "and DIR/not_sneakers/... (other footwear); the model learns to say so")
    p.add_argument("--holdout-groups", default=None,
                   help="comma-separated negative groups (sub-folders) kept out of training, val and "
                        "thresholds, to measure sneakers nobody trained on (default: vans,reebok)")
    p.add_argument("--open-quantile", type=float, default=0.02,
                   help="with --negatives: the share of val sneakers the open-set threshold may take for unknown")
    p.add_argument("--distill-imagenet", type=float, default=0.0, metavar="WEIGHT",
                   help="finetune: also keep the frozen ImageNet head's answer (a regulariser; e.g. 1.0)")
    p.add_argument("--teacher", type=Path, default=None, metavar="MODEL_DIR",
                   help="finetune: also learn this model's answers (distillation, e.g. into a smaller input size)")
    p.add_argument("--teacher-weight", type=float, default=1.0, metavar="WEIGHT",
                   help="finetune: weight of the teacher's answers against the folder labels")
    p.add_argument("--classes", default=None, help="comma-separated class folders to train on (default: all)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="finetune: start from this model directory's weights (same backbone layout)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="finetune: continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Train and print where the model directory is."""
    from datetime import datetime

    from ml.train import TrainConfig, run_training

    settings.ensure_dirs()
    out = args.out or settings.models_path / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    cfg = TrainConfig(
        data_dir=str(args.data_dir), out_dir=str(out), backbone=args.backbone or settings.backbone,
        mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
        trainable_stages=args.trainable_stages, seed=args.seed, val_fraction=args.val, test_fraction=args.test,
        patience=args.patience, aug_views=args.aug_views, flip_view=not args.no_flip_view,
        exclude_file=str(args.exclude) if args.exclude else None,
        init_from=str(args.init_from) if args.init_from else None, augment=args.augment,
        negatives=str(args.negatives) if args.negatives else None,
        holdout_groups=args.holdout_groups.split(",") if args.holdout_groups else None,
        open_quantile=args.open_quantile,
        distill_imagenet=args.distill_imagenet, teacher=str(args.teacher) if args.teacher else None,
        teacher_weight=args.teacher_weight,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        cache_dir=str(settings.cache_path), threads=args.threads, progress=not args.no_progress,
    )
    model_dir = run_training(cfg, resume=args.resume, epochs=args.epochs if args.resume else None)
    print(model_dir)
    return 0


def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="identify the sneakers in photos")
    p.add_argument("paths", type=Path, nargs="+", help="image files or directories of images")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the starter model)")
    p.add_argument("--json", action="store_true", help="one JSON object per line and image")
    p.add_argument("-k", type=int, default=None, help="how many guesses (default: settings.top_k)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    """Predict every image given (directories expand to their images)."""
    from ml.cli_support import predict_paths

    predictor = _load_predictor(args.model, args.backend, settings)
    rows = predict_paths(predictor, args.paths, k=args.k or settings.top_k)
    _print_rows(rows, args.json)
    return 1 if rows and all("error" in row for row in rows) else 0


def _register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a folder of class folders")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the starter model)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--split", default=None, help="only this split of the model's own seeded split (e.g. test)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    p.add_argument("--negatives", type=Path, default=None, metavar="DIR",
                   help="also the verdict rates per group of a negatives folder (DIR/sneakers/<group>/..., "
                        "DIR/not_sneakers/<group>/...), the held-out groups apart")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Top-1, top-3, per-class precision/recall and verdict rates (and the negatives', per group)."""
    from ml.evaluate import evaluate_dir, format_report

    predictor = _load_predictor(args.model, args.backend, settings)
    report = evaluate_dir(predictor, args.data_dir, split=args.split, negatives=args.negatives)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _load_predictor(model: Path | None, backend: str, settings: Settings):
    from ml.predictor import Predictor

    return Predictor.load(model or settings.starter_model_dir, backend=backend,
                          cache_dir=settings.cache_path / "onnx", threads=settings.inference_threads,
                          thresholds={"footwear": settings.sneaker_threshold, "unsure": settings.unsure_threshold})


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    for row in rows:
        if "error" in row:
            print(f"{row['path']}: error: {row['error']}", file=sys.stderr)
            continue
        guesses = ", ".join(f"{g['display_name']} {g['score']:.0%}" for g in row["top"])
        footwear = "known" if row["footwear_score"] is None else f"{row['footwear_score']:.2f}"
        verdict = f"{row['verdict']} ({row['detail']})" if row.get("detail") else row["verdict"]
        print(f"{row['path']}\t{verdict:<15}\tfootwear {footwear}\t{guesses}")


def _register_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="flag images whose folder label is probably wrong",
                       description="Out-of-fold predictions on frozen-backbone features; writes the flagged "
                                   "images as csv, usable as `train --exclude`.")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="csv of flagged images")
    p.add_argument("--backbone", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """Run the label audit and print how many images it flagged."""
    from ml.audit import run_audit

    settings.ensure_dirs()
    report = run_audit(args.data_dir, args.out, backbone=args.backbone or settings.backbone,
                       image_size=args.image_size, folds=args.folds, cache_dir=settings.cache_path,
                       threads=args.threads)
    print(f"{int(report['flagged'].sum())} of {len(report)} images flagged -> {args.out}")
    return 0


def _register_carry(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("carry", help="store a model's training features in its directory (what a retrain needs)",
                       description="Embed the photos MODEL_DIR was trained from (DATA_DIR/<label>/*, split as its "
                                   "training split them) into MODEL_DIR/carried.npz, so retrains need no dataset.")
    p.add_argument("model_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_carry)


def cmd_carry(args: argparse.Namespace, settings: Settings) -> int:
    """Embed and report how many rows the model directory carries now."""
    from tqdm.auto import tqdm

    from ml.retrain import carry_dataset

    bar = tqdm(desc="embedding", unit="view", disable=args.no_progress)

    def progress(_stage: str, done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    settings.ensure_dirs()
    rows = carry_dataset(args.model_dir, args.data_dir, settings.cache_path, progress=progress)
    bar.close()
    print(f"{args.model_dir}: carries {rows} feature rows ({args.model_dir / 'carried.npz'})")
    return 0


def _register_openset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("openset", help="give a model the open-set outputs (other sneaker, other shoe) without "
                                       "a fine-tune",
                       description="Embed a negatives folder with MODEL_DIR's backbone and retrain its head on the "
                                   "features it carries plus the negatives': a new model directory OUT whose "
                                   "answers say when a photo shows none of the models it knows.")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--negatives", type=Path, required=True, metavar="DIR",
                   help="DIR/sneakers/<group>/... (other sneakers) and DIR/not_sneakers/<group>/... (other footwear)")
    p.add_argument("--out", type=Path, required=True, help="the new model directory (must not hold files)")
    p.add_argument("--holdout-groups", default=None,
                   help="comma-separated negative groups kept out of training, val and thresholds, only "
                        "measured (default: vans,reebok)")
    p.add_argument("--open-quantile", type=float, default=0.02,
                   help="the share of val sneakers the open-set threshold may take for unknown")
    p.add_argument("--steps", type=int, default=None, help="head training steps (default: settings.retrain_steps)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_openset)


def cmd_openset(args: argparse.Namespace, settings: Settings) -> int:
    """Build the open-set model and print its negatives' verdict rates per group."""
    from tqdm.auto import tqdm

    from ml.artifacts import read_model_json
    from ml.evaluate import format_rates
    from ml.retrain import RetrainSettings, add_open_set

    bar = tqdm(unit="step", disable=args.no_progress)
    current = [""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != current[0]:  # embedding photos, then training steps
            current[0] = stage
            bar.reset(total)
            bar.set_description_str(stage)
        bar.update(done - bar.n)

    settings.ensure_dirs()
    retrain = RetrainSettings(steps=args.steps or settings.retrain_steps, cache_dir=settings.cache_path,
                              threads=args.threads)
    out = add_open_set(args.model_dir, args.negatives, args.out, settings=retrain, progress=progress,
                       holdout=args.holdout_groups.split(",") if args.holdout_groups else None,
                       open_quantile=args.open_quantile)
    bar.close()
    meta = read_model_json(out)
    for split, rates in meta["metrics"]["negatives"].items():
        print("\n".join(format_rates(f"{split}:", rates)))
    test = meta["metrics"]["test"]
    print(f"test sneakers ({test['n']}): top-1 {test['top1']:.1%}, verdicts "
          + ", ".join(f"{k} {v:.1%}" for k, v in test["verdicts"].items()))
    print(out)
    return 0
