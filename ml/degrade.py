"""Photos as people take them: seeded degradations of a clean photo (issue #13).

The training and test photos are mostly scraped product shots and thumbnails: the shoe fills
the frame, in focus, well lit. What users send is a phone photo: the shoe small in a room,
seen at an angle, shaken, dim, under a tungsten bulb, forwarded as a thumbnail, recompressed.
Each function here turns an RGB ``PIL.Image`` into such a photo, with every random choice
drawn from the ``numpy.random.Generator`` it is given, so the same seed gives the same bytes:
``bench.robustness`` measures a model under each one (``DEGRADATIONS``), and training can
learn from them (``phone``, the ``phone`` preset of ``ml.transforms``).

Every function keeps the image's size and returns RGB; each draws its own strength from a
range chosen to look like a phone photo rather than a worst case.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Degradation = Callable[[Image.Image, np.random.Generator], Image.Image]

DEGRADATIONS: dict[str, Degradation] = {}  # by name, in the order a phone's pipeline would apply them
PHONE_P = 0.25  # ``phone``: the chance of each degradation (about one photo in eight stays clean)


def register(name: str) -> Callable[[Degradation], Degradation]:
    """Add a degradation to ``DEGRADATIONS`` under ``name``."""
    def add(fn: Degradation) -> Degradation:
        DEGRADATIONS[name] = fn
        return fn
    return add


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator for one photo and condition: the same (seed, key) always draws the same numbers,
    whatever order the photos are processed in (``key`` e.g. "<sha1>:<degradation>")."""
    digest = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")
    return np.random.default_rng([int(seed), digest])


def phone(image: Image.Image, rng: np.random.Generator, p: float = PHONE_P) -> Image.Image:
    """A random subset of the degradations (each with chance ``p``), each at its own random strength,
    in pipeline order: the scene (framing, angle), the light, the lens and sensor, then the file."""
    for degrade in DEGRADATIONS.values():
        if rng.random() < p:
            image = degrade(image, rng)
    return image


# ----------------------------------------------------------------- the scene


