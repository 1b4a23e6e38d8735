"""The open set (issue #13): models that say when a photo shows none of the sneakers they know.

The rule and the calibration on hand-made arrays; the negatives' split on small folders; then
real runs on tiny generated photos (``loop_support``: a class is a colour): training with
``--negatives`` in head and finetune mode, both backends serving the open-set outputs alike,
a head retrain that keeps them, and ``sneakerbot openset`` giving them to a model that has none.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from bot.cli import main as cli_main
from ml import artifacts
from ml.calibrate import calibrate_thresholds, open_threshold
from ml.carried import Carried
from ml.negatives import DEFAULT_HOLDOUT, HELDOUT, index_negatives, split_of
from ml.predictor import Predictor
from ml.retrain import RetrainSettings, retrain_head, score_rows, warm_start
from ml.train import TrainConfig, run_training
from ml.verdicts import OPEN_SET_OUTPUTS, known_probs, verdicts

from loop_support import COLOURS, YELLOW, make_dataset, photo, shared_model, tree_digest

torch.set_num_threads(1)

SIZE = 64
SNEAKER_GROUPS = {"dunks": (240, 130, 20), "pumas": (140, 40, 170), "vans": (20, 170, 170)}  # vans: held out
SHOE_GROUPS = {"boots": (110, 70, 30), "clogs": (90, 90, 90)}


# --------------------------------------------------------------------------- the rule, on hand-made arrays


TH = {"footwear": 0.01, "unsure": 0.5, "familiar": 0.7, "open": 0.4}


def test_the_open_set_rule_on_hand_made_probabilities() -> None:
    probs = np.array([
        [0.80, 0.10, 0.05, 0.03, 0.02],  # a known model, sure
        [0.20, 0.10, 0.10, 0.50, 0.10],  # some other sneaker
        [0.20, 0.10, 0.10, 0.10, 0.50],  # some other shoe
        [0.45, 0.10, 0.10, 0.20, 0.15],  # open 0.35: the known models decide, 0.45 renormalised is 0.69
        [0.25, 0.25, 0.15, 0.20, 0.15],  # open 0.35, renormalised top-1 0.38: unsure
        [0.10, 0.10, 0.10, 0.20, 0.50],  # a cat: the open outputs mean nothing, the footwear score says no shoe
        [0.10, 0.10, 0.10, 0.50, 0.20],  # open, under the footwear threshold but familiar: still an unknown sneaker
        [0.60, 0.00, 0.00, 0.20, 0.20],  # open exactly at the threshold counts
    ])
    footwear = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.001, 0.001, 0.9])
    familiarity = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.3, 0.72, 0.5])

    rule, detail = verdicts(probs, footwear, TH, familiarity, n_open=2)

    assert list(rule) == ["sneaker", "unknown_sneaker", "not_sneaker", "sneaker", "unsure", "not_sneaker",
                          "unknown_sneaker", "unknown_sneaker"]
    assert list(detail) == [None, None, "other_footwear", None, None, None, None, None]
    known = known_probs(probs, 2)
    assert known.shape == (8, 3) and np.allclose(known.sum(1), 1)
    assert known[3, 0] == pytest.approx(0.45 / 0.65)
    # a sure answer under the footwear threshold, familiar: unsure (as without open outputs)
    rescued, _ = verdicts(probs[:1], np.array([0.001]), TH, np.array([0.72]), n_open=2)
    assert list(rescued) == ["unsure"]
    with pytest.raises(ValueError, match="_other_sneaker"):
        verdicts(probs[:, :4], footwear, TH, n_open=1)


def test_a_model_without_open_outputs_answers_as_before() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    footwear = np.array([0.5, 0.5, 0.001, 0.001])
    familiarity = np.array([0.2, 0.2, 0.2, 0.71])
    old = {"footwear": 0.01, "unsure": 0.5, "familiar": 0.7}  # no "open": a model made before open sets

    rule, detail = verdicts(probs, footwear, old, familiarity)

    assert list(rule) == ["sneaker", "unsure", "not_sneaker", "unsure"]
    assert list(detail) == [None] * 4
    assert known_probs(probs, 0) is probs


def test_the_open_threshold_and_unsure_are_chosen_on_val() -> None:
    rng = np.random.default_rng(3)
    n, k = 400, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k + 2))
    logits[np.arange(n), y] += 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    neg_logits = rng.normal(0, 1, (60, k + 2))
    neg_logits[:40, k] += 3  # "some other sneaker": mostly caught
    neg_logits[40:, 0] += 4  # a group that looks like class 0: slips through, named
    negatives = np.exp(neg_logits) / np.exp(neg_logits).sum(1, keepdims=True)
    groups = ["dunks"] * 40 + ["lookalikes"] * 20

    th = calibrate_thresholds(probs, y, np.full(n, 0.5), n_open=2, negative_probs=negatives,
                              negative_groups=groups, open_quantile=0.05)

    open_val = probs[:, k:].sum(1)
    assert (open_val >= th["open"]).mean() <= 0.05 and (open_val >= th["open"]).sum() == 20  # floor(0.05 * 400)
    report = th["calibration"]
    assert report["val_known_open_rate"] == pytest.approx(0.05)
    assert report["val_negatives"]["dunks"]["open_rate"] > 0.7 > report["val_negatives"]["lookalikes"]["open_rate"]
    assert report["val_negatives"]["lookalikes"]["n"] == 20
    # unsure: the confident answers that get through are 90 % right, the named lookalikes counted as wrong
    rule, _ = verdicts(np.concatenate([probs, negatives]), np.full(n + 60, 0.5), th, n_open=2)
    right = np.concatenate([known_probs(probs, 2).argmax(1) == y, np.zeros(60, bool)])
    assert right[rule == "sneaker"].mean() >= 0.9
    without = calibrate_thresholds(probs, y, np.full(n, 0.5), n_open=2, open_quantile=0.05)
    assert th["unsure"] >= without["unsure"]  # the negatives can only make "sure" harder to reach
    assert open_threshold(np.array([0.1, 0.2, 0.2, 0.9]), 0.25) > 0.2  # a tie never lets more through
    assert open_threshold(np.zeros(0), 0.02) == 0.5


# --------------------------------------------------------------------------- the negatives folder


def noise_png(seed: int) -> bytes:
    """A 64 px PNG of noise: bytes of its own (the split follows their sha1)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_negatives_split_is_stable_and_holds_groups_out(tmp_path: Path) -> None:
    root = tmp_path / "negatives"
    for kind, group, n, base in (("sneakers", "nike_other", 30, 0), ("sneakers", "vans", 10, 100),
                                 ("sneakers", "Reebok", 5, 200), ("not_sneakers", "boots", 20, 300)):
        (root / kind / group).mkdir(parents=True)
        for i in range(n):
            (root / kind / group / f"{i}.png").write_bytes(noise_png(base + i))
    for i in range(4):  # loose files: their group is the folder's name
        (root / "not_sneakers" / f"slide{i}.png").write_bytes(noise_png(400 + i))
    (root / "sneakers" / "nike_other" / "same.png").write_bytes(noise_png(300))  # also a boot: a conflict

    first = index_negatives(root)

    frame = first.frame
    assert first.holdout == DEFAULT_HOLDOUT
    assert set(frame.loc[frame["group"].isin(["vans", "Reebok"]), "split"]) == {HELDOUT}
    assert set(frame.loc[~frame["group"].isin(["vans", "Reebok"]), "split"]) <= {"train", "val", "test"}
    assert (frame["split"] == HELDOUT).sum() == 15
    assert len(frame) == 30 + 10 + 5 + 19 + 4 and list(first.problems["kind"]) == ["label_conflict"] * 2
    assert set(frame.loc[frame["kind"] == "sneakers", "label"]) == {"_other_sneaker"}
    assert set(frame.loc[frame["group"] == "not_sneakers", "label"]) == {"_other_footwear"}
    summary = first.summary()
    assert summary["counts"]["sneakers"]["vans"] == {HELDOUT: 10} and summary["holdout_groups"] == ["vans", "reebok"]

    # new files and a renamed one move no photo; a held-out group never reaches train, val or test
    for i in range(25):
        (root / "sneakers" / "nike_other" / f"new{i}.png").write_bytes(noise_png(500 + i))
    (root / "sneakers" / "nike_other" / "0.png").rename(root / "sneakers" / "nike_other" / "renamed.png")
    (root / "sneakers" / "vans" / "1.png").unlink()
    again = index_negatives(root).frame.set_index("sha1")["split"]
    before = frame.set_index("sha1")["split"].drop(hashlib.sha1(noise_png(101)).hexdigest())
    assert again.loc[before.index].equals(before)
    # held-out groups of a run: named ones only
    custom = index_negatives(root, ["boots"]).frame
    assert set(custom.loc[custom["split"] == HELDOUT, "group"]) == {"boots"}
    assert not len(index_negatives(root, []).part(HELDOUT))


