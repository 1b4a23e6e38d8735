"""Near-duplicate rule of the scraper: colourways kept, copies caught, old rule against new.

    .venv/bin/python -m bench.dedupe [--sources 300] [--phash-distance 8] [--colour-distance 0.06]

(a) Generated pairs. Real product shots (white background, from the shared datasets; a few
``skimage.data`` pictures when those are absent) each get copies that must count as
DUPLICATES (JPEG quality 50/70/95, resized 0.5x/0.75x/1.5x, 5 % cropped in the centre or
at a corner, watermarked with a shop's text and a small logo) and copies that must count
as DISTINCT (hue turned 30/60/90/180 degrees; the shoe recoloured on its white background).
Hue turns only count for pictures with colour to turn (at least 2 % of pixels with HSV
saturation > 0.25 and value > 0.2): a black-and-white photo turned is the same photo.
Rows: caught-duplicate and kept-distinct rates of the old rule (pHash within 6) and the
new one (pHash and colour signature), per copy kind and overall, then a sweep of both
thresholds and what a pHash-only rule would do against rows stored before colour.

(b) Real photos: every file of ``other-footwear/sneakers/`` and ``air-jordan/`` is a
different file; within each label folder, the pairs each rule calls near-duplicates and
the photos a scrape would drop (files claimed in name order through ``DedupeIndex``).
Pairs whose 32x32 thumbnails are pixel-identical (mean difference < 2 of 255) are
probably real copies the dataset kept; the rest are distinct photos wrongly merged.
Skipped, with a message, when /work/shared/datasets is absent.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.machine import cpu_model
from scraper.errors import ScraperError
from scraper.images import (
    COLOUR_BINS,
    NEAR_COLOUR_DISTANCE,
    NEAR_PHASH_DISTANCE,
    clean_image,
    colour_distance,
    image_hash,
    phash_distance,
    split_hash,
)
from scraper.pipeline import DedupeIndex, KnownImage

DATASETS = Path("/work/shared/datasets")
REAL_FOLDERS = (DATASETS / "other-footwear" / "sneakers", DATASETS / "air-jordan")
OLD_DISTANCE = 6  # the rule before colour: pHash within 6 bits, nothing else
SKIMAGE_PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel")

Transform = Callable[[Image.Image], bytes]


@dataclass(frozen=True)
class Pair:
    """One generated copy: its kind, whether it must count as a duplicate, both distances."""

    kind: str
    duplicate: bool
    phash: int
    colour: float


# --- copies ---------------------------------------------------------------------------------


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """The picture as a site would serve it."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def resized(factor: float) -> Transform:
    """Scaled by ``factor`` (Lanczos, as shops make their sizes)."""
    return lambda im: jpeg(im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS))


