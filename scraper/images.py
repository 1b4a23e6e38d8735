"""Turning downloaded bytes into a clean RGB image, or saying precisely why not.

Every image is decoded fully (a truncated JPEG only fails on the last rows), its
EXIF orientation applied, transparency composited on white, and it is stored as
an RGB JPEG: what the training data reader expects, whatever the site served.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image, ImageOps

from scraper.errors import CorruptImage, ImageTooManyPixels, ImageTooSmall

try:  # HEIC/AVIF support when the plugin is installed; the pipeline works without it.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover
    pass

JPEG_QUALITY = 92


@dataclass(frozen=True)
class CleanImage:
    """A verified image, its stored JPEG bytes and the hashes we dedupe by."""

    image: Image.Image
    jpeg: bytes
    sha1: str
    phash: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


def decode_image(data: bytes, *, min_side: int, max_pixels: int = 40_000_000) -> Image.Image:
    """Fully decoded RGB image; raises ``CorruptImage``, ``ImageTooSmall`` or ``ImageTooManyPixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooManyPixels(f"{width}x{height} pixels")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooManyPixels(str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImage(str(exc) or type(exc).__name__) from exc
    if min(image.size) < min_side:
        raise ImageTooSmall(f"{image.size[0]}x{image.size[1]} < {min_side}")
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (logos on transparent PNGs stay visible)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def clean_image(data: bytes, *, min_side: int, max_pixels: int = 40_000_000) -> CleanImage:
    """Decode, verify, re-encode as JPEG and hash: the sha1 names the stored file's bytes."""
    image = decode_image(data, min_side=min_side, max_pixels=max_pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    jpeg = buffer.getvalue()
    return CleanImage(image=image, jpeg=jpeg, sha1=hashlib.sha1(jpeg).hexdigest(), phash=str(imagehash.phash(image)))


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
