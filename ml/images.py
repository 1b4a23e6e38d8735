"""Turn whatever a user or a scraper hands us into a plain RGB ``PIL.Image``.

Every path into the models goes through ``open_image`` so the same rules hold everywhere:
EXIF orientation applied, transparency composited on white (a transparent PNG of a shoe
is a shoe on white, not on black), grayscale/CMYK/palette converted to RGB, and anything
undecodable raised as one of the ``BadImage`` errors instead of a library's own.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ml.errors import CorruptImage, ImageTooLarge, ImageTooSmall, NotAnImage

try:  # HEIC photos from iPhones; optional at import so a missing wheel never breaks inference
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover
    pass

MIN_SIDE = 64
MAX_PIXELS = 40_000_000
# What Pillow's plugins raise on bytes that start like an image but are not a valid one: not
# only OSError (which Image.open lets through, e.g. "Truncated File Read", "could not create
# decoder object") but also the parsing errors of hand-written header readers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                  TypeError, ZeroDivisionError, OverflowError, RuntimeError)

ImageSource = Path | str | bytes | Image.Image


def open_image(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``source`` (path, bytes or an already open image) into an RGB image.

    Raises ``NotAnImage``, ``CorruptImage``, ``ImageTooSmall`` or ``ImageTooLarge``.
    """
    image = source if isinstance(source, Image.Image) else _decode(source, max_pixels)
    if image.width * image.height > max_pixels:  # before exif_transpose, which loads an image not loaded yet
        raise ImageTooLarge(f"image has {image.width * image.height} pixels, limit is {max_pixels}")
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block should not lose an otherwise fine photo
        pass
    if min(image.size) < min_side:
        raise ImageTooSmall(f"image is {image.width}x{image.height}, sides must be at least {min_side} px")
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:  # a mode Pillow cannot convert, or pixel data it cannot read
        raise CorruptImage(f"cannot convert a {image.mode} image to RGB: {exc}") from exc


def _decode(source: Path | str | bytes, max_pixels: int) -> Image.Image:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise NotAnImage(f"not an image we can read: {_describe(source)}") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
            raise ImageTooLarge(f"image too large: {_describe(source)}") from exc
        except _DECODE_ERRORS as exc:  # a known format's header that its plugin cannot parse
            raise CorruptImage(f"corrupt image {_describe(source)}: {exc}") from exc
        # Checked before load(): the pixels of a too large image are never allocated.
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(f"image has {image.width * image.height} pixels, limit is {max_pixels}")
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
            raise ImageTooLarge(f"image too large: {_describe(source)}") from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImage(f"corrupt image {_describe(source)}: {exc}") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white, 16-bit images scaled to 8 bits.

    Why the scaling: Pillow's own conversion of a 16-bit image clips every value above 255,
    which turns a 16-bit PNG or TIFF photo white.
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16"):  # also the big- and little-endian TIFF layouts, I;16B and I;16L
        image = image.convert("I")
    if image.mode == "I":
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image


def _describe(source: Path | str | bytes) -> str:
    return f"{len(source)} bytes" if isinstance(source, bytes) else str(source)
