"""Head retrains from what a model directory carries: no dataset, no class lost, the model reproduced.

The small cases use a real model the ML package trains in seconds on generated photos
(``loop_support``); the reproduction check uses the shipped starter model and the
features it carries (no dataset needed, so it runs everywhere).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bot.settings import STARTER_MODEL_DIR
from ml import artifacts
from ml.carried import Carried, dequantize, quantize
from ml.retrain import RetrainError, RetrainSettings, retrain_head

from loop_support import COLOURS, YELLOW, photo, shared_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory)


def new_class_frame(root: Path, n: int = 12) -> pd.DataFrame:
    """Photos of a class no model knows yet (yellow), as the database would hand them over."""
    rows = []
    (root / "new").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data = photo(YELLOW, 77_000 + i)
        path = root / "new" / f"{i}.jpg"
        path.write_bytes(data)
        rows.append({"path": str(path), "label": "yellow_one", "sha1": hashlib.sha1(data).hexdigest(),
                     "split": "test" if i < 3 else "val" if i < 5 else "train"})
    return pd.DataFrame(rows)


def test_a_trained_model_carries_its_photos_features_and_they_reproduce_its_test_figure(model: Path) -> None:
    meta = artifacts.read_model_json(model)
    carried = Carried.load(model, meta)

    assert carried is not None and meta["files"]["carried"] == "carried.npz"
    center = carried.select(view="center").frame
    assert dict(center["split"].value_counts()) == {k: v for k, v in meta["data"]["splits"].items()
                                                   if k in ("train", "val", "test")}
    assert len(carried.select(split="train", view="flip")) == meta["data"]["splits"]["train"]
    assert meta["carried"]["test_top1_from_carried"] == pytest.approx(meta["metrics"]["test"]["top1"])


def test_eight_bit_rows_keep_their_values_within_half_a_step() -> None:
    feats = np.random.default_rng(0).uniform(0, 6, (50, 1280)).astype(np.float32)
    q, lo, step = quantize(feats)
    assert q.dtype == np.uint8 and np.abs(dequantize(q, lo, step) - feats).max() <= step.max() / 2 + 1e-6


def test_a_copied_model_dir_retrains_from_anywhere_and_keeps_every_class(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(model, copy)
    monkeypatch.chdir(tmp_path)  # nothing the model needs may resolve from the working directory
    frame = new_class_frame(tmp_path / "db")

    out = retrain_head(copy, frame, tmp_path / "cand", settings=RetrainSettings(steps=150, cache_dir=tmp_path / "c"),
                       display_names={"yellow_one": "Yellow One"})

    meta = artifacts.read_model_json(out)
    assert [c["label"] for c in meta["classes"]] == [*COLOURS, "yellow_one"]
    assert meta["classes"][-1]["display_name"] == "Yellow One"
    assert meta["metrics"]["test"]["per_class"]["yellow_one"]["recall"] == 1.0
    assert (out / "backbone.pt").exists() == (copy / "backbone.pt").exists()
    for name in filter(None, meta["files"].values()):
        assert (out / name).is_file() and not Path(name).is_absolute() and ".." not in Path(name).parts
    carried = Carried.load(out, meta)
    assert set(frame["sha1"]) <= set(carried.frame["sha1"])  # the new photos travel with the candidate

    from ml.predictor import Predictor

    guess = Predictor.load(out, cache_dir=tmp_path / "onnx").predict(photo(YELLOW, 99_999))[0]
    assert guess.best.label == "yellow_one"


def test_a_model_that_carries_nothing_needs_its_base_dataset(
    model: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / "carried.npz").unlink()
    meta = artifacts.read_model_json(bare)
    meta["files"].pop("carried")
    artifacts.write_model_json(bare, meta)
    settings = RetrainSettings(steps=50, cache_dir=tmp_path / "c")

    with pytest.raises(RetrainError, match="SNEAKERBOT_BASE_DATASET_DIR"):
        retrain_head(bare, new_class_frame(tmp_path / "db"), tmp_path / "cand", settings=settings)

    dataset = tmp_path_factory.getbasetemp() / "loop-model-base" / "dataset"
    settings = RetrainSettings(steps=50, cache_dir=tmp_path / "c", base_dataset_dir=dataset)
    out = retrain_head(bare, new_class_frame(tmp_path / "db"), tmp_path / "cand", settings=settings)
    rebuilt = Carried.load(out, artifacts.read_model_json(out))
    original = Carried.load(model, artifacts.read_model_json(model))
    assert set(original.frame["sha1"]) <= set(rebuilt.frame["sha1"])  # split and audit as the model's own


def test_a_retrain_of_the_starter_with_no_new_data_reproduces_it(tmp_path: Path) -> None:
    meta = json.loads((STARTER_MODEL_DIR / "model.json").read_text())
    assert meta["files"]["carried"] and meta["config"]["exclude_file"] == "audit.csv"
    empty = pd.DataFrame(columns=["path", "label", "sha1", "split"])

    out = retrain_head(STARTER_MODEL_DIR, empty, tmp_path / "cand", settings=RetrainSettings(cache_dir=tmp_path))

    after = artifacts.read_model_json(out)
    assert [c["label"] for c in after["classes"]] == [c["label"] for c in meta["classes"]]
    assert after["metrics"]["test"]["n"] == meta["metrics"]["test"]["n"] == 1313
    assert abs(after["metrics"]["test"]["top1"] - meta["metrics"]["test"]["top1"]) <= 0.01
    assert (out / "backbone.pt").read_bytes() == (STARTER_MODEL_DIR / "backbone.pt").read_bytes()


def test_the_starter_records_no_path_outside_its_directory() -> None:
    meta = json.loads((STARTER_MODEL_DIR / "model.json").read_text())
    cfg = meta["config"]
    for key in ("data_dir", "init_from", "teacher", "out_dir", "exclude_file"):
        value = cfg.get(key)
        assert value is None or ("/" not in value and ".." not in value), (key, value)
    assert (STARTER_MODEL_DIR / cfg["exclude_file"]).is_file()
