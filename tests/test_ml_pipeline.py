"""Train -> model directory -> Predictor (ONNX and PyTorch) -> CLI, on tiny generated data.

Real components throughout: real image files, the real pretrained EfficientNet-Lite0 from its
PyPI package (its ImageNet head is what says "not a sneaker"), real ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from bot.cli import main as cli_main
from ml.artifacts import load_net, read_model_json
from ml.backbones import Preprocessing, create_backbone
from ml.errors import BadImage
from ml.predictor import Predictor
from ml.train import TrainConfig, build_finetune_model, run_training
from ml.transforms import eval_transform
from ml.verdicts import known_sneaker

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "models" / "starter"
SHAPES = {"red_disc": "red", "blue_square": "blue", "green_bar": "green"}


def shape_image(label: str, seed: int) -> Image.Image:
    """A coloured shape at a random place and size on a light background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (112, 88), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    x, y, s = int(rng.integers(5, 50)), int(rng.integers(5, 30)), int(rng.integers(30, 50))
    colour = SHAPES[label]
    if label == "red_disc":
        draw.ellipse((x, y, x + s, y + s), fill=colour)
    elif label == "blue_square":
        draw.rectangle((x, y, x + s, y + s), fill=colour)
    else:
        draw.rectangle((x, y, x + s + 20, y + s // 3), fill=colour)
    return image


def make_shapes_dataset(root: Path, per_class: int = 12) -> Path:
    for k, label in enumerate(SHAPES):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(label, k * 1000 + i).save(root / label / f"{i}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def head_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ml-pipeline")
    data = make_shapes_dataset(base / "data")
    config = TrainConfig(data_dir=str(data), out_dir=str(base / "model"), mode="head", epochs=60, image_size=64,
                         cache_dir=str(base / "cache"), threads=1, progress=False, aug_views=1)
    return Path(run_training(config))


def test_head_model_directory_is_self_describing(head_model: Path) -> None:
    meta = read_model_json(head_model)
    assert meta["format_version"] == 1
    assert meta["backbone"]["name"] == "efficientnet_lite0" and not meta["backbone"]["finetuned"]
    assert [c["label"] for c in meta["classes"]] == sorted(SHAPES)
    assert meta["classes"][0]["display_name"] == "Blue Square"
    assert meta["preprocessing"]["size"] == 64
    assert 0 < meta["thresholds"]["footwear"] <= 0.3 and 0 <= meta["thresholds"]["unsure"] <= 1
    assert {"val", "test"} <= set(meta["metrics"]) and meta["metrics"]["test"]["n"] > 0
    assert meta["config"]["mode"] == "head" and meta["data"]["images"] == 36
    assert meta["onnx_check"]["max_abs_diff"]["probs"] < 1e-4
    assert meta["files"]["centroids"] == "centroids.npy"
    assert np.load(head_model / "centroids.npy").shape == (3, 1280)
    assert 0.65 <= meta["thresholds"]["familiar"] <= 1
    for name in ("head.pt", "model.onnx", "README.md", "plots/curves.png", "plots/confusion.png",
                 "plots/examples.png"):
        assert (head_model / name).is_file(), name
    assert "top-1" in (head_model / "README.md").read_text()


def test_model_reloads_and_predicts_with_both_backends(head_model: Path, tmp_path: Path) -> None:
    images = [shape_image(label, 50_000 + i) for i, label in enumerate(SHAPES)]
    onnx = Predictor.load(head_model, backend="onnx", cache_dir=tmp_path, threads=1)
    eager = Predictor.load(head_model, backend="torch", threads=1)
    a, b = onnx.predict(images, k=2), eager.predict(images, k=2)
    assert len(a) == len(b) == 3
    for pa, pb in zip(a, b, strict=False):
        assert len(pa.top) == 2
        assert [g.label for g in pa.top] == [g.label for g in pb.top]
        assert np.allclose([g.score for g in pa.top], [g.score for g in pb.top], atol=1e-4)
        assert pa.verdict == pb.verdict
        assert abs(pa.footwear_score - pb.footwear_score) < 1e-4
        assert pa.familiarity == pytest.approx(pb.familiarity, abs=1e-4)
        assert np.linalg.norm(pa.embedding) == pytest.approx(1.0, abs=1e-4)
    # the tiny head learned the shapes: most synthetic test shapes come out right
    assert sum(p.top[0].label == label for p, label in zip(a, SHAPES, strict=False)) >= 2
    vectors = onnx.embed(images)
    assert vectors.shape == (3, 1280) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # familiarity is the cosine to the nearest of the shipped class centroids
    centroids = np.load(head_model / "centroids.npy").astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    assert [p.familiarity for p in a] == pytest.approx(list((vectors @ centroids.T).max(1)), abs=1e-4)
    assert onnx.predict_arrays(images)[2] == pytest.approx([p.familiarity for p in a], abs=1e-5)
    assert onnx.display_name("red_disc") == "Red Disc"
    assert onnx.info.backbone == "efficientnet_lite0"


def test_predictor_takes_bytes_and_paths_and_rejects_garbage(head_model: Path, tmp_path: Path) -> None:
    predictor = Predictor.load(head_model, backend="onnx", cache_dir=tmp_path, threads=1)
    path = tmp_path / "disc.png"
    shape_image("red_disc", 7).save(path)
    by_path, by_bytes = predictor.predict([path, path.read_bytes()])
    assert by_path.top[0].label == by_bytes.top[0].label
    with pytest.raises(BadImage):
        predictor.predict([b"not an image"])


def test_finetune_checkpoints_and_resume(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", per_class=8)
    config = TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "ft"), backbone="simple_cnn", mode="finetune",
                         epochs=2, image_size=64, batch_size=8, threads=1, progress=False)
    model_dir = Path(run_training(config))
    meta = read_model_json(model_dir)
    assert len(meta["history"]) == 2
    assert meta["footwear"]["method"] == "centroid"  # simple_cnn has no ImageNet head
    assert (model_dir / "backbone.pt").is_file() and (model_dir / "checkpoints" / "last.pt").is_file()
    head_before = torch.load(model_dir / "head.pt", weights_only=False)["head"]
    # a resume of a finished run only finalises again, from the same best weights; a checkpoint
    # written by other code (an option this version does not have) still resumes
    last = model_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    torch.save({**state, "config": {**state["config"], "option_of_other_code": 1.0}}, last)
    again = Path(run_training(TrainConfig(data_dir=str(data), out_dir=str(model_dir), mode="finetune")
                              , resume=True))
    head_after = torch.load(again / "head.pt", weights_only=False)["head"]
    assert all(torch.equal(head_before[k], head_after[k]) for k in head_before)
    predictor = Predictor.load(model_dir, backend="torch", threads=1)
    assert predictor.predict([shape_image("green_bar", 1)])[0].verdict in {"sneaker", "unsure", "not_sneaker"}


def test_training_on_a_subset_of_the_classes(tmp_path: Path) -> None:
    from ml.errors import DatasetError

    data = make_shapes_dataset(tmp_path / "data", per_class=6)
    base = dict(data_dir=str(data), backbone="simple_cnn", mode="finetune", epochs=1, image_size=64,
                batch_size=8, threads=1, progress=False)
    model_dir = Path(run_training(TrainConfig(out_dir=str(tmp_path / "m"), classes=["red_disc", "green_bar"],
                                              augment="strong", **base)))
    meta = read_model_json(model_dir)
    assert [c["label"] for c in meta["classes"]] == ["green_bar", "red_disc"]
    assert "--classes red_disc,green_bar --augment strong" in (model_dir / "README.md").read_text()  # made again
    assert meta["data"]["splits"]["train"] + meta["data"]["splits"]["val"] + meta["data"]["splits"]["test"] == 12
    from ml.transforms import augmentation

    views = augmentation("strong", Preprocessing(size=48, mean=(0.5,) * 3, std=(0.5,) * 3))
    image = shape_image("red_disc", 3)
    first, second = views(image), views(image)
    assert first.shape == (3, 48, 48) and not torch.equal(first, second)  # random views
    with pytest.raises(ValueError, match="strong"):
        augmentation("wild", Preprocessing(size=48))
    with pytest.raises(DatasetError, match="purple_star"):
        run_training(TrainConfig(out_dir=str(tmp_path / "n"), classes=["red_disc", "purple_star"], **base))


def test_label_audit_sets_photos_aside_from_every_split_and_shows_them(tmp_path: Path) -> None:
    from ml.data import AUDIT_SPLIT
    from ml.train import prepare_data

    data = make_shapes_dataset(tmp_path / "data", per_class=10)
    base = dict(data_dir=str(data), backbone="simple_cnn", mode="finetune", epochs=1, image_size=64,
                batch_size=8, threads=1, progress=False)
    plain, _, _ = prepare_data(TrainConfig(out_dir=str(tmp_path / "x"), **base))
    flagged = pd.concat([plain[plain["split"] == split].head(n)
                         for split, n in (("train", 2), ("val", 1), ("test", 1))])
    audit = tmp_path / "flagged.csv"
    flagged[["path", "sha1", "label"]].to_csv(audit, index=False)

    frame, classes, snapshot = prepare_data(TrainConfig(out_dir=str(tmp_path / "x"), exclude_file=str(audit), **base))
    assert snapshot["excluded_by_audit"] == {"train": 2, "val": 1, "test": 1}
    assert set(frame.loc[frame["split"] == AUDIT_SPLIT, "sha1"]) == set(flagged["sha1"])
    kept = frame[frame["split"] != AUDIT_SPLIT].set_index("sha1")["split"]
    # others keep their split
    assert kept.equals(plain.set_index("sha1")["split"].drop(flagged["sha1"]).loc[kept.index])
    assert classes == sorted(SHAPES)

    model_dir = Path(run_training(TrainConfig(out_dir=str(tmp_path / "m"), exclude_file=str(audit), **base)))
    meta = read_model_json(model_dir)
    assert meta["metrics"]["test"]["n"] == (plain["split"] == "test").sum() - 1
    assert meta["data"]["audit_review"]["images"] == 4
    assert 0 <= meta["data"]["audit_review"]["model_agrees_with_folder"] <= 4
    assert (model_dir / "plots" / "audit.png").is_file() and (model_dir / "audit.csv").is_file()
    readme = (model_dir / "README.md").read_text()
    assert "set aside by the label audit: 1 from test, 2 from train, 1 from val" in readme
    # `sneakerbot eval --split test` measures what the model's metrics measured
    from ml.evaluate import evaluate_dir, format_report

    report = evaluate_dir(Predictor.load(model_dir, backend="torch", threads=1), data, split="test")
    assert report["n"] == meta["metrics"]["test"]["n"] and report["set_aside_by_audit"] == 1
    assert report["top1"] == pytest.approx(meta["metrics"]["test"]["top1"], abs=1e-6)
    assert "left out 1 images the model's label audit set aside" in format_report(report)


def test_warm_start_copies_weights_and_matches_head_rows_by_class(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", per_class=6)
    base = dict(data_dir=str(data), backbone="simple_cnn", mode="finetune", epochs=1, image_size=64,
                batch_size=8, threads=1, progress=False)
    source = Path(run_training(TrainConfig(out_dir=str(tmp_path / "a"), **base)))
    trained = Predictor.load(source, backend="torch", threads=1)
    old_head = torch.load(source / "head.pt", weights_only=False)["head"]
    old_rows = {label: i for i, label in enumerate(trained.labels)}

    classes = ["zebra_stripe", "red_disc", "green_bar"]  # one new class, one dropped, order changed
    cfg = TrainConfig(out_dir=str(tmp_path / "b"), init_from=str(source), **base).resolved(
        create_backbone("simple_cnn", pretrained=False))
    model = build_finetune_model(cfg, classes)
    saved = torch.load(source / "backbone.pt", weights_only=False)["state_dict"]
    for key, value in model.backbone.state_dict().items():
        assert torch.allclose(value.float(), saved[key].float()), key
    for row, label in enumerate(classes):
        if label in old_rows:
            assert torch.allclose(model.head.fc.weight[row], old_head["fc.weight"][old_rows[label]].float())
        else:
            assert not torch.allclose(model.head.fc.weight[row], old_head["fc.weight"][0].float())

    other = TrainConfig(out_dir=str(tmp_path / "c"), init_from=str(source),
                        **{**base, "backbone": "efficientnet_lite0"})
    with pytest.raises(ValueError, match="backbone"):
        build_finetune_model(other.resolved(create_backbone("efficientnet_lite0", pretrained=False)), classes)


def test_warm_start_into_a_run_that_fine_tunes_more_blocks(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", per_class=4)
    base = dict(data_dir=str(data), backbone="efficientnet_lite0", mode="finetune", epochs=1, image_size=64,
                batch_size=6, threads=1, progress=False)
    source_dir = Path(run_training(TrainConfig(out_dir=str(tmp_path / "a"), trainable_stages=3, **base)))
    source = load_net(source_dir).backbone
    pretrained = create_backbone("efficientnet_lite0", pretrained=True)
    probe = create_backbone("efficientnet_lite0", pretrained=False)
    wider = TrainConfig(out_dir=str(tmp_path / "b"), trainable_stages=5, init_from=str(source_dir), **base)
    backbone = build_finetune_model(wider.resolved(probe), sorted(SHAPES)).backbone
    assert (source.split, backbone.split) == (14, 12)

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=False)
        return all(torch.equal(x.float(), y.float()) for x, y in pairs)

    blocks = [*pretrained.trunk, *pretrained.tail.blocks]
    assert same(backbone.tail.blocks[0], blocks[12]) and same(backbone.tail.blocks[1], blocks[13])  # newly trained
    assert same(backbone.tail.blocks[2], source.tail.blocks[0]) and same(backbone.tail.blocks[3], source.tail.blocks[1])
    assert same(backbone.tail.conv_head, source.tail.conv_head) and not same(source.tail.blocks[1], blocks[15])
    assert same(backbone.imagenet_tail.blocks[3], blocks[15])  # the footwear branch stays ImageNet's
    narrower = TrainConfig(out_dir=str(tmp_path / "c"), trainable_stages=2, init_from=str(source_dir), **base)
    with pytest.raises(ValueError, match="or more"):
        build_finetune_model(narrower.resolved(probe), sorted(SHAPES))


def test_distillation_keeps_the_frozen_branch_which_runs_apart_for_unknown_photos(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "data", per_class=6)
    config = TrainConfig(data_dir=str(data), out_dir=str(tmp_path / "m"), backbone="efficientnet_lite0",
                         mode="finetune", epochs=1, image_size=64, batch_size=6, threads=1, progress=False,
                         trainable_stages=3, distill_imagenet=1.0)
    model_dir = Path(run_training(config))
    meta = read_model_json(model_dir)
    assert meta["backbone"]["imagenet_branch"] and meta["footwear"]["method"] == "imagenet"
    assert meta["config"]["distill_imagenet"] == 1.0
    assert "--distill-imagenet 1" in (model_dir / "README.md").read_text()  # made again with the same option

    # the served graph runs the footwear branch only when a photo needs it; both backends agree with the whole network
    images = [shape_image(label, 70_000 + i) for i, label in enumerate(SHAPES)]
    onnx = Predictor.load(model_dir, backend="onnx", cache_dir=tmp_path / "cache", threads=1)
    eager = Predictor.load(model_dir, backend="torch", threads=1)
    assert [p.name.split(".", 1)[1] for p in (tmp_path / "cache").glob("*.onnx")] == ["gated.onnx"]
    net = load_net(model_dir).eval()
    batch = torch.stack([eval_transform(onnx.info.preprocessing)(im) for im in images])
    with torch.inference_mode():
        whole = [t.numpy() for t in net(batch)]
    for predictor in (onnx, eager):
        probs, footwear, familiarity = predictor.predict_arrays(images)
        assert np.allclose(probs, whole[0], atol=1e-4) and np.allclose(footwear, whole[2], atol=1e-4)
        predictor.thresholds.update(familiar=float(np.sort(familiarity)[1]) - 1e-4)  # two of the three are known
        known = known_sneaker(familiarity, predictor.thresholds, len(images))
        assert list(known).count(True) == 2
        # one photo at a time, as the bot sends them: the branch ran exactly for the photo it does not know
        singles = [predictor.predict([image])[0] for image in images]
        assert [a.footwear_score is None for a in singles] == list(known)
        for answer, score in zip(singles, footwear, strict=False):
            assert answer.footwear_score is None or abs(answer.footwear_score - score) < 1e-4
        # a batch runs it for every photo when one needs it, for none when all are known
        assert all(a.footwear_score is not None for a in predictor.predict(images))
        predictor.thresholds.update(familiar=float(familiarity.min()) - 1e-4)  # (graph and numpy round apart)
        assert all(a.footwear_score is None for a in predictor.predict(images))
        forward = [a.verdict for a in predictor.predict(images)]
        assert forward == [a.verdict for a in predictor.predict(images[::-1])][::-1]


@pytest.fixture(scope="module")
def sample_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos a package ships: skimage's cat, coffee cup and astronaut."""
    from skimage import data

    folder = tmp_path_factory.mktemp("samples")
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SNEAKERBOT_DATA_DIR for CLI runs: the starter's ONNX build is cached here once per module."""
    return tmp_path_factory.mktemp("sneakerbot-data")


def test_starter_model_says_not_sneaker_for_cat_cup_astronaut(sample_photos: Path, data_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(data_dir))  # the ONNX build cache goes here
    code = cli_main(["predict", str(sample_photos), "--model", str(STARTER), "--json"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(row["path"]).stem: row for row in rows}
    assert set(by_name) == {"chelsea", "coffee", "astronaut", "broken"}
    assert "error" in by_name["broken"]
    for name in ("chelsea", "coffee", "astronaut"):
        row = by_name[name]
        assert row["verdict"] == "not_sneaker", row
        assert len(row["top"]) == 3 and {"label", "score"} <= set(row["top"][0])


def test_predict_table_output(sample_photos: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(data_dir))
    cli_main(["predict", str(sample_photos / "coffee.png"), "--model", str(STARTER)])
    out = capsys.readouterr().out
    assert "coffee.png" in out and "not_sneaker" in out


def test_footwear_detector_rejects_non_footwear(sample_photos: Path, tmp_path: Path) -> None:
    from ml.footwear import FootwearDetector

    detector = FootwearDetector.create(cache_dir=tmp_path, image_size=96)
    photos = [Image.open(sample_photos / f"{n}.png") for n in ("chelsea", "coffee", "astronaut")]
    scores = detector.score(photos)
    assert scores.shape == (3,) and (scores >= 0).all() and (scores < detector.threshold).all()
    assert detector.is_footwear(photos[0]) is False


def test_distilling_a_trained_model_into_a_smaller_input(tmp_path: Path) -> None:
    from ml.teacher import Teacher, distillation_loss, student_view
    from ml.train import StepLoss

    data = make_shapes_dataset(tmp_path / "data", per_class=6)
    base = dict(data_dir=str(data), backbone="simple_cnn", mode="finetune", epochs=1, batch_size=8, threads=1,
                progress=False)
    big = Path(run_training(TrainConfig(out_dir=str(tmp_path / "big"), image_size=64, **base)))
    small = Path(run_training(TrainConfig(out_dir=str(tmp_path / "small"), image_size=32, teacher=str(big),
                                          teacher_weight=0.5, classes=["red_disc", "green_bar"], **base)))
    meta = read_model_json(small)
    assert meta["preprocessing"]["size"] == 32 and meta["config"]["teacher"] == str(big)
    assert f"--teacher {big} --teacher-weight 0.5" in (small / "README.md").read_text()  # made again the same way
    assert Predictor.load(small, backend="torch", threads=1).predict([shape_image("red_disc", 5)])[0].top

    # the teacher answers in the student's class order, at its own size; the student sees the same view smaller
    prep = Preprocessing.from_dict(meta["preprocessing"])
    teacher = Teacher(big, ["green_bar", "red_disc"], prep)
    images = torch.stack([eval_transform(prep.with_size(64))(shape_image(label, 9)) for label in SHAPES])
    net = load_net(big).eval()
    with torch.no_grad():
        whole = net.head(net.backbone(images))
    assert teacher.size == 64 and torch.allclose(teacher.logits(images), whole[:, [1, 2]])
    assert student_view(images, 32).shape == (3, 3, 32, 32) and student_view(images, 64) is images

    student = build_finetune_model(TrainConfig(out_dir=str(tmp_path / "x"), image_size=32, **base).resolved(
        create_backbone("simple_cnn", pretrained=False)), ["green_bar", "red_disc"]).eval()
    targets = torch.tensor([0, 1, 0])
    ce = torch.nn.CrossEntropyLoss()
    logits, loss = StepLoss(ce, 32, teacher=teacher, teacher_weight=0.5)(student, images, targets)
    expected = ce(logits, targets) + 0.5 * distillation_loss(logits, teacher.logits(images))
    assert logits.shape == (3, 2) and torch.allclose(loss, expected)
    assert float(distillation_loss(whole, whole)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.tensor([[4.0, 0, 0]]), torch.tensor([[0, 4.0, 0]]))) > 1.0

    with pytest.raises(ValueError, match="does not know blue_square"):
        Teacher(small, sorted(SHAPES), prep)
    with pytest.raises(ValueError, match="preprocessing"):
        Teacher(big, ["red_disc"], create_backbone("resnet18", pretrained=False).preprocessing)
    with pytest.raises(ValueError, match="multiples of 32, not 48"):
        TrainConfig(out_dir=str(tmp_path / "y"), image_size=48, **base).resolved(
            create_backbone("simple_cnn", pretrained=False))
