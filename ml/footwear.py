"""Is this a shoe at all? The pretrained ImageNet head's probability mass on footwear classes.

Used by the scraper to send non-footwear downloads (logos, people, shops) to review before
anything trains on them. Runs the stock pretrained backbone (no sneaker model needed) with
ONNX Runtime; the graph is exported once into a cache directory.

    detector = FootwearDetector.create()          # efficientnet_lite0, ONNX Runtime
    detector.score([img1, img2])  -> array([0.91, 0.0003])
    detector.is_footwear(img)     -> True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml.backbones import Backbone, create_backbone
from ml.errors import MLError
from ml.images import ImageSource, open_image
from ml.model import IMAGENET_FOOTWEAR, ImageNetFootwear
from ml.transforms import eval_transform

log = logging.getLogger(__name__)

# A cat or a cup puts well under 0.1% of the ImageNet mass on footwear; about 96% of the
# Air Jordan photos score above 1% (most far above). The scraper only sends rejects to review.
DEFAULT_THRESHOLD = 0.01


class _FootwearNet(nn.Module):
    """Backbone + ImageNet head -> footwear probability mass, one number per image."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone, self.mass = backbone, ImageNetFootwear(sorted(IMAGENET_FOOTWEAR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, logits = self.backbone.features_and_imagenet(x)
        return self.mass(logits, feats)


class FootwearDetector:
    """Scores images by how much the ImageNet classifier thinks they show footwear."""

    def __init__(self, session, transform, threshold: float, backbone: str) -> None:
        self._session, self._transform = session, transform
        self.threshold, self.backbone = threshold, backbone

    @classmethod
    def create(cls, backbone: str = "efficientnet_lite0", *, threshold: float = DEFAULT_THRESHOLD,
               image_size: int | None = None, cache_dir: Path | str | None = None,
               threads: int | None = 1) -> FootwearDetector:
        """Build (or reuse from ``cache_dir``) the ONNX graph of ``backbone``'s footwear score."""
        from ml.onnx_export import export_module, onnx_session
        from ml.predictor import default_cache_dir

        probe = create_backbone(backbone, pretrained=False)
        if not probe.has_imagenet_head:
            raise MLError(f"backbone {backbone!r} has no ImageNet head: it cannot score footwear")
        prep = probe.preprocessing.with_size(image_size or probe.preprocessing.size)
        path = Path(cache_dir or default_cache_dir()) / f"footwear-{backbone}-{prep.size}-{prep.resize}.onnx"
        if not path.is_file():
            net = _FootwearNet(create_backbone(backbone, pretrained=True))
            export_module(net, prep.size, ["footwear"], path)  # the one exporter: atomic, dynamic batch
            log.info("built the footwear detector graph %s", path)
        return cls(onnx_session(path, threads), eval_transform(prep), threshold, backbone)

    def score(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """Footwear probability mass in [0, 1] per image. Raises ``BadImage`` for unusable input."""
        items = [images] if isinstance(images, (bytes, str, Path)) or hasattr(images, "mode") else list(images)
        if not items:
            return np.zeros(0, dtype=np.float32)
        batch = torch.stack([self._transform(open_image(item, min_side=1)) for item in items]).numpy()
        return self._session.run(None, {"images": batch})[0]

    def is_footwear(self, image: ImageSource) -> bool:
        """True when the score reaches the threshold (the scraper's classifier callable)."""
        return bool(self.score([image])[0] >= self.threshold)
