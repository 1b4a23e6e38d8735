"""Turning downloaded bytes into a clean RGB image, or saying precisely why not.

Every image is decoded fully (a truncated JPEG only fails on the last rows) by
``ml.images.open_image``, the decoder the bot serves photos with: EXIF orientation applied,
transparency composited on white, palette, CMYK and 16-bit images converted the same way,
so a scraped training photo is prepared as a photo the model is later shown. It is stored
as an RGB JPEG: what the training data reader expects, whatever the site served.

Near-duplicates are judged on two hashes kept in one string, ``"<phash>:<colour>"``
(see ``image_hash``): the 64-bit pHash says "same picture structure", the colour
signature says "same colours". pHash alone sees grey levels only, so a pink, a grey
and a mint shoe shot the same way share it (distance 0); the colour signature is what
keeps such colourways apart. ``python -m bench.dedupe`` measures the rule.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from ml import errors as ml_errors
from ml.images import MAX_PIXELS, open_image
from scraper.errors import CorruptImage, ImageError, ImageTooManyPixels, ImageTooSmall

JPEG_QUALITY = 92

HASH_SEPARATOR = ":"
PHASH_BITS = 64  # imagehash.phash's default 8x8
# The near-duplicate rule's thresholds (pHash bits, Hellinger distance of colour), chosen with
# ``python -m bench.dedupe`` on product shots: see ``is_near_duplicate``.
NEAR_PHASH_DISTANCE = 8
NEAR_COLOUR_DISTANCE = 0.08
# Colour signature: 12 hue bins of 30 degrees for chromatic pixels, then 5 lightness bins for
# the neutral ones (Lab L* edges 20/40/60/80: black, dark grey, grey, light grey, white shoes
# differ; with 3 bins a silver and a grey overlay on one shoe fell in the same bin).
HUE_BINS = 12
LIGHTNESS_EDGES = (20.0, 40.0, 60.0, 80.0)
COLOUR_BINS = HUE_BINS + len(LIGHTNESS_EDGES) + 1
# Lab chroma below CHROMA_NEUTRAL is grey, above CHROMA_FULL fully coloured, linear in between:
# a soft edge, so JPEG noise on a greyish pixel moves a little weight instead of a whole pixel.
CHROMA_NEUTRAL, CHROMA_FULL = 8.0, 20.0
SIGNATURE_SIDE = 64  # pixels per side of the averaged thumbnail the histogram is taken on
# sRGB (D65) to CIE XYZ, and the D65 white point: the standard constants of the sRGB definition.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


@dataclass(frozen=True)
class CleanImage:
    """A verified image, its stored JPEG bytes and the hashes we dedupe by.

    ``phash`` holds both near-duplicate hashes as ``"<phash hex>:<colour signature hex>"``
    (``image_hash``); the name stays for the database column and the records that carry it.
    """

    image: Image.Image
    jpeg: bytes
    sha1: str
    phash: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.size


def decode_image(data: bytes, *, min_side: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Fully decoded RGB image (``ml.images.open_image``); raises ``CorruptImage``, ``ImageTooSmall`` or
    ``ImageTooManyPixels``, the scraper's own kinds of ``ml.errors.BadImage``, which the report counts.

    The pixel limit is checked from the header, before any pixel is decoded (decompression bombs).
    Bytes Pillow cannot identify are ``CorruptImage``: they passed the download's sniffing, so they
    start like an image and are a broken one.
    """
    try:
        return open_image(data, min_side=min_side, max_pixels=max_pixels)
    except ml_errors.BadImage as exc:
        raise _SCRAPER_ERRORS.get(type(exc), CorruptImage)(str(exc)) from exc


# ``ml.errors`` kinds to the scraper's subclasses of them (anything else, ``NotAnImage`` too, is corrupt).
_SCRAPER_ERRORS: dict[type[ml_errors.BadImage], type[ImageError]] = {
    ml_errors.ImageTooLarge: ImageTooManyPixels,
    ml_errors.ImageTooSmall: ImageTooSmall,
    ml_errors.CorruptImage: CorruptImage,
}


