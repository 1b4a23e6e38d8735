"""Images and datasets: awkward files are converted or reported, never crash an index."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data import index_dataset, split_dataset
from ml.errors import CorruptImage, ImageTooLarge, ImageTooSmall, NotAnImage
from ml.images import open_image


def noise_image(seed: int, size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 120x80 JPEG whose EXIF says "rotate 90 degrees": shown upright it is 80x120."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(noise_image(7, (120, 80)), exif=exif)


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (80, 80), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, 40, 80))  # left half red, right half index 0 = transparent
    buf = io.BytesIO()
    image.save(buf, "PNG", transparency=0)
    return buf.getvalue()


@pytest.fixture()
def messy_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    a, b = root / "class_a", root / "class_b"
    a.mkdir(parents=True)
    b.mkdir()
    for i in range(6):
        (a / f"ok_{i}.jpg").write_bytes(jpeg_bytes(noise_image(i)))
        (b / f"ok_{i}.jpg").write_bytes(jpeg_bytes(noise_image(100 + i)))
    good = jpeg_bytes(noise_image(999))
    (a / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (a / "notes.jpg").write_text("this is not an image")
    (a / "tiny.png").write_bytes(_png(noise_image(5, (10, 10))))
    (b / "cmyk.jpg").write_bytes(jpeg_bytes(noise_image(11, mode="CMYK")))
    (b / "palette.png").write_bytes(palette_png_with_transparency())
    (a / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    shared = jpeg_bytes(noise_image(4242))
    (a / "both.jpg").write_bytes(shared)
    (b / "both.jpg").write_bytes(shared)
    (a / "ok_0_copy.jpg").write_bytes((a / "ok_0.jpg").read_bytes())
    return root


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_index_reports_problems_and_keeps_good_images(messy_dataset: Path) -> None:
    index = index_dataset(messy_dataset, progress=False)
    frame, problems = index.frame, index.problems
    kinds = {Path(p).name + "@" + Path(p).parent.name: k
             for p, k in zip(problems["path"], problems["kind"], strict=False)}
    assert kinds == {
        "corrupt.jpg@class_a": "corrupt",
        "notes.jpg@class_a": "not_an_image",
        "tiny.png@class_a": "too_small",
        "both.jpg@class_a": "label_conflict",
        "both.jpg@class_b": "label_conflict",
        "ok_0_copy.jpg@class_a": "duplicate",
    }
    assert list(frame.columns) == ["path", "label", "sha1", "width", "height", "source"]
    names = {Path(p).name + "@" + lbl for p, lbl in zip(frame["path"], frame["label"], strict=False)}
    assert {"cmyk.jpg@class_b", "palette.png@class_b", "rotated.jpg@class_a", "ok_0.jpg@class_a"} <= names
    assert len(frame) == 6 + 6 + 3
    assert frame["sha1"].is_unique
    rotated = frame[frame["path"].str.endswith("rotated.jpg")].iloc[0]
    assert (rotated["width"], rotated["height"]) == (80, 120)  # EXIF orientation applied
    assert set(frame["source"]) == {"data"}


def test_open_image_converts_to_rgb(messy_dataset: Path) -> None:
    cmyk = open_image(messy_dataset / "class_b" / "cmyk.jpg")
    assert cmyk.mode == "RGB"
    palette = open_image((messy_dataset / "class_b" / "palette.png").read_bytes())
    assert palette.mode == "RGB"
    assert palette.getpixel((10, 10)) == (255, 0, 0)
    assert palette.getpixel((70, 10)) == (255, 255, 255)  # transparent composited on white
    rgba = Image.new("RGBA", (70, 70), (0, 0, 255, 0))
    assert open_image(rgba).getpixel((5, 5)) == (255, 255, 255)
    gray = open_image(_png(noise_image(3, (80, 80), mode="L")))
    assert gray.mode == "RGB"


def test_open_image_errors(messy_dataset: Path) -> None:
    with pytest.raises(NotAnImage):
        open_image(b"hello")
    with pytest.raises(CorruptImage):
        open_image(messy_dataset / "class_a" / "corrupt.jpg")
    with pytest.raises(ImageTooSmall):
        open_image(messy_dataset / "class_a" / "tiny.png")
    with pytest.raises(ImageTooLarge):
        open_image(jpeg_bytes(noise_image(1, (300, 300))), max_pixels=10_000)


def test_split_is_stratified_seeded_and_stable(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"path": f"{c}/{i}.jpg", "label": c, "sha1": f"{c}{i:04d}", "width": 100, "height": 100,
             "source": "x"} for c, n in (("a", 40), ("b", 20), ("c", 3)) for i in range(n)]
    frame = pd.DataFrame(rows)
    split = split_dataset(frame, seed=1, val=0.15, test=0.15)
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert counts.loc["a"].to_dict() == {"test": 6, "train": 28, "val": 6}
    assert counts.loc["b"].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert counts.loc["c"].to_dict() == {"test": 1, "train": 1, "val": 1}
    again = split_dataset(frame.sample(frac=1, random_state=3), seed=1)
    assert again.set_index("sha1")["split"].to_dict() == split.set_index("sha1")["split"].to_dict()
    other = split_dataset(frame, seed=2)
    assert (other["split"] != split["split"]).any()


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_eval_transform_gives_torchvision_numbers(resize: str) -> None:
    """The fast eval preset (PIL + NumPy) must feed the network exactly what training's torchvision one did:
    as a tensor (training code) and as the float32 array the Predictor feeds ONNX Runtime, without torch."""
    from skimage import data

    from ml.backbones import Preprocessing
    from ml.preprocessing import eval_array_transform
    from ml.transforms import eval_transform, torchvision_eval_transform

    prep = Preprocessing(size=96, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=resize)
    fast, as_array, reference = eval_transform(prep), eval_array_transform(prep), torchvision_eval_transform(prep)
    photo = Image.fromarray(data.astronaut())
    for image in (photo, photo.resize((301, 97)), photo.resize((97, 301)), photo.resize((40, 40))):
        got, array, want = fast(image), as_array(image), reference(image)
        assert got.shape == want.shape == (3, 96, 96) and got.is_contiguous()
        assert float((got - want.as_subclass(type(got))).abs().max()) < 1e-5
        assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous
        assert array.shape == (3, 96, 96) and np.abs(array - want.numpy()).max() < 1e-5
        assert np.array_equal(array, got.numpy())
