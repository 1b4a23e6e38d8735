"""Phone-photo degradations (``ml.degrade``), the ``phone`` train preset, and the two benches built
on them (``bench.robustness``, ``bench.openset``), on generated images and a tiny real model."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from ml import degrade
from ml.degrade import DEGRADATIONS, rng_for
from ml.preprocessing import Preprocessing
from ml.transforms import AUGMENTATIONS, PhoneDegradations, augmentation

SIZES = [(160, 120), (97, 64), (64, 200)]


def textured(size: tuple[int, int] = (160, 120), cell: int = 4) -> Image.Image:
    """A checkerboard (all detail) with a coloured disc: every pixel has a sharp edge nearby."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    board = (((xx // cell) + (yy // cell)) % 2 * 200 + 30).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, axis=-1))
    ImageDraw.Draw(image).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(200, 40, 40))
    return image


def grey(size: tuple[int, int] = (120, 90), level: int = 128) -> Image.Image:
    return Image.new("RGB", size, (level,) * 3)


def detail(image: Image.Image) -> np.ndarray:
    """Per pixel: the absolute difference to the right and lower neighbours (edges and texture)."""
    x = np.asarray(image.convert("L"), dtype=np.float32)
    return np.abs(np.diff(x, axis=1))[:-1] + np.abs(np.diff(x, axis=0))[:, :-1]


def apply(name: str, image: Image.Image, seed: int) -> Image.Image:
    fn = DEGRADATIONS.get(name) or (lambda img, rng: degrade.phone(img, rng, p=1.0))
    return fn(image, rng_for(seed, name))


# ----------------------------------------------------------------- ml.degrade


@pytest.mark.parametrize("name", [*DEGRADATIONS, "phone"])
def test_same_seed_same_pixels_other_seed_other_pixels(name: str) -> None:
    image = textured()
    first, again = apply(name, image, 1), apply(name, image, 1)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != image.tobytes()
    assert len({apply(name, image, seed).tobytes() for seed in range(2, 6)}) > 1


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", [*DEGRADATIONS, "phone"])
def test_size_and_mode_are_kept(name: str, size: tuple[int, int]) -> None:
    out = apply(name, textured(size), 3)
    assert out.size == size and out.mode == "RGB"


def test_registry_lists_the_phone_degradations_in_pipeline_order() -> None:
    assert list(DEGRADATIONS) == ["small", "perspective", "colour_cast", "low_light", "blur", "downscale", "jpeg"]


def test_rng_for_depends_on_seed_and_key_only() -> None:
    draw = rng_for(0, "abc:blur").random(4)
    assert np.array_equal(draw, rng_for(0, "abc:blur").random(4))
    assert not np.array_equal(draw, rng_for(1, "abc:blur").random(4))
    assert not np.array_equal(draw, rng_for(0, "abd:blur").random(4))


@pytest.mark.parametrize("seed", range(6))
def test_small_puts_the_photo_in_about_a_third_of_the_frame(seed: int) -> None:
    image = textured((200, 150))
    out = degrade.small(image, rng_for(seed, "small"))
    rows, cols = np.nonzero(detail(out) > 40)  # the textured photo: the background is smooth
    box = (np.ptp(rows) + 2) * (np.ptp(cols) + 2) / (image.width * image.height)
    assert 0.2 < box < 0.45  # 25-40 % of the area


@pytest.mark.parametrize("seed", range(4))
def test_perspective_fills_the_corners_and_keeps_the_middle(seed: int) -> None:
    image = textured((200, 150))
    out = np.asarray(degrade.perspective(image, rng_for(seed, "p")), dtype=np.float32)
    corner_detail = detail(Image.fromarray(out[:5, :5].astype(np.uint8))).mean()
    assert corner_detail < 15  # background, not the checkerboard
    middle = out[65:85, 90:110]
    assert np.abs(middle - np.asarray(image)[65:85, 90:110]).mean() < 60  # still the red disc, moved a little