def clean_image(data: bytes, *, min_side: int, max_pixels: int = MAX_PIXELS) -> CleanImage:
    """Decode, verify, re-encode as JPEG and hash: the sha1 names the stored file's bytes."""
    image = decode_image(data, min_side=min_side, max_pixels=max_pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    jpeg = buffer.getvalue()
    return CleanImage(image=image, jpeg=jpeg, sha1=hashlib.sha1(jpeg).hexdigest(), phash=image_hash(image))


def image_hash(image: Image.Image) -> str:
    """``"<16 hex pHash>:<34 hex colour signature>"``, 51 characters: the one string a record keeps."""
    return f"{imagehash.phash(image)}{HASH_SEPARATOR}{colour_signature(image)}"


def split_hash(value: str) -> tuple[str, str | None]:
    """(pHash hex, colour signature hex or None): rows stored before colour hold a bare pHash."""
    phash, _, colour = value.partition(HASH_SEPARATOR)
    return phash, colour or None


def colour_histogram(image: Image.Image) -> np.ndarray:
    """Share of the picture in each of ``COLOUR_BINS`` colour bins (sums to 1).

    Why a histogram of the whole picture: it ignores where pixels are, so resizing and a 5 %
    crop barely move it, and re-encoding only jitters it; a recoloured shoe moves the shoe's
    share of the picture from one hue bin to another. Shares are of all pixels, not of the
    coloured ones only (as ``imagehash.colorhash`` does), so a small coloured logo or JPEG
    noise on a black-and-white shoe stays a small change. Hue is Lab's (perceptual, unlike
    HSV's), each pixel split between its two nearest hue bins so a colour on a bin edge does
    not flip bins. Taken on a 64x64 area-averaged thumbnail: cheap (about a millisecond).
    """
    lab = _srgb_to_lab(image.convert("RGB").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX))
    lightness, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    chromatic = np.clip((np.hypot(a, b) - CHROMA_NEUTRAL) / (CHROMA_FULL - CHROMA_NEUTRAL), 0.0, 1.0)
    position = (np.degrees(np.arctan2(b, a)) % 360.0) / (360.0 / HUE_BINS)
    low = np.floor(position).astype(np.intp)
    upper = position - low
    hues = np.bincount(low % HUE_BINS, chromatic * (1 - upper), HUE_BINS)
    hues += np.bincount((low + 1) % HUE_BINS, chromatic * upper, HUE_BINS)
    neutral = np.bincount(np.digitize(lightness, LIGHTNESS_EDGES), 1.0 - chromatic, len(LIGHTNESS_EDGES) + 1)
    return np.concatenate([hues, neutral]) / len(lab)


def colour_signature(image: Image.Image) -> str:
    """``colour_histogram`` as 34 hex digits: each bin's square root in one byte.

    The square root is what the distance compares (``colour_distance``), and a byte keeps it
    to 1/255: measured, the same rates as unrounded values, while one hex digit per bin did
    not (a small bin rounds to 0 or 1/15).
    """
    roots = np.rint(np.sqrt(colour_histogram(image)) * 255).astype(np.uint8)
    return roots.tobytes().hex()


def colour_roots(signature: str) -> np.ndarray:
    """The square roots of the bin shares back from a ``colour_signature`` (float, 0..1)."""
    return np.frombuffer(bytes.fromhex(signature), dtype=np.uint8) / 255.0


def colour_distance(a: str, b: str) -> float:
    """Hellinger distance (0 same colours, 1 nothing in common) between two colour signatures.

    Hellinger rather than the plain difference of shares: taken on square roots, it weighs
    a change in a small bin (a red swoosh on a white shoe turning blue) more than the same
    change in the large white-background bin, which is how people see colourways.
    """
    return float(np.linalg.norm(colour_roots(a) - colour_roots(b)) / np.sqrt(2))


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between the pHashes of two stored hashes (with or without colour)."""
    return int(imagehash.hex_to_hash(split_hash(a)[0]) - imagehash.hex_to_hash(split_hash(b)[0]))


def is_near_duplicate(a: str, b: str, *, max_phash: int, max_colour: float) -> bool:
    """Whether two stored hashes are the same picture: pHash within ``max_phash`` AND colour within ``max_colour``.

    The defaults (``NEAR_PHASH_DISTANCE`` 8, ``NEAR_COLOUR_DISTANCE`` 0.08) come from
    ``bench.dedupe`` on 300 product shots of the shared datasets: the old rule (pHash within 6)
    caught 87.4 % of re-encoded, resized, 5 %-cropped and watermarked copies and kept 8 % of
    hue-turned and recoloured ones; this rule catches 91.4 % (no kind of copy less often than
    before) and keeps 99.5 %. Among 9830 real photos, the pairs of different files merged
    within a label fell from 602 to 61, the photos a scrape would drop from 275 to 51.
    Why pHash 8 rather than 6: the colour test now stops the colourways a looser pHash lets
    through, and a 5 % crop moves pHash by 6 bits or more. Why colour 0.08: a watermark moves
    it up to about 0.07; at 0.06 watermarks were caught less often than before (86 %), at 0.10
    more colourways merged (98.5 % kept) and twice the real photos.
    Blind spots: colourways that swap the same colours between panels (same histogram), and
    dark, low-chroma colours (navy against olive); pHash itself misses most corner crops.

    A hash without colour (a row stored before colour signatures) is never a near-duplicate:
    pHash alone cannot tell colourways apart (``DedupeIndex`` documents the measurement).
    """
    (phash_a, colour_a), (phash_b, colour_b) = split_hash(a), split_hash(b)
    if colour_a is None or colour_b is None:
        return False
    if phash_distance(phash_a, phash_b) > max_phash:
        return False
    return colour_distance(colour_a, colour_b) <= max_colour


def _srgb_to_lab(image: Image.Image) -> np.ndarray:
    """CIE L*a*b* (D65) of every pixel of an RGB image, one row per pixel.

    By hand rather than through scikit-image, which is only a development dependency.
    """
    rgb = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _D65_WHITE
    edge = (6 / 29) ** 3
    f = np.where(xyz > edge, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)
