"""Is it a sneaker at all? The served model's gate on photos that are not sneakers.

    python -m bench.gate [--model models/starter] [--threads 2]

No non-sneaker photo set is on this machine, so the negatives are the sample photos that
packages ship (scikit-image, scikit-learn, matplotlib: a cat, a cup, people, landscapes,
textures, text, medical images), each also mirrored, cropped twice and rotated: 5 views of
24 photos. For each view: the model's verdict, and its footwear score next to the one of the
stock ImageNet network (``ml.footwear.FootwearDetector``). A model that keeps a frozen ImageNet
branch gives the same score; any other way of scoring footwear (a cheaper gate, distilled
layers) must show here that it still agrees on photos that are not sneakers. The real test
sneakers' verdict rates come from the model directory's own test metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "colorwheel", "logo", "grass", "gravel", "brick", "text", "page", "moon", "coins",
                  "clock", "checkerboard", "microaneurysms", "shepp_logan_phantom")


def package_photos() -> dict[str, Image.Image]:
    """Sample images the installed packages ship, as RGB (nothing is downloaded)."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in SKIMAGE_PHOTOS:
        pixels = getattr(skimage.data, name)()
        if pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / (np.ptp(pixels) + 1e-9)).astype(np.uint8)
        photos[name] = Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB")
    for i, pixels in enumerate(load_sample_images().images):
        photos[f"sklearn_{i}"] = Image.fromarray(pixels)
    # As a path: with a file object, matplotlib's stubs cannot tell a .jpg from an .npy (loaded as an array).
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        photos["grace_hopper"] = image.convert("RGB")
    return photos


def views(photos: dict[str, Image.Image]) -> dict[str, Image.Image]:
    """Each photo, mirrored, its top-left and bottom-right two-thirds, and rotated by 20 degrees."""
    out = {}
    for name, image in photos.items():
        w, h = image.size
        out[name] = image
        out[f"{name}~mirrored"] = ImageOps.mirror(image)
        out[f"{name}~top-left"] = image.crop((0, 0, w * 2 // 3, h * 2 // 3))
        out[f"{name}~bottom-right"] = image.crop((w // 3, h // 3, w, h))
        out[f"{name}~rotated"] = image.rotate(20, expand=True, fillcolor="white")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "starter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--show", type=int, default=6, help="list the views with the highest footwear score")
    args = parser.parse_args(argv)

    from ml.footwear import FootwearDetector
    from ml.predictor import Predictor
    from ml.verdicts import known_sneaker

    cache = ROOT / "var" / "cache" / "onnx"
    model = Predictor.load(args.model, threads=args.threads, cache_dir=cache)
    teacher = FootwearDetector.create(image_size=model.info.preprocessing.size, cache_dir=cache, threads=args.threads)
    shown = views(package_photos())
    names, images = list(shown), list(shown.values())
    answers = model.predict(images)
    _, served, familiarity = model.predict_arrays(images)  # every footwear score, even where predict() skips it
    known = int(known_sneaker(familiarity, model.thresholds, len(images)).sum())
    frozen = teacher.score(images)
    threshold = model.thresholds["footwear"]
    originals = [i for i, n in enumerate(names) if "~" not in n]

    print(f"model {args.model} ({model.info.backbone}@{model.info.preprocessing.size}); "
          f"footwear threshold {threshold:.4f}")
    print(f"{len(originals)} package photos: " + ", ".join(f"{k} {v}" for k, v in
                                                            Counter(answers[i].verdict for i in originals).items()))
    print(f"{len(names)} views: " + ", ".join(f"{k} {v}" for k, v in Counter(a.verdict for a in answers).items())
          + f"; {known} of them close enough to a class centroid to skip the footwear branch (should be 0)")
    print(f"footwear score, served vs frozen ImageNet: mean {served.mean():.4f} vs {frozen.mean():.4f}; "
          f"|difference| mean {np.abs(served - frozen).mean():.4f}, max {np.abs(served - frozen).max():.4f}; "
          f"views over the threshold {int((served >= threshold).sum())} vs {int((frozen >= threshold).sum())}")
    for i in np.argsort(-served)[: args.show]:
        print(f"  {names[i]:<32} served {served[i]:.4f}  frozen {frozen[i]:.4f}  {answers[i].verdict}")
    meta = json.loads((args.model / "model.json").read_text())
    test = meta.get("metrics", {}).get("test", {})
    if test.get("verdicts"):
        print("real test sneakers: " + ", ".join(f"{k} {v:.1%}" for k, v in test["verdicts"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