@register("small")
def small(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The shoe fills about a third of the frame: the photo, scaled to 50-63 % of each side (25-40 %
    of the area), at a random place on a plausible background of the same size."""
    w, h = image.size
    side = float(np.sqrt(rng.uniform(0.25, 0.4)))
    pw, ph = max(1, round(w * side)), max(1, round(h * side))
    canvas = background(image, rng)
    x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    canvas.paste(image.resize((pw, ph), Image.Resampling.BILINEAR), (x, y), _feather((pw, ph)))
    return canvas


def background(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What lies around the shoe, at the image's size: a blurred, enlarged copy of the photo's border
    colours (the floor or table it stood on), or a flat colour, or a gradient between two colours."""
    w, h = image.size
    kind = int(rng.integers(3))
    if kind == 0:
        coarse = np.asarray(image.resize((5, 5), Image.Resampling.BOX), dtype=np.float32).copy()
        ring = np.concatenate([coarse[0], coarse[-1], coarse[1:-1, 0], coarse[1:-1, -1]])
        coarse[1:-1, 1:-1] = ring.mean(0)  # the middle cells hold the shoe: only the border's colours
        enlarged = Image.fromarray(_to_uint8(coarse)).resize((w, h), Image.Resampling.BICUBIC)
        return enlarged.filter(ImageFilter.GaussianBlur(max(w, h) / 16))
    first = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 1:
        return Image.new("RGB", (w, h), tuple(int(v) for v in first))
    second = rng.integers(0, 256, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) / max(w, 1) + yy * np.sin(angle) / max(h, 1)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return Image.fromarray(_to_uint8(first + t[..., None] * (second - first)))


def _feather(size: tuple[int, int], edge: int = 2) -> Image.Image:
    """A paste mask whose border fades over ``edge`` pixels: no razor-sharp frame around the photo."""
    mask = Image.new("L", size, 0)
    w, h = size
    if w > 2 * edge and h > 2 * edge:
        ImageDraw.Draw(mask).rectangle((edge, edge, w - 1 - edge, h - 1 - edge), fill=255)
        return mask.filter(ImageFilter.GaussianBlur(edge / 2))
    return Image.new("L", size, 255)


@register("perspective")
def perspective(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The phone held at an angle: each corner pulled inwards by 3-18 % of the side (a keystone and a
    tilt), the uncovered corners filled with a plausible background."""
    w, h = image.size
    source = [(0, 0), (w, 0), (w, h), (0, h)]
    pull = rng.uniform(0.03, 0.18, (4, 2)) * (w, h)
    signs = np.array([(1, 1), (-1, 1), (-1, -1), (1, -1)])  # inwards, per corner
    target = np.array(source, dtype=np.float64) + signs * pull
    coeffs = _perspective_coeffs(target, np.array(source, dtype=np.float64))
    warped = image.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    covered = Image.new("L", (w, h), 255).transform((w, h), Image.Transform.PERSPECTIVE, coeffs,
                                                    Image.Resampling.BILINEAR)
    canvas = background(image, rng)
    canvas.paste(warped, (0, 0), covered)
    return canvas


def _perspective_coeffs(output: np.ndarray, source: np.ndarray) -> tuple[float, ...]:
    """The 8 numbers Pillow's PERSPECTIVE transform takes: they map each output corner to its source corner."""
    rows = []
    for (x, y), (u, v) in zip(output, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows), source.reshape(8))
    return tuple(float(c) for c in solution)


# ----------------------------------------------------------------- the light


@register("colour_cast")
def colour_cast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A white balance that missed: warm (tungsten) or cool (shade) by 8-25 % per channel, with a
    green or magenta tint of up to 8 % (fluorescent tubes)."""
    shift = rng.uniform(0.08, 0.25) * rng.choice([-1.0, 1.0])
    tint = rng.uniform(-0.08, 0.08)
    gains = np.array([1 + shift, 1 + tint, 1 - shift], dtype=np.float32)
    return Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float32) * gains))


@register("low_light")
def low_light(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A dim room: exposure down to 40-70 %, darker midtones (gamma 1.1-1.6) and sensor noise (sigma
    1-3 % of full scale at this size, the same on every channel plus a little colour noise)."""
    x = np.asarray(image, dtype=np.float32) / 255
    x = x ** rng.uniform(1.1, 1.6) * rng.uniform(0.4, 0.7)
    sigma = rng.uniform(0.01, 0.03)
    h, w = x.shape[:2]
    noise = rng.normal(0, sigma, (h, w, 1)) + rng.normal(0, sigma / 3, (h, w, 3))
    return Image.fromarray(_to_uint8((x + noise) * 255))


# ----------------------------------------------------------------- the lens and the sensor


@register("blur")
def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Out of focus (Gaussian, radius 0.3-0.8 % of the long side) or shaken (a straight motion streak
    of 1-3 % of the long side at any angle), with even odds."""
    long_side = max(image.size)
    if rng.random() < 0.5:
        return image.filter(ImageFilter.GaussianBlur(long_side * rng.uniform(0.003, 0.008)))
    return motion_blur(image, long_side * rng.uniform(0.01, 0.03), rng.uniform(0, np.pi))


def motion_blur(image: Image.Image, length: float, angle: float) -> Image.Image:
    """The mean of the image shifted along a line of ``length`` pixels at ``angle`` (edges repeated)."""
    taps = max(2, int(round(length)))
    steps = np.linspace(-length / 2, length / 2, taps)
    dx, dy = np.rint(steps * np.cos(angle)).astype(int), np.rint(steps * np.sin(angle)).astype(int)
    pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
    x = np.pad(np.asarray(image, dtype=np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = image.height, image.width
    total = np.zeros((h, w, 3), np.float32)
    for ox, oy in zip(dx, dy, strict=True):
        total += x[pad + oy:pad + oy + h, pad + ox:pad + ox + w]
    return Image.fromarray(_to_uint8(total / taps))


@register("downscale")
def downscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A thumbnail or a forwarded preview: down to 80-120 px on the long side (at most 3/4 of it)
    and back up to the original size, bilinear or bicubic."""
    w, h = image.size
    scale = min(rng.uniform(80, 120) / max(w, h), 0.75)
    thumb = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    up = Image.Resampling.BICUBIC if rng.random() < 0.5 else Image.Resampling.BILINEAR
    return thumb.resize((w, h), up)


# ----------------------------------------------------------------- the file


@register("jpeg")
def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Saved again as a JPEG of quality 30-70 (messengers and social apps recompress what they pass on)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(30, 71)))
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