@pytest.mark.parametrize("seed", range(4))
def test_blur_and_downscale_lose_detail(seed: int) -> None:
    image = textured((240, 180), cell=3)
    for name in ("blur", "downscale"):
        assert detail(DEGRADATIONS[name](image, rng_for(seed, name))).mean() < 0.7 * detail(image).mean(), name


def test_motion_blur_smears_along_its_direction_only() -> None:
    image = Image.new("RGB", (60, 60), "black")
    ImageDraw.Draw(image).line((30, 0, 30, 59), fill="white")  # a vertical line
    along = np.asarray(degrade.motion_blur(image, 9, np.pi / 2))  # vertical motion: the line stays put
    across = np.asarray(degrade.motion_blur(image, 9, 0.0))  # horizontal motion: the line spreads
    assert along[:, 30].min() > 200 and along[:, 26].max() == 0 and along[:, 34].max() == 0
    assert across[30, 26].min() > 0 and across[30, 30].max() < 100


@pytest.mark.parametrize("seed", range(4))
def test_low_light_darkens_and_adds_noise(seed: int) -> None:
    image = grey(level=160)
    out = np.asarray(degrade.low_light(image, rng_for(seed, "dark")), dtype=np.float32)
    assert out.mean() < 0.75 * 160
    assert out.std() > 1  # sensor noise on a flat grey


@pytest.mark.parametrize("seed", range(4))
def test_colour_cast_shifts_the_balance_of_a_grey(seed: int) -> None:
    out = np.asarray(degrade.colour_cast(grey(), rng_for(seed, "cast")), dtype=np.float32).mean((0, 1))
    assert abs(np.log(out[0] / out[2])) > 0.15  # warm or cool by at least 8 % per channel


