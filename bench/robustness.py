"""Robustness: a model's top-1 and top-3 on its own test split, clean and as phone photos (issue #13).

    python -m bench.robustness [--model DIR] [--data ../shared/datasets/air-jordan] [--seed 0] [--limit N]

The test photos are the test split of the model's own seeded split, without the photos its
label audit set aside (``ml.evaluate.model_split``, as ``sneakerbot eval --split test`` and
``bench.accuracy``). Each is run through the served model (``Predictor.predict``, ONNX Runtime)
clean, then under each degradation of ``ml.degrade`` (small in the frame, at an angle, blurred,
dim, a colour cast, a thumbnail, recompressed) and their random mix ``phone``, each photo with
its own strength drawn from ``--seed``, the photo's sha1 and the degradation's name (the same
figures on every run). Prints, per condition, top-1 and top-3, their drop in points from clean
against the target (at most 5 points of top-1 lost), and the share of photos answered ``sneaker``
and ``not_sneaker``; saves the figures as JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from bench.machine import machine_line
from ml.degrade import DEGRADATIONS, Degradation, phone, rng_for
from ml.evaluate import model_split
from ml.images import open_image
from ml.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "starter"
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "air-jordan"
RESULTS = Path(__file__).resolve().parent / "results"
ONNX_CACHE = ROOT / "var" / "cache" / "onnx"
TARGET_DROP_POINTS = 5.0  # top-1 may lose at most this many points under any one degradation
CHUNK = 64  # photos degraded and held in memory at a time


def load_predictor(model_dir: Path, threads: int) -> Predictor:
    """The served model on ONNX Runtime, its graph cached where the other benches cache it."""
    return Predictor.load(model_dir, backend="onnx", threads=threads, cache_dir=ONNX_CACHE)


def known_test(frame: pd.DataFrame, predictor: Predictor) -> pd.DataFrame:
    """The test photos of ``frame`` (``ml.evaluate.model_split``'s) of the classes the model knows, in sha1
    order (so ``head(n)`` mixes the classes)."""
    test = frame[(frame["split"] == "test") & frame["label"].isin(predictor.labels)]
    return test.sort_values("sha1").reset_index(drop=True)


CONDITIONS: dict[str, Degradation | None] = {"clean": None, **DEGRADATIONS, "phone": phone}


def run_condition(predictor: Predictor, frame: pd.DataFrame, name: str, seed: int) -> dict:
    """Top-1, top-3 and verdict shares of the served model on ``frame``'s photos under one condition."""
    degrade = CONDITIONS[name]
    started = time.perf_counter()
    top1 = top3 = 0
    verdicts: Counter[str] = Counter()
    for start in range(0, len(frame), CHUNK):
        rows = frame.iloc[start:start + CHUNK]
        images = [open_image(Path(p)) for p in rows["path"]]
        if degrade is not None:
            images = [degrade(img, rng_for(seed, f"{sha}:{name}")) for img, sha in zip(images, rows["sha1"],
                                                                                       strict=True)]
        for prediction, label in zip(predictor.predict(images, k=3), rows["label"], strict=True):
            guesses = [g.label for g in prediction.top]
            top1 += guesses[0] == label
            top3 += label in guesses
            verdicts[prediction.verdict] += 1
    n = max(len(frame), 1)
    return {"condition": name, "images": len(frame), "top1": top1 / n, "top3": top3 / n,
            "verdicts": {k: v / n for k, v in sorted(verdicts.items())}, "seconds": time.perf_counter() - started}


def with_drops(rows: list[dict]) -> list[dict]:
    """Each row with its drop from the clean row, in points, and whether top-1's drop meets the target."""
    clean = rows[0]
    for row in rows:
        row["top1_drop_points"] = 100 * (clean["top1"] - row["top1"])
        row["top3_drop_points"] = 100 * (clean["top3"] - row["top3"])
        row["meets_target"] = row["top1_drop_points"] <= TARGET_DROP_POINTS
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per condition."""
    lines = [f"{'condition':<12} {'top-1':>6} {'drop':>6} {'top-3':>6} {'drop':>6}  {'sneaker':>7} "
             f"{'not_sn.':>7}  {'s':>4}  target: top-1 drop <= {TARGET_DROP_POINTS:g} points"]
    for row in rows:
        mark = "" if row["condition"] == "clean" else ("ok" if row["meets_target"] else "MISSED")
        lines.append(f"{row['condition']:<12} {row['top1']:>6.1%} {row['top1_drop_points']:>+6.1f} "
                     f"{row['top3']:>6.1%} {row['top3_drop_points']:>+6.1f}  "
                     f"{row['verdicts'].get('sneaker', 0):>7.1%} {row['verdicts'].get('not_sneaker', 0):>7.1%}  "
                     f"{row['seconds']:>4.0f}  {mark}")
    return "\n".join(lines)


def save_results(name: str, payload: dict, folder: Path) -> Path:
    """``<folder>/<name>-<time>.json``, next to the other benches' results."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0, help="draws every photo's degradation strengths")
    parser.add_argument("--limit", type=int, default=None, help="only this many test photos (a seeded sample)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder the JSON figures go to")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data}")
        return 1
    machine = machine_line()
    print(machine, flush=True)
    predictor = load_predictor(args.model, args.threads)
    frame = known_test(model_split(args.model, args.data), predictor)
    if args.limit is not None:
        frame = frame.head(args.limit)  # sorted by sha1: a sample across the classes
    print(f"model {args.model} ({predictor.info.backbone}@{predictor.info.preprocessing.size}); "
          f"{len(frame)} test photos of {args.data}; seed {args.seed}", flush=True)
    rows = with_drops([run_condition(predictor, frame, name, args.seed) for name in CONDITIONS])
    print(format_table(rows))
    path = save_results("robustness", {"machine": machine, "model": str(args.model), "data": str(args.data),
                                       "seed": args.seed, "target_drop_points": TARGET_DROP_POINTS,
                                       "rows": rows}, args.results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