def cropped(corner: bool) -> Transform:
    """5 % of width and height cut off: half on each side, or all at the right and bottom."""

    def crop(im: Image.Image) -> bytes:
        """The cut picture, re-encoded."""
        dx, dy = round(im.width * 0.05), round(im.height * 0.05)
        left, top = (0, 0) if corner else (dx // 2, dy // 2)
        return jpeg(im.crop((left, top, left + im.width - dx, top + im.height - dy)))

    return crop


def watermarked(im: Image.Image) -> bytes:
    """A shop's semi-transparent text along the bottom and a small red logo in a corner."""
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(10, im.height // 14))
    draw.text((im.width * 0.05, im.height * 0.86), "© sneakershop.example", font=font,
              fill=(255, 255, 255, 160), stroke_width=1, stroke_fill=(0, 0, 0, 120))
    r = max(3, min(im.size) // 24)
    draw.ellipse((im.width - 3 * r, r, im.width - r, 3 * r), fill=(220, 30, 40, 200))
    return jpeg(Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB"))


def hue_turned(degrees: int) -> Transform:
    """Every pixel's hue turned: the same shot in another colourway."""

    def turn(im: Image.Image) -> bytes:
        """The turned picture, re-encoded."""
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(degrees * 256 / 360)) % 256
        return jpeg(Image.fromarray(hsv, "HSV").convert("RGB"))

    return turn


def recoloured(im: Image.Image) -> bytes:
    """The shoe (pixels not near white) turned 120 degrees and given colour; the background kept."""
    rgb = np.asarray(im)
    shoe = rgb.min(axis=2) < 225
    hsv = np.asarray(im.convert("HSV")).astype(np.int16)
    hsv[..., 0] = np.where(shoe, (hsv[..., 0] + 85) % 256, hsv[..., 0])
    hsv[..., 1] = np.where(shoe, np.maximum(hsv[..., 1], 100), hsv[..., 1])
    hsv[..., 2] = np.where(shoe, np.maximum(hsv[..., 2], 70), hsv[..., 2])
    return jpeg(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


DUPLICATES: dict[str, Transform] = {
    "jpeg q50": lambda im: jpeg(im, 50), "jpeg q70": lambda im: jpeg(im, 70), "jpeg q95": lambda im: jpeg(im, 95),
    "resize 0.5x": resized(0.5), "resize 0.75x": resized(0.75), "resize 1.5x": resized(1.5),
    "crop 5% centre": cropped(False), "crop 5% corner": cropped(True), "watermark": watermarked,
}
DISTINCT: dict[str, Transform] = {
    "hue 30": hue_turned(30), "hue 60": hue_turned(60), "hue 90": hue_turned(90), "hue 180": hue_turned(180),
    "recolour shoe": recoloured,
}


def has_colour(im: Image.Image) -> bool:
    """At least 2 % of pixels clearly coloured (HSV saturation > 0.25, value > 0.2)."""
    hsv = np.asarray(im.convert("HSV").resize((64, 64), Image.Resampling.BOX)).astype(np.int16)
    return bool(((hsv[..., 1] > 64) & (hsv[..., 2] > 51)).mean() >= 0.02)


# --- sources --------------------------------------------------------------------------------


def is_product_shot(im: Image.Image) -> bool:
    """Nine tenths of the border near white: a retailer's shot, the kind colourways come in."""
    rgb = np.asarray(im).astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return bool((border.min(axis=1) > 225).mean() >= 0.9)


def product_shots(count: int) -> list[tuple[bytes, Image.Image]]:
    """(file bytes, decoded picture) of ``count`` product shots spread over all real folders."""
    suffixes = {".jpg", ".jpeg", ".png", ".webp"}
    files = sorted(p for folder in REAL_FOLDERS for p in folder.rglob("*") if p.suffix.lower() in suffixes)
    shots: list[tuple[bytes, Image.Image]] = []
    for path in files[:: max(1, len(files) // (count * 3))]:
        data = path.read_bytes()
        try:
            image = clean_image(data, min_side=64).image
        except ScraperError:
            continue
        if is_product_shot(image):
            shots.append((data, image))
        if len(shots) == count:
            break
    return shots


def skimage_pictures() -> list[tuple[bytes, Image.Image]]:
    """Stand-ins when the datasets are absent: a few colour pictures from scikit-image."""
    from skimage import data as skdata

    pictures = [Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB") for name in SKIMAGE_PICTURES]
    return [(jpeg(im, 92), im) for im in pictures]


# --- (a) generated pairs ----------------------------------------------------------------------


def distances(a: str, b: str) -> tuple[int, float]:
    """(pHash bits, colour Hellinger distance) between two stored hashes."""
    return phash_distance(a, b), colour_distance(split_hash(a)[1] or "", split_hash(b)[1] or "")


def generated_pairs(sources: list[tuple[bytes, Image.Image]]) -> list[Pair]:
    """Every copy of every source with its distances to the source as the scraper stores it."""
    pairs: list[Pair] = []
    for data, image in sources:
        original = clean_image(data, min_side=1).phash
        kinds = [(k, t, True) for k, t in DUPLICATES.items()] + [(k, t, False) for k, t in DISTINCT.items()]
        for kind, transform, duplicate in kinds:
            if kind.startswith("hue") and not has_colour(image):
                continue
            pairs.append(Pair(kind, duplicate, *distances(original, clean_image(transform(image), min_side=1).phash)))
    return pairs


def merged(pair: Pair, max_phash: int, max_colour: float) -> bool:
    """The rule: pHash within ``max_phash`` and colour within ``max_colour`` (1.0: pHash only)."""
    return pair.phash <= max_phash and pair.colour <= max_colour


def rates(pairs: list[Pair], max_phash: int, max_colour: float) -> tuple[float, float]:
    """(caught-duplicate rate, kept-distinct rate)."""
    dups = [merged(p, max_phash, max_colour) for p in pairs if p.duplicate]
    kept = [not merged(p, max_phash, max_colour) for p in pairs if not p.duplicate]
    return float(np.mean(dups)), float(np.mean(kept))


def print_generated(pairs: list[Pair], phash: int, colour: float) -> None:
    """Per copy kind, then overall, old rule against new: the share each rule gets right."""
    print("share handled right: duplicates caught, distinct copies kept")
    print(f"{'copy':<16} {'must be':<9} {'n':>5} {'old: pHash<=' + str(OLD_DISTANCE):>15} "
          f"{f'new: pHash<={phash} & colour<={colour:g}':>32}")
    for kind in [*DUPLICATES, *DISTINCT]:
        rows = [p for p in pairs if p.kind == kind]
        if not rows:
            continue
        duplicate = rows[0].duplicate
        old = np.mean([merged(p, OLD_DISTANCE, 1.0) == duplicate for p in rows])
        new = np.mean([merged(p, phash, colour) == duplicate for p in rows])
        print(f"{kind:<16} {'dup' if duplicate else 'distinct':<9} {len(rows):>5} {old:>15.1%} {new:>32.1%}")
    old_caught, old_kept = rates(pairs, OLD_DISTANCE, 1.0)
    new_caught, new_kept = rates(pairs, phash, colour)
    print(f"caught-duplicate rate: old {old_caught:.1%}, new {new_caught:.1%}; "
          f"kept-distinct rate: old {old_kept:.1%}, new {new_kept:.1%}")


def print_sweep(pairs: list[Pair], real: dict[str, list[tuple[int, float, float]]] | None) -> None:
    """Both thresholds around the chosen ones, with the real wrongly merged pairs when measured."""
    print(f"sweep (caught-duplicate / kept-distinct{'' if real is None else ' / real distinct pairs merged'}):")
    for max_phash in (6, 8, 10):
        cells = []
        for max_colour in (0.04, 0.06, 0.08, 0.10):
            caught, kept = rates(pairs, max_phash, max_colour)
            wrong = "" if real is None else f" / {wrong_pairs(real, max_phash, max_colour)}"
            cells.append(f"colour<={max_colour:.2f}: {caught:.1%} / {kept:.1%}{wrong}")
        print(f"  pHash<={max_phash:<2} " + "  ".join(cells))


def print_legacy(pairs: list[Pair]) -> None:
    """Against a row stored before colour only pHash is known: what a pHash-only rule would do."""
    for max_phash in (0, 2):
        caught, kept = rates(pairs, max_phash, 1.0)
        print(f"legacy rows (bare pHash), pHash<={max_phash} alone: caught {caught:.1%}, kept-distinct {kept:.1%}")
    print("legacy rows, as the index does (sha1 only): caught 0% of changed copies, kept-distinct 100%")


# --- (b) real photos ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """One real file: its label folder, stored hash and a 32x32 thumbnail for the copy check."""

    label: str
    name: str
    hash: str
    thumb: np.ndarray

    @property
    def phash(self) -> imagehash.ImageHash:
        """The pHash part, parsed."""
        return imagehash.hex_to_hash(split_hash(self.hash)[0])


def real_photos() -> list[Photo]:
    """Every readable photo of the real folders, hashed as the scraper would."""
    photos = []
    for folder in REAL_FOLDERS:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() != ".csv"):
            try:
                clean = clean_image(path.read_bytes(), min_side=1)
            except ScraperError:
                continue
            thumb = np.asarray(clean.image.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
            photos.append(Photo(f"{folder.name}/{path.parent.name}", path.name, clean.phash, thumb))
    return photos


def close_pairs(photos: list[Photo]) -> dict[str, list[tuple[int, float, float]]]:
    """Per label: (pHash bits, colour distance, thumbnail difference) of pairs within 10 pHash bits."""
    by_label: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_label[photo.label].append(photo)
    pairs: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for label, group in by_label.items():
        hashes = [photo.phash for photo in group]  # parsed once: 1.5 million pairs
        for (i, a), (j, b) in itertools.combinations(enumerate(group), 2):
            bits = int(hashes[i] - hashes[j])
            if bits <= 10:
                colour = colour_distance(split_hash(a.hash)[1] or "", split_hash(b.hash)[1] or "")
                pairs[label].append((bits, colour, float(np.abs(a.thumb - b.thumb).mean())))
    return pairs


def wrong_pairs(pairs: dict[str, list[tuple[int, float, float]]], max_phash: int, max_colour: float) -> int:
    """Merged pairs that are not pixel copies: distinct photos the rule would call duplicates."""
    return sum(b <= max_phash and c <= max_colour and pix >= 2 for rows in pairs.values() for b, c, pix in rows)


def dropped(photos: list[Photo], max_phash: int, max_colour: float) -> int:
    """Photos a scrape of each label folder would drop as near-duplicates, claimed in name order."""
    count = 0
    by_label: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_label[photo.label].append(photo)
    for group in by_label.values():
        index = DedupeIndex([], max_phash, max_colour)
        count += sum(index.claim(f"{p.label}/{p.name}", p.hash) == "near" for p in group)
    return count


def print_real(photos: list[Photo], pairs: dict[str, list[tuple[int, float, float]]], phash: int,
               colour: float) -> None:
    """Pairs merged and photos dropped by each rule."""
    labels = len({p.label for p in photos})
    print(f"{len(photos)} photos in {labels} label folders")
    rules = (("old", OLD_DISTANCE, 1.0), ("new", phash, colour), ("pHash<=0 alone (legacy rows)", 0, 1.0))
    for name, max_phash, max_colour in rules:
        rows = [r for group in pairs.values() for r in group if r[0] <= max_phash and r[1] <= max_colour]
        copies = sum(pix < 2 for _, _, pix in rows)
        print(f"{name}: {len(rows)} pairs merged, {copies} of them pixel copies, "
              f"{len(rows) - copies} distinct photos wrongly merged; "
              f"a scrape would drop {dropped(photos, max_phash, max_colour)} of {len(photos)} photos")


# --- cost -----------------------------------------------------------------------------------------


def print_cost(sources: list[tuple[bytes, Image.Image]], phash: int, colour: float) -> None:
    """ms to hash one picture (pHash + colour), and to claim one against 10 000 known images."""
    image = sources[0][1]
    start = time.perf_counter()
    for _ in range(20):
        image_hash(image)
    hashing = (time.perf_counter() - start) / 20 * 1000
    rng = np.random.default_rng(0)
    hashes = [f"{rng.integers(0, 2**63):016x}:{rng.bytes(COLOUR_BINS).hex()}" for _ in range(10_000)]
    index = DedupeIndex([KnownImage(f"{i}", value) for i, value in enumerate(hashes)], phash, colour)
    start = time.perf_counter()
    for i in range(50):
        index.claim(f"new-{i}", hashes[i])
    claim = (time.perf_counter() - start) / 50 * 1000
    print(f"cost: {hashing:.1f} ms to hash a {image.width}x{image.height} picture, "
          f"{claim:.2f} ms to claim one against 10 000 known images")


def main(argv: list[str] | None = None) -> int:
    """Both parts, the real one only where the datasets are; always 0 (figures, not a gate)."""
    parser = argparse.ArgumentParser(prog="bench.dedupe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=300, help="product shots for the generated pairs")
    parser.add_argument("--phash-distance", type=int, default=NEAR_PHASH_DISTANCE)
    parser.add_argument("--colour-distance", type=float, default=NEAR_COLOUR_DISTANCE)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    real = DATASETS.is_dir()
    sources = product_shots(args.sources) if real else skimage_pictures()
    print(f"(a) generated pairs from {len(sources)} {'product shots' if real else 'skimage pictures (no datasets)'}")
    pairs = generated_pairs(sources)
    print_generated(pairs, args.phash_distance, args.colour_distance)
    print_legacy(pairs)
    print_cost(sources, args.phash_distance, args.colour_distance)
    if not real:
        print(f"(b) real photos: skipped, {DATASETS} is absent")
        print_sweep(pairs, None)
        return 0
    print("(b) real photos, distinct files within each label folder")
    photos = real_photos()
    close = close_pairs(photos)
    print_real(photos, close, args.phash_distance, args.colour_distance)
    print_sweep(pairs, close)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
