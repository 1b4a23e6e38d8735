"""Scraped photos are decoded as served photos are: one decoder (``ml.images``), the scraper's bounds kept."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from bot.services.decoding import PhotoDecoder
from ml import errors as ml_errors
from ml.images import open_image
from scraper import errors
from scraper.images import clean_image, decode_image, image_hash, phash_distance

from scraper_support import encode, picture

PHOTO = picture("astronaut").resize((120, 90))  # landscape: a rotation shows in the size


def transparent_png() -> bytes:
    """The photo with its left half fully transparent and a half-transparent band."""
    rgba = PHOTO.convert("RGBA")
    alpha = np.full((90, 120), 255, np.uint8)
    alpha[:, :60] = 0
    alpha[40:50, 60:] = 128
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(PHOTO.convert("CMYK"), "JPEG", quality=95)


def exif_rotated_jpeg() -> bytes:
    """Stored landscape, with EXIF orientation 6: shown rotated 90 degrees clockwise, portrait."""
    marked = PHOTO.copy()
    marked.paste((255, 0, 0), (0, 0, 20, 20))  # red top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(marked, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_png() -> bytes:
    grey = np.asarray(PHOTO.convert("L")).astype(np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def palette_png_with_transparency() -> bytes:
    palette = PHOTO.convert("P")
    return encode(palette, "PNG", transparency=0)


CASES = {
    "png with alpha": transparent_png,
    "cmyk jpeg": cmyk_jpeg,
    "exif-rotated jpeg": exif_rotated_jpeg,
    "16-bit png": sixteen_bit_png,
    "palette png with a transparent colour": palette_png_with_transparency,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_scraped_and_served_photos_decode_the_same(name: str) -> None:
    data = CASES[name]()
    served = open_image(data)
    assert served.mode == "RGB"
    for other in (decode_image(data, min_side=16), clean_image(data, min_side=16).image, PhotoDecoder()(data)):
        assert other.mode == "RGB" and other.size == served.size
        assert np.array_equal(np.asarray(other), np.asarray(served)), name


def test_what_the_shared_decoder_does_to_each_kind() -> None:
    transparent = np.asarray(decode_image(transparent_png(), min_side=16)).astype(int)
    assert (transparent[:, :60] == 255).all()  # transparent: white, not black
    band, behind = transparent[40:50, 70:], np.asarray(PHOTO).astype(int)[40:50, 70:]
    assert np.abs(band - (behind + 255) / 2).max() <= 2  # half-transparent: half-way to white

    cmyk = np.asarray(decode_image(cmyk_jpeg(), min_side=16)).astype(int)
    assert np.abs(cmyk.mean(axis=(0, 1)) - np.asarray(PHOTO).mean(axis=(0, 1))).max() < 12  # colours kept

    rotated = decode_image(exif_rotated_jpeg(), min_side=16)
    assert rotated.size == (90, 120)  # portrait, as the EXIF says it is shown
    red, green, blue = np.asarray(rotated).astype(int)[5, -5]  # the stored top-left is now top-right
    assert red > 200 and green < 60 and blue < 60

    grey = np.asarray(decode_image(sixteen_bit_png(), min_side=16)).astype(int)[..., 0]
    assert np.abs(grey - np.asarray(PHOTO.convert("L")).astype(int)).max() <= 1  # scaled, not clipped to white


def test_the_scrapers_bounds_hold_and_its_errors_are_mls_kinds() -> None:
    with pytest.raises(errors.ImageTooSmall) as small:
        decode_image(encode(PHOTO, "PNG"), min_side=100)
    assert small.value.reason == "too_small" and isinstance(small.value, ml_errors.ImageTooSmall)

    with pytest.raises(errors.ImageTooManyPixels) as large:
        decode_image(encode(PHOTO, "PNG"), min_side=16, max_pixels=120 * 90 - 1)
    assert large.value.reason == "too_many_pixels" and isinstance(large.value, ml_errors.ImageTooLarge)

    for broken in (encode(PHOTO, "JPEG")[:300], b"\x89PNG\r\n\x1a\n" + b"\0" * 64):
        with pytest.raises(errors.CorruptImage) as corrupt:
            decode_image(broken, min_side=16)
        assert corrupt.value.reason == "corrupt" and isinstance(corrupt.value, ml_errors.CorruptImage)
        assert isinstance(corrupt.value, errors.ScraperError)  # what the pipeline counts failures by

    assert issubclass(errors.NotAnImage, ml_errors.NotAnImage) and issubclass(errors.NotAnImage, errors.FetchError)


def test_phash_distance_is_imagehashs_and_ignores_the_colour_part() -> None:
    a, b = image_hash(PHOTO), image_hash(PHOTO.rotate(8))
    expected = imagehash.phash(PHOTO) - imagehash.phash(PHOTO.rotate(8))
    assert phash_distance(a, b) == expected > 0
    assert phash_distance(a.split(":")[0], b) == expected  # a bare pHash (rows stored before colour)
    assert phash_distance(a, a) == 0