@pytest.mark.parametrize("seed", range(4))
def test_jpeg_recompresses_at_a_quality_of_30_to_70(seed: int) -> None:
    image = textured()
    out = degrade.jpeg(image, rng_for(seed, "jpeg")).tobytes()

    def encoded(quality: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB").tobytes()

    assert [q for q in range(20, 96) if encoded(q) == out][0] in range(30, 71)


def test_phone_applies_a_random_subset() -> None:
    image = textured()
    outs = [degrade.phone(image, rng_for(seed, "phone")).tobytes() for seed in range(200)]
    untouched = sum(out == image.tobytes() for out in outs)
    assert 10 < untouched < 50  # with p = 0.25 about one in eight stays clean
    assert degrade.phone(image, rng_for(0, "x"), p=0.0).tobytes() == image.tobytes()


# ----------------------------------------------------------------- the phone train preset

PREP = Preprocessing(size=48, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_phone_preset_gives_random_views_reproducible_from_torch_seed() -> None:
    assert "phone" in AUGMENTATIONS
    views = augmentation("phone", PREP)
    image = textured()
    torch.manual_seed(7)
    first, second = views(image), views(image)
    torch.manual_seed(7)
    again = views(image)
    assert first.shape == (3, 48, 48) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_phone_degradations_draw_from_torch_and_pickle() -> None:
    step = pickle.loads(pickle.dumps(PhoneDegradations(p=1.0)))
    image = textured()
    torch.manual_seed(3)
    a, b = step(image), step(image)
    torch.manual_seed(3)
    assert step(image).tobytes() == a.tobytes() != b.tobytes()
    assert pickle.loads(pickle.dumps(augmentation("phone", PREP))) is not None


class Photos(Dataset):
    """Generated photos through a transform, as ``ml.data.ImageFrameDataset`` serves them."""

    def __init__(self, transform) -> None:  # noqa: ANN001
        self.transform = transform

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(textured((120 + 4 * i, 90)))


def test_phone_preset_runs_in_dataloader_workers_reproducibly() -> None:
    def batches() -> list[torch.Tensor]:
        loader = DataLoader(Photos(augmentation("phone", PREP)), batch_size=4, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(0))
        return list(loader)

    first, again = batches(), batches()
    assert [b.shape for b in first] == [torch.Size([4, 3, 48, 48])] * 2
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    views = torch.cat(first)
    assert len({v.numpy().tobytes() for v in views}) == len(views)


# ----------------------------------------------------------------- the benches, on a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny real model (``loop_support``: coloured shoe-like blobs, head mode at 96 px), its dataset,
    and a negatives folder of generated photos (held-out and other sneakers, other footwear)."""
    from loop_support import YELLOW, make_dataset, photo, train_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench-tiny")
    data = make_dataset(root / "data", per_class=12)
    model = train_model(data, root / "model", root / "cache", epochs=20)
    negatives = root / "negatives"
    groups = {"sneakers/vans": YELLOW, "sneakers/nike_other": (240, 130, 20), "not_sneakers/boots": (90, 60, 30)}
    for k, (group, colour) in enumerate(groups.items()):
        (negatives / group).mkdir(parents=True)
        for i in range(10):
            (negatives / group / f"{i}.jpg").write_bytes(photo(colour, 900_000 + 1000 * k + i))
    return {"data": data, "model": model, "negatives": negatives, "results": root / "results"}


@pytest.fixture
def onnx_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The benches' ONNX builds in a temporary folder, not the repository's var/."""
    from bench import robustness

    monkeypatch.setattr(robustness, "ONNX_CACHE", tmp_path / "onnx")


def test_robustness_bench_runs_every_condition(tiny: dict[str, Path], onnx_cache: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from bench import robustness

    args = ["--model", str(tiny["model"]), "--data", str(tiny["data"]), "--results", str(tiny["results"]),
            "--threads", "1", "--limit", "4"]
    assert robustness.main(args) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "top-1 drop <= 5 points" in out
    saved = json.loads(next(tiny["results"].glob("robustness-*.json")).read_text())
    rows = {row["condition"]: row for row in saved["rows"]}
    assert list(rows) == ["clean", *DEGRADATIONS, "phone"]
    assert saved["machine"].startswith("CPU:")
    assert all(r["images"] == 4 for r in rows.values())  # --limit: 4 of the 6 test photos
    assert rows["clean"]["top1_drop_points"] == 0 and all(0 <= r["top1"] <= r["top3"] <= 1 for r in rows.values())
    assert all(abs(sum(r["verdicts"].values()) - 1) < 1e-9 for r in rows.values())
    for name in rows:
        assert name in out


def test_openset_bench_reports_every_group_against_its_target(tiny: dict[str, Path], onnx_cache: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from bench import openset

    args = ["--model", str(tiny["model"]), "--data", str(tiny["data"]), "--negatives", str(tiny["negatives"]),
            "--results", str(tiny["results"]), "--threads", "1"]
    assert openset.main(args) == 0
    out = capsys.readouterr().out
    saved = json.loads(next(tiny["results"].glob("openset-*.json")).read_text())
    rows = {(r["section"], r["group"], r["measure"]): r for r in saved["rows"]}
    assert rows[("held-out other sneakers", "all", "not sneaker")]["images"] == 10  # vans, held out by default
    assert rows[("held-out other sneakers", "all", "not sneaker")]["target"] == ">= 80%"
    footwear = rows[("other footwear, test part", "all", "not sneaker")]
    assert footwear["target"] == ">= 90%" and footwear["images"] < 10  # the test part of boots only
    assert {m for (s, _, m) in rows if s == "known models, test split"} == {"rejected", "top-1", "top-3"}
    package = rows[("package sample photos", "all", "not_sneaker")]
    assert package["images"] >= 20 and package["target"] == "= 100%"
    assert saved["holdout_groups"] == ["vans", "reebok"]
    for row in saved["rows"]:
        if row["verdicts"] is not None:
            assert abs(sum(row["verdicts"].values()) - 1) < 1e-9
    assert "held-out other sneakers:" in out and "package sample photos:" in out