def test_the_negatives_split_ratios_and_that_they_depend_on_the_photo_alone() -> None:
    shas = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(4000)]
    splits = pd.Series([split_of(s) for s in shas]).value_counts(normalize=True)
    assert splits["train"] == pytest.approx(0.65, abs=0.025)
    assert splits["val"] == pytest.approx(0.15, abs=0.02)
    assert splits["test"] == pytest.approx(0.20, abs=0.02)
    assert [split_of(s) for s in reversed(shas)] == [split_of(s) for s in shas][::-1]


# --------------------------------------------------------------------------- real runs on tiny photos


def boot(colour: tuple[int, int, int], seed: int, size: int = 96) -> bytes:
    """A JPEG of a tall shoe-ish shape (a boot, not a sneaker) of ``colour``."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    w, h = rng.uniform(0.2, 0.3) * size, rng.uniform(0.55, 0.8) * size
    x, y = rng.uniform(0.05, 0.5 * size), rng.uniform(0.05, 0.95 * size - h)
    shade = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-20, 21, 3), 0, 255))
    draw.rectangle([x, y, x + w, y + h], fill=shade)
    draw.rectangle([x, y + 0.85 * h, x + 2.2 * w, y + h], fill=shade)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def make_negatives(root: Path, per_group: int = 14) -> Path:
    """``root/sneakers/<group>`` (blobs of colours no class has) and ``root/not_sneakers/<group>`` (boots)."""
    for k, (group, colour) in enumerate(SNEAKER_GROUPS.items()):
        (root / "sneakers" / group).mkdir(parents=True, exist_ok=True)
        for i in range(per_group):
            (root / "sneakers" / group / f"{i}.jpg").write_bytes(photo(colour, 500_000 + k * 1000 + i))
    for k, (group, colour) in enumerate(SHOE_GROUPS.items()):
        (root / "not_sneakers" / group).mkdir(parents=True, exist_ok=True)
        for i in range(per_group):
            (root / "not_sneakers" / group / f"{i}.jpg").write_bytes(boot(colour, 600_000 + k * 1000 + i))
    return root


@pytest.fixture(scope="module")
def negatives_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_negatives(tmp_path_factory.mktemp("negatives") / "other-shoes")


@pytest.fixture(scope="module")
def open_model(tmp_path_factory: pytest.TempPathFactory, negatives_dir: Path) -> Path:
    """A head-mode model trained with ``--negatives`` (Vans held out by default)."""
    base = tmp_path_factory.mktemp("open-head")
    data = make_dataset(base / "data", per_class=16)
    config = TrainConfig(data_dir=str(data), out_dir=str(base / "model"), mode="head", epochs=60, image_size=SIZE,
                         cache_dir=str(base / "cache"), threads=1, progress=False, aug_views=1,
                         negatives=str(negatives_dir))
    return Path(run_training(config))


def strings(value: object) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_training_with_negatives_adds_two_outputs_that_are_never_classes(open_model: Path) -> None:
    meta = artifacts.read_model_json(open_model)
    assert [c["label"] for c in meta["classes"]] == sorted(COLOURS)  # the known models only
    block = meta["open_set"]
    assert block["method"] == "background outputs" and block["outputs"] == list(OPEN_SET_OUTPUTS)
    counts = block["negatives"]["counts"]
    assert counts["sneakers"]["vans"] == {HELDOUT: 14} and set(counts["not_sneakers"]) == set(SHOE_GROUPS)
    assert sum(counts["sneakers"]["dunks"].values()) == 14 and "heldout" not in counts["sneakers"]["dunks"]
    assert block["negatives"]["folder"] == "other-shoes" and "split_rule" in block["negatives"]
    head = torch.load(open_model / "head.pt", weights_only=False)
    assert head["n_classes"] == 5 and head["head"]["fc.weight"].shape[0] == 5
    assert np.load(open_model / "centroids.npy").shape[0] == 3

    th = meta["thresholds"]
    assert 0 < th["open"] < 1 and th["calibration"]["open_quantile"] == 0.02
    assert set(th["calibration"]["val_negatives"]) <= {"dunks", "pumas", "boots", "clogs"}  # never Vans
    rates = meta["metrics"]["negatives"]
    assert set(rates) == {"val", "test", HELDOUT}
    assert set(rates[HELDOUT]["groups"]) == {"vans"} and "vans" not in rates["test"]["groups"]
    assert rates["test"]["kinds"]["sneakers"]["n"] == sum(c.get("test", 0) for c in counts["sneakers"].values())
    for entry in rates["test"]["groups"].values():
        assert sum(entry["verdicts"].values()) == pytest.approx(1.0)
    # the model learnt something: unknown sneakers mostly not named as a known model, test sneakers mostly named
    assert rates["test"]["kinds"]["sneakers"]["verdicts"]["sneaker"] <= 0.25
    assert meta["metrics"]["test"]["verdicts"]["sneaker"] >= 0.6 and meta["metrics"]["test"]["top1"] >= 0.8

    carried = Carried.load(open_model, meta)
    negatives = carried.frame[carried.negative_rows()]
    assert set(negatives["label"]) == set(OPEN_SET_OUTPUTS) and "vans" not in set(negatives["group"])
    assert set(negatives["group"]) == {"dunks", "pumas", *SHOE_GROUPS}
    assert carried.labels() == sorted(COLOURS) and set(carried.select(split="test").frame["label"]) <= set(COLOURS)
    assert meta["carried"]["negatives_per_split"]["train"] == counts_of(counts, "train")
    assert meta["config"]["negatives"] == "other-shoes"  # the folder's name, no path
    assert not [s for s in strings(meta) if s.startswith("/")]
    readme = (open_model / "README.md").read_text()
    assert "--negatives other-shoes" in readme and "heldout sneakers (14)" in readme


def counts_of(counts: dict, split: str) -> int:
    return sum(c.get(split, 0) for groups in counts.values() for c in groups.values())


def test_both_backends_serve_the_open_outputs_alike(open_model: Path, negatives_dir: Path, tmp_path: Path) -> None:
    photos = [negatives_dir / "sneakers" / "vans" / f"{i}.jpg" for i in range(14)] \
        + [negatives_dir / "not_sneakers" / "boots" / f"{i}.jpg" for i in range(6)] \
        + [photo(colour, 90_000 + i) for i, colour in enumerate(COLOURS.values())]
    shoes_only = {"footwear": 0.0}  # the generated photos are no ImageNet footwear: let the open rule speak
    onnx = Predictor.load(open_model, backend="onnx", cache_dir=tmp_path, threads=1, thresholds=shoes_only)
    eager = Predictor.load(open_model, backend="torch", threads=1, thresholds=shoes_only)
    assert onnx.n_open == eager.n_open == 2 and onnx.labels == sorted(COLOURS)

    a, b = onnx.predict(photos, k=3), eager.predict(photos, k=3)
    raw_a, raw_b = onnx.predict_arrays(photos)[0], eager.predict_arrays(photos)[0]
    assert raw_a.shape == (23, 5) and np.allclose(raw_a, raw_b, atol=1e-4)
    for pa, pb in zip(a, b, strict=True):
        assert (pa.verdict, pa.detail) == (pb.verdict, pb.detail)
        assert [g.label for g in pa.top] == [g.label for g in pb.top]
        assert {g.label for g in pa.top} == set(COLOURS)  # guesses are known models, never "_other_..."
        assert sum(g.score for g in pa.top) == pytest.approx(1.0, abs=1e-5)  # renormalised over the 3 classes
    verdicts_ = [(p.verdict, p.detail) for p in a]
    vans = [v for v, _ in verdicts_[:14]]  # held out: teal, between the green and blue classes
    assert vans.count("unknown_sneaker") >= 6 and vans.count("unknown_sneaker") > vans.count("sneaker")
    assert verdicts_[14:20] == [("not_sneaker", "other_footwear")] * 6  # boots: another shoe
    assert [v for v, _ in verdicts_[20:]] == ["sneaker"] * 3
    answer = a[0].to_dict()
    assert answer["detail"] == a[0].detail and answer["verdict"] == a[0].verdict


def test_predict_and_eval_report_the_open_set(open_model: Path, negatives_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(tmp_path / "data-dir"))
    assert cli_main(["predict", str(negatives_dir / "not_sneakers" / "boots"), "--model", str(open_model),
                     "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 14 and all("detail" in row for row in rows)
    assert {g["label"] for row in rows for g in row["top"]} <= set(COLOURS)

    data = open_model.parent / "data"
    assert cli_main(["eval", str(data), "--model", str(open_model), "--split", "test", "--negatives",
                     str(negatives_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["negatives"]
    assert report["holdout_groups"] == ["vans", "reebok"] and report["split"] == "test"
    assert set(report[HELDOUT]["groups"]) == {"vans"} and "vans" not in report["evaluated"]["groups"]
    recorded = artifacts.read_model_json(open_model)["metrics"]["negatives"]
    for part, split in (("evaluated", "test"), (HELDOUT, HELDOUT)):  # what training measured, served the same way
        for group, entry in recorded[split]["groups"].items():
            served = report[part]["groups"][group]
            assert served["n"] == entry["n"]
            for verdict, rate in entry["verdicts"].items():
                assert served["verdicts"][verdict] == pytest.approx(rate, abs=1.01 / entry["n"])
    assert cli_main(["eval", str(data), "--model", str(open_model), "--negatives", str(negatives_dir)]) == 0
    assert "held-out vans (14)" in capsys.readouterr().out


def test_a_short_finetune_with_negatives_serves_a_gated_graph(negatives_dir: Path, tmp_path: Path) -> None:
    from ml.artifacts import load_net
    from ml.backbones import create_backbone
    from ml.train import build_finetune_model

    data = make_dataset(tmp_path / "data", per_class=6)
    base = dict(data_dir=str(data), backbone="efficientnet_lite0", mode="finetune", epochs=1, image_size=SIZE,
                batch_size=8, threads=1, progress=False, trainable_stages=2, negatives=str(negatives_dir),
                holdout_groups=["vans", "clogs"])
    model_dir = Path(run_training(TrainConfig(out_dir=str(tmp_path / "ft"), **base)))

    meta = artifacts.read_model_json(model_dir)
    assert meta["backbone"]["imagenet_branch"] and meta["open_set"]["negatives"]["holdout_groups"] == ["vans", "clogs"]
    assert set(meta["metrics"]["negatives"][HELDOUT]["groups"]) == {"vans", "clogs"}
    assert "--negatives other-shoes --holdout-groups vans,clogs" in (model_dir / "README.md").read_text()
    assert load_net(model_dir).head.fc.out_features == 5
    photos = [negatives_dir / "not_sneakers" / "clogs" / "0.jpg", negatives_dir / "sneakers" / "vans" / "0.jpg",
              photo(COLOURS["air_jordan_1"], 1)]
    onnx = Predictor.load(model_dir, backend="onnx", cache_dir=tmp_path / "cache", threads=1)
    eager = Predictor.load(model_dir, backend="torch", threads=1)
    assert [p.name.split(".", 1)[1] for p in (tmp_path / "cache").glob("*.onnx")] == ["gated.onnx"]
    probs_a, fw_a, _ = onnx.predict_arrays(photos)
    probs_b, fw_b, _ = eager.predict_arrays(photos)
    assert probs_a.shape == (3, 5) and np.allclose(probs_a, probs_b, atol=1e-4) and np.allclose(fw_a, fw_b, atol=1e-4)
    assert [(p.verdict, p.detail) for p in onnx.predict(photos)] == \
        [(p.verdict, p.detail) for p in eager.predict(photos)]

    # a run warm started from it keeps its rows by name: the open-set outputs too
    cfg = TrainConfig(out_dir=str(tmp_path / "next"), init_from=str(model_dir), **base)
    outputs = ["air_jordan_4", "air_jordan_1", *OPEN_SET_OUTPUTS]
    warm = build_finetune_model(cfg.resolved(create_backbone("efficientnet_lite0", pretrained=False)), outputs)
    source = load_net(model_dir).head.fc.weight
    rows = artifacts.head_outputs(meta)
    for i, name in enumerate(outputs):
        assert torch.allclose(warm.head.fc.weight[i], source[rows.index(name)])


def test_a_retrain_keeps_the_open_outputs_and_recalibrates_them(open_model: Path, tmp_path: Path) -> None:
    rows = []
    (tmp_path / "db").mkdir()
    for i in range(12):
        data = photo(YELLOW, 77_000 + i)
        (tmp_path / "db" / f"{i}.jpg").write_bytes(data)
        rows.append({"path": str(tmp_path / "db" / f"{i}.jpg"), "label": "yellow_one",
                     "sha1": hashlib.sha1(data).hexdigest(), "split": "test" if i < 3 else "val" if i < 5 else "train"})
    base_meta = artifacts.read_model_json(open_model)
    base_carried = Carried.load(open_model, base_meta)

    out = retrain_head(open_model, pd.DataFrame(rows), tmp_path / "cand",
                       settings=RetrainSettings(steps=150, cache_dir=tmp_path / "cache"))

    meta = artifacts.read_model_json(out)
    assert [c["label"] for c in meta["classes"]] == [*sorted(COLOURS), "yellow_one"]
    assert meta["open_set"] == base_meta["open_set"]
    assert artifacts.head_outputs(meta) == [*sorted(COLOURS), "yellow_one", *OPEN_SET_OUTPUTS]
    assert torch.load(out / "head.pt", weights_only=False)["n_classes"] == 6
    th = meta["thresholds"]
    assert 0 < th["open"] < 1 and set(th["calibration"]["val_negatives"]) <= {"dunks", "pumas", "boots", "clogs"}
    assert set(meta["metrics"]["negatives"]) == {"val", "test"}  # held-out groups are never carried
    carried = Carried.load(out, meta)
    columns = ["sha1", "label", "group", "split", "view"]
    kept = carried.frame[carried.negative_rows()][columns].reset_index(drop=True)
    assert kept.equals(base_carried.frame[base_carried.negative_rows()][columns].reset_index(drop=True))

    # the open rows start as the base head's; a new class starts from its photos
    base_head = artifacts.load_head(open_model, base_meta)
    start = warm_start(base_head, artifacts.head_outputs(meta), artifacts.head_outputs(base_meta), carried)
    assert torch.equal(start.fc.weight[4:], base_head.fc.weight[3:]) and torch.equal(start.fc.weight[:3],
                                                                                     base_head.fc.weight[:3])
    # the promotion gate ranks classes only: its probabilities are over the 4 classes
    test_rows = carried.select(split="test", view="center").frame.assign(path="")
    probs, classes = score_rows(out, test_rows, tmp_path / "cache")
    assert probs.shape == (len(test_rows), 4) and np.allclose(probs.sum(1), 1, atol=1e-5) and len(classes) == 4
    guess = Predictor.load(out, cache_dir=tmp_path / "onnx").predict(photo(YELLOW, 99_999))[0]
    assert guess.best.label == "yellow_one" and guess.verdict in {"sneaker", "unsure"}


def test_carrying_a_dataset_again_keeps_the_negatives(open_model: Path, tmp_path: Path) -> None:
    from ml.retrain import carry_dataset

    copy = tmp_path / "model"
    shutil.copytree(open_model, copy)
    before = Carried.load(copy, artifacts.read_model_json(copy))

    carry_dataset(copy, open_model.parent / "data", tmp_path / "cache")

    after = Carried.load(copy, artifacts.read_model_json(copy))
    assert after.frame[after.negative_rows()]["sha1"].tolist() == before.frame[before.negative_rows()]["sha1"].tolist()
    assert len(after) == len(before)


def test_openset_gives_a_model_the_open_outputs_without_a_finetune(
    tmp_path_factory: pytest.TempPathFactory, negatives_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    base = shared_model(tmp_path_factory)  # trained without negatives
    untouched = tree_digest(base)
    base_meta = artifacts.read_model_json(base)
    assert "open_set" not in base_meta
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(tmp_path / "data-dir"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "open"

    assert cli_main(["openset", str(base), "--negatives", str(negatives_dir), "--out", str(out), "--steps", "150",
                     "--no-progress"]) == 0

    printed = capsys.readouterr().out
    assert "heldout: vans (14)" in printed and str(out) in printed
    assert tree_digest(base) == untouched
    meta = artifacts.read_model_json(out)
    assert meta["open_set"]["outputs"] == list(OPEN_SET_OUTPUTS) and meta["config"]["mode"] == "openset"
    assert meta["config"]["open_quantile"] == 0.02 and meta["thresholds"]["open"] > 0
    assert [c["label"] for c in meta["classes"]] == [c["label"] for c in base_meta["classes"]]
    assert not [s for s in strings(meta) if s.startswith("/")]
    assert set(meta["metrics"]["negatives"]) == {"val", "test", HELDOUT}
    assert meta["metrics"]["negatives"][HELDOUT]["kinds"]["sneakers"]["verdicts"]["sneaker"] <= 0.5
    assert meta["metrics"]["test"]["top1"] >= 0.8
    carried = Carried.load(out, meta)
    base_carried = Carried.load(base, base_meta)
    assert set(carried.select().frame["sha1"]) == set(base_carried.frame["sha1"])  # every class photo kept
    negatives = carried.frame[carried.negative_rows()]
    assert set(negatives["view"]) == {"center", "flip"} and "vans" not in set(negatives["group"])
    assert "features it carried plus a negatives folder's" in (out / "README.md").read_text()

    shoes_only = {"footwear": 0.0}
    photos = [negatives_dir / "sneakers" / "vans" / f"{i}.jpg" for i in range(4)] + [photo(YELLOW, 5)]
    onnx = Predictor.load(out, backend="onnx", cache_dir=tmp_path / "onnx", threads=1, thresholds=shoes_only)
    eager = Predictor.load(out, backend="torch", threads=1, thresholds=shoes_only)
    assert np.allclose(onnx.predict_arrays(photos)[0], eager.predict_arrays(photos)[0], atol=1e-4)
    assert [(p.verdict, p.detail) for p in onnx.predict(photos)] == \
        [(p.verdict, p.detail) for p in eager.predict(photos)]


# --------------------------------------------------------------------------- the benches on an open-set model


def test_bench_accuracy_ranks_the_known_classes_only(open_model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from bench import accuracy
    from ml.evaluate import model_split

    monkeypatch.setattr(accuracy, "ROOT", tmp_path)  # its ONNX cache under tmp_path, not the repository's var/
    data = open_model.parent / "data"
    frame = model_split(open_model, data)
    test = frame[frame["split"] == "test"]
    assert set(frame["drawn_split"]) == {"train", "val", "test"} and len(test) == 6  # 16 photos a class: 2 test
    predictor = Predictor.load(open_model, backend="onnx", cache_dir=tmp_path / "onnx", threads=1)
    raw = predictor.predict_arrays(list(test["path"]))[0]

    probs = accuracy.class_probs(predictor, list(test["path"]))
    mirrored = accuracy.class_probs(predictor, list(test["path"]), tta=True)

    assert raw.shape == (6, 5) and probs.shape == mirrored.shape == (6, 3)
    assert np.allclose(probs, known_probs(raw, 2)) and np.allclose(mirrored.sum(1), 1, atol=1e-5)
    # an open output above every class is never the answer: top-1 and top-3 rank the classes
    loud = np.array([[0.10, 0.25, 0.05, 0.40, 0.20], [0.02, 0.01, 0.07, 0.20, 0.70]], dtype=np.float32)
    fake = SimpleNamespace(n_open=2, predict_arrays=lambda images, batch_size: (loud, None, None))
    assert list(accuracy.class_probs(fake, ["a", "b"]).argmax(1)) == [1, 2]  # type: ignore[arg-type]

    result = accuracy.evaluate_model(open_model, data, threads=1)

    figures = result["sets"]["all"]
    metrics = artifacts.read_model_json(open_model)["metrics"]["test"]
    assert figures["classes"] == 3 and figures["images"] == metrics["n"] == 6
    assert figures["top3_among_all"] == figures["top3_restricted"] == 1.0  # 3 classes: any top-3 holds the truth
    assert figures["top1_among_all"] == pytest.approx(metrics["top1"], abs=1.01 / 6)
    assert result["audit_flagged_test_images"] == 0 and list(result["sets"]) == list(accuracy.CLASS_SETS)

    # a test photo the label audit set aside: out of every split, back in the "as scraped" row
    audited = tmp_path / "audited"
    shutil.copytree(open_model, audited)
    flagged = test["sha1"].iloc[0]
    pd.DataFrame({"sha1": [flagged]}).to_csv(audited / "audit.csv", index=False)
    split = model_split(audited, data).set_index("sha1")
    assert (split.loc[flagged, "split"], split.loc[flagged, "drawn_split"]) == ("audit", "test")
    assert (split["split"] == "test").sum() == 5
    result = accuracy.evaluate_model(audited, data, threads=1)
    assert result["audit_flagged_test_images"] == 1
    assert result["sets"]["all"]["images"] == 5 and result["sets"]["all, as scraped"]["images"] == 6


def test_bench_addclass_without_class_keeps_the_open_outputs(open_model: Path, negatives_dir: Path,
                                                              tmp_path: Path) -> None:
    from bench.addclass import without_class

    base_meta = artifacts.read_model_json(open_model)
    out = without_class(open_model, "air_jordan_3", tmp_path / "without")

    meta = artifacts.read_model_json(out)
    assert artifacts.head_outputs(meta) == ["air_jordan_1", "air_jordan_4", *OPEN_SET_OUTPUTS]
    assert meta["open_set"] == base_meta["open_set"] and not meta["files"].get("onnx")
    base_head, head = torch.load(open_model / "head.pt", weights_only=False), torch.load(out / "head.pt",
                                                                                          weights_only=False)
    assert head["n_classes"] == 4
    for name, value in head["head"].items():  # rows 0, 2 and the two open rows of the base head
        assert torch.equal(value, base_head["head"][name][[0, 2, 3, 4]])
    assert np.array_equal(np.load(out / "centroids.npy"), np.load(open_model / "centroids.npy")[[0, 2]])
    carried, base_carried = Carried.load(out, meta), Carried.load(open_model, base_meta)
    assert carried is not None and base_carried is not None
    assert carried.labels() == ["air_jordan_1", "air_jordan_4"]
    assert carried.frame[carried.negative_rows()]["sha1"].tolist() == \
        base_carried.frame[base_carried.negative_rows()]["sha1"].tolist()

    # served, the two models' outputs differ only by the class taken out: the same logits, one fewer row
    photos = [negatives_dir / "sneakers" / "vans" / "0.jpg", negatives_dir / "not_sneakers" / "boots" / "0.jpg",
              photo(COLOURS["air_jordan_4"], 4)]
    before = Predictor.load(open_model, backend="torch", threads=1).predict_arrays(photos)[0]
    smaller = Predictor.load(out, backend="onnx", cache_dir=tmp_path / "onnx", threads=1)
    after = smaller.predict_arrays(photos)[0]
    kept = before[:, [0, 2, 3, 4]]
    assert smaller.n_open == 2 and after.shape == (3, 4)
    assert np.allclose(after, kept / kept.sum(1, keepdims=True), atol=1e-4)
