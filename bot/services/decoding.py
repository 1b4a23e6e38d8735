"""Photo bytes to the RGB image the model sees, decoding no more pixels than it needs.

A phone photo is 1280 px or more on its long side; the model looks at ~180 px. JPEG can be
decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (``PIL.Image.draft``, what
``Image.thumbnail`` does), which is several times cheaper than decoding every pixel and then
resizing them away. The scale is chosen so that both sides stay at least the model's resize
target, so the model's own antialiased resize still does the final step (answers move by
about a percent of confidence, top-1 unchanged on the benchmark photos).

Everything that is not a plain, healthy JPEG goes through ``ml.images.open_image`` unchanged,
so the ``BadImage`` errors (corrupt, too small, too many pixels, decompression bombs) and the
EXIF/transparency rules stay those of ``ml.images``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from ml.images import MAX_PIXELS, open_image

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class PhotoDecoder:
    """``decoder(data, side)``: an RGB image whose sides are at least ``side`` (when it was bigger)."""

    max_pixels: int = MAX_PIXELS

    def __call__(self, data: bytes, side: int | None = None) -> Image.Image:
        """Decode ``data``; raises ``ml.errors.BadImage`` like ``open_image``."""
        reduced = self._reduced_jpeg(data, side) if side and data[:3] == JPEG_MAGIC else None
        return open_image(reduced if reduced is not None else data, max_pixels=self.max_pixels)

    def _reduced_jpeg(self, data: bytes, side: int) -> Image.Image | None:
        """The JPEG decoded at the smallest DCT scale keeping both sides >= ``side``; None when
        anything is off (``open_image`` then decodes it again and says what is wrong)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                if image.format != "JPEG" or image.width * image.height > self.max_pixels:
                    return None
                image.draft(None, (side, side))
                image.load()
            return image
        except Exception:  # noqa: BLE001 - every failure is reported by open_image's own decode
            return None
