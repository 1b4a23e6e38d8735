"""How pixels become the network's input, without torch: what the served model needs.

``Preprocessing`` (one per backbone, saved in model.json) and the eval preset in PIL and
NumPy (``EvalArrayTransform``). The bot runs the model on ONNX Runtime; nothing on that path
imports torch (``tests/test_ml_torch_free.py``). The torchvision presets training uses are
in ``ml.transforms``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MINUS_ONE_TO_ONE = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become a tensor for one backbone.

    ``resize="squash"`` resizes the whole photo to ``size x size`` (keeps the toe and heel
    of wide side-view shots); ``"crop"`` resizes the short side to ``size / crop_pct`` and
    takes the centre, as ImageNet evaluation does.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    crop_pct: float = 0.875

    def with_size(self, size: int) -> Preprocessing:
        """The same preprocessing at another input resolution."""
        return replace(self, size=int(size))

    def to_dict(self) -> dict:
        """A JSON-ready dict, for model.json."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Inverse of ``to_dict``."""
        return cls(
            size=int(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=data.get("resize", "squash"),
            crop_pct=float(data.get("crop_pct", 0.875)),
        )


def eval_array_transform(prep: Preprocessing) -> EvalArrayTransform:
    """The eval preset returning a float32 CHW NumPy array: what the Predictor feeds ONNX Runtime."""
    return EvalArrayTransform(prep)


class EvalArrayTransform:
    """The eval preset on a PIL image: resize (bilinear), centre crop, scale to [0, 1], normalise.

    The same numbers as ``ml.transforms.torchvision_eval_transform`` (a test holds them
    together), in PIL and NumPy: the bot runs it on every photo, and torchvision's v2 dispatch
    took about a quarter of the network's own time there (py-spy). Returns a float32 CHW array;
    ``ml.transforms.EvalTransform`` is the same preset returning a tensor, for training code.
    """

    def __init__(self, prep: Preprocessing) -> None:
        self.size, self.outer, self.squash = prep.size, int(round(prep.size / prep.crop_pct)), prep.resize == "squash"
        std = np.array(prep.std, dtype=np.float32)
        # (x / 255 - mean) / std as one multiply-add per channel, on the uint8 pixels
        self.scale = (1 / (255 * std)).astype(np.float32)
        self.offset = (-np.array(prep.mean, dtype=np.float32) / std).astype(np.float32)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = image.resize(self._resized(image.size), Image.Resampling.BILINEAR)
        width, height = image.size
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        planes = np.asarray(image).transpose(2, 0, 1)  # CHW view of the uint8 pixels
        pixels = np.empty(planes.shape, dtype=np.float32)
        np.multiply(planes, self.scale[:, None, None], out=pixels)
        pixels += self.offset[:, None, None]
        return pixels

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) after the resize step, by torchvision's rule for a short-side size."""
        if self.squash:
            return self.outer, self.outer
        width, height = size
        if width <= height:
            return self.outer, int(self.outer * height / width)
        return int(self.outer * width / height), self.outer
