"""Near-duplicates respect colour: colourways of one shot are kept, copies of one photo are caught.

Pictures are built here: a drawn shoe on a white background in 40 colourways (an upper and
overlays, as a Dunk's panels), and ``skimage.data`` photos. Copies are made the way shops
make them (JPEG quality, resizing, a 5 % crop, a watermark); colourways by turning hues or
recolouring the shoe. Checked pair by pair, through ``DedupeIndex``, through a whole scrape
against a local server, and through the database column that stores the hashes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot.store import models
from bot.store.db import alembic_config, init_db, session_factory
from bot.store.image_sink import DbImageSink
from scraper.fetch import FetchSettings
from scraper.images import (
    NEAR_COLOUR_DISTANCE,
    NEAR_PHASH_DISTANCE,
    clean_image,
    image_hash,
    is_near_duplicate,
    phash_distance,
    split_hash,
)
from scraper.pipeline import DedupeIndex, ImageRecord, KnownImage, Pipeline, ScrapeConfig
from scraper.sinks import MemorySink
from scraper.sources.base import SourceSettings

from scraper_support import LocalServer, bing_page, encode, picture, running_server

RGB = tuple[int, int, int]
UPPERS: dict[str, RGB] = {"red": (200, 30, 40), "orange": (235, 120, 20), "yellow": (240, 200, 40),
                          "green": (40, 150, 60), "mint": (150, 225, 190), "blue": (30, 70, 180),
                          "purple": (120, 50, 160), "pink": (240, 150, 190)}
OVERLAYS: dict[str, RGB] = {"white": (235, 235, 235), "silver": (180, 180, 180), "grey": (110, 110, 110),
                            "black": (25, 25, 25), "navy": (20, 30, 70)}
OLD_DISTANCE = 6  # the pHash-only rule this replaced


def shoe(upper: RGB, overlay: RGB) -> Image.Image:
    """A shoe-like drawing on white: sole, upper, toe and heel overlays, a swoosh, laces."""
    image = Image.new("RGB", (400, 240), "white")
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((30, 180, 370, 210), 10, fill=(250, 250, 250), outline=(200, 200, 200), width=2)
    draw.polygon([(40, 180), (60, 110), (150, 70), (230, 60), (300, 100), (360, 140), (365, 180)], fill=upper)
    draw.polygon([(250, 90), (300, 100), (362, 140), (365, 180), (270, 180), (240, 140)], fill=overlay)
    draw.polygon([(40, 180), (60, 110), (110, 90), (120, 180)], fill=overlay)
    draw.line([(120, 160), (200, 120), (280, 110)], fill=overlay, width=12)
    for x in range(150, 240, 18):
        draw.line([(x, 75), (x + 20, 95)], fill=(255, 255, 255), width=4)
    return image


def colourways() -> list[Image.Image]:
    """The same shoe in 40 colourways: every upper with every overlay."""
    return [shoe(upper, overlay) for upper, overlay in itertools.product(UPPERS.values(), OVERLAYS.values())]


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """As a site serves it."""
    return encode(image, "JPEG", quality=quality)


def stored_hash(data: bytes) -> str:
    """The hash the scraper stores for downloaded bytes."""
    return clean_image(data, min_side=16).phash


def hue_turned(image: Image.Image, degrees: int) -> Image.Image:
    """Every hue turned by ``degrees``: the same shot, another colourway."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(degrees * 256 / 360)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def recoloured(image: Image.Image) -> Image.Image:
    """The shoe (pixels not near white) turned 120 degrees and given colour; the white kept."""
    shoe_pixels = np.asarray(image).min(axis=2) < 225
    hsv = np.asarray(image.convert("HSV")).astype(np.int16)
    hsv[..., 0] = np.where(shoe_pixels, (hsv[..., 0] + 85) % 256, hsv[..., 0])
    hsv[..., 1] = np.where(shoe_pixels, np.maximum(hsv[..., 1], 100), hsv[..., 1])
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def resized(image: Image.Image, factor: float) -> Image.Image:
    """Scaled by ``factor`` with Lanczos, as shops make their sizes."""
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)


def cropped(image: Image.Image) -> Image.Image:
    """5 % of width and height cut off, half on each side."""
    dx, dy = round(image.width * 0.025), round(image.height * 0.025)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def watermarked(image: Image.Image) -> Image.Image:
    """A shop's semi-transparent text along the bottom and a small red logo in a corner."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(10, image.height // 14))
    draw.text((image.width * 0.05, image.height * 0.86), "© sneakershop.example", font=font,
              fill=(255, 255, 255, 160), stroke_width=1, stroke_fill=(0, 0, 0, 120))
    r = max(3, min(image.size) // 24)
    draw.ellipse((image.width - 3 * r, r, image.width - r, 3 * r), fill=(220, 30, 40, 200))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg q50": lambda im: jpeg(im, 50),
    "jpeg q75": lambda im: jpeg(im, 75),
    "jpeg q95": lambda im: jpeg(im, 95),
    "png": lambda im: encode(im, "PNG"),
    "resize 0.5x": lambda im: jpeg(resized(im, 0.5)),
    "resize 0.75x": lambda im: jpeg(resized(im, 0.75)),
    "resize 1.5x": lambda im: jpeg(resized(im, 1.5)),
    "crop 5%": lambda im: jpeg(cropped(im)),
    "watermark": lambda im: jpeg(watermarked(im)),
}
COLOURWAYS: dict[str, Callable[[Image.Image], bytes]] = {
    "hue 30": lambda im: jpeg(hue_turned(im, 30)),
    "hue 60": lambda im: jpeg(hue_turned(im, 60)),
    "hue 90": lambda im: jpeg(hue_turned(im, 90)),
    "hue 180": lambda im: jpeg(hue_turned(im, 180)),
    "recoloured shoe": lambda im: jpeg(recoloured(im)),
}
ORIGINALS: dict[str, Callable[[], Image.Image]] = {
    "drawn shoe": lambda: shoe(UPPERS["pink"], OVERLAYS["grey"]),
    "chelsea": lambda: picture("chelsea").convert("RGB"),
}


def near(a: str, b: str) -> bool:
    """The scraper's rule with its default thresholds."""
    return is_near_duplicate(a, b, max_phash=NEAR_PHASH_DISTANCE, max_colour=NEAR_COLOUR_DISTANCE)


# --- pair by pair -------------------------------------------------------------------------------


@pytest.mark.parametrize("original", ORIGINALS)
@pytest.mark.parametrize("copy", COPIES)
def test_copies_of_a_photo_are_near_duplicates(original: str, copy: str) -> None:
    image = ORIGINALS[original]()
    assert near(stored_hash(jpeg(image, 92)), stored_hash(COPIES[copy](image)))


@pytest.mark.parametrize("original", ORIGINALS)
@pytest.mark.parametrize("colourway", COLOURWAYS)
def test_colourways_are_not_near_duplicates_though_their_phash_is_close(original: str, colourway: str) -> None:
    image = ORIGINALS[original]()
    a, b = stored_hash(jpeg(image, 92)), stored_hash(COLOURWAYS[colourway](image))
    assert phash_distance(a, b) <= NEAR_PHASH_DISTANCE  # pHash alone calls them the same picture
    assert not near(a, b)


def test_forty_colourways_of_one_shot_are_pairwise_distinct() -> None:
    hashes = [stored_hash(jpeg(image)) for image in colourways()]
    close = [(a, b) for a, b in itertools.combinations(hashes, 2) if phash_distance(a, b) <= OLD_DISTANCE]
    assert len(close) > 100  # pHash alone would merge a large part of them
    assert not any(near(a, b) for a, b in itertools.combinations(hashes, 2))


def test_the_stored_hash_holds_phash_and_colour_and_fits_the_column() -> None:
    value = image_hash(picture("coffee").convert("RGB"))
    phash, colour = split_hash(value)
    assert len(phash) == 16 and colour is not None and len(colour) == 34
    assert len(value) <= models.Image.__table__.c.phash.type.length
    assert split_hash(phash) == (phash, None)


# --- the index ------------------------------------------------------------------------------------


def test_index_keeps_forty_colourways_and_drops_exact_and_reencoded_copies() -> None:
    images = colourways()
    index = DedupeIndex([], NEAR_PHASH_DISTANCE, NEAR_COLOUR_DISTANCE)
    cleaned = [clean_image(jpeg(image), min_side=16) for image in images]
    assert [index.claim(c.sha1, c.phash) for c in cleaned] == [None] * 40
    assert index.claim(cleaned[0].sha1, cleaned[0].phash) == "exact"
    copy = clean_image(jpeg(images[0], 60), min_side=16)
    assert copy.sha1 != cleaned[0].sha1
    assert index.claim(copy.sha1, copy.phash) == "near"


def test_index_agrees_with_the_pairwise_rule() -> None:
    image = ORIGINALS["drawn shoe"]()
    candidates = [stored_hash(make(image)) for make in [*COPIES.values(), *COLOURWAYS.values()]]
    known = [stored_hash(jpeg(image, 92)), stored_hash(jpeg(shoe(UPPERS["blue"], OVERLAYS["black"])))]
    for i, value in enumerate(candidates):
        index = DedupeIndex([KnownImage(f"known-{n}", h) for n, h in enumerate(known)], NEAR_PHASH_DISTANCE)
        expected = "near" if any(near(value, other) for other in known) else None
        assert index.claim(f"candidate-{i}", value) == expected


def test_legacy_rows_with_a_bare_phash_dedupe_by_sha1_only() -> None:
    """No colour is known for them, and pHash alone cannot tell colourways apart: sha1 only."""
    image = ORIGINALS["drawn shoe"]()
    old = clean_image(jpeg(image), min_side=16)
    bare = split_hash(old.phash)[0]
    index = DedupeIndex([KnownImage(old.sha1, bare), KnownImage("user-photo", None)], NEAR_PHASH_DISTANCE)
    colourway = clean_image(COLOURWAYS["recoloured shoe"](image), min_side=16)
    reencoded = clean_image(jpeg(image, 60), min_side=16)
    assert phash_distance(bare, colourway.phash) <= OLD_DISTANCE  # a pHash-only rule would drop it
    assert phash_distance(bare, reencoded.phash) <= OLD_DISTANCE
    assert not near(bare, reencoded.phash)
    assert index.claim(old.sha1, old.phash) == "exact"
    assert index.claim(colourway.sha1, colourway.phash) is None
    assert index.claim(reencoded.sha1, reencoded.phash) is None  # caught from now on: it carries colour
    again = clean_image(jpeg(image, 50), min_side=16)
    assert index.claim(again.sha1, again.phash) == "near"


# --- a whole scrape -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop() -> Iterator[LocalServer]:
    """40 colourways of one shot, then an exact copy and a re-encoded copy of the first."""
    images = colourways()
    with running_server() as server:
        paths = [f"/img/colourway-{i}.jpg" for i in range(len(images))]
        for path, image in zip(paths, images, strict=False):
            server.add(path, jpeg(image), "image/jpeg")
        server.add("/img/copy.jpg", jpeg(images[0]), "image/jpeg")
        server.add("/img/reencoded.jpg", jpeg(images[0], 60), "image/jpeg")
        paths += ["/img/copy.jpg", "/img/reencoded.jpg"]
        server.add("/bing/images/search", bing_page([server.url(p) for p in paths]), "text/html; charset=utf-8")
        yield server


def scrape_config(server: LocalServer, images_dir: Path) -> ScrapeConfig:
    """Bing on the local server; one worker, so the originals are claimed before their copies."""
    return ScrapeConfig(
        images_dir=images_dir,
        sources=("bing",),
        source_settings=SourceSettings(bing_url=server.url("/bing/images/search"), timeout_s=5, max_pages=1),
        fetch=FetchSettings(timeout_s=5, allow_private=True, retries=0, host_delay_s=0.0),
        concurrency=1,
        min_side=32,
    )


def test_a_scrape_keeps_every_colourway_and_drops_the_copies(shop: LocalServer, tmp_path: Path) -> None:
    sink = MemorySink()
    report = Pipeline(scrape_config(shop, tmp_path), sink).run("nike_dunk_low", ["nike dunk low"], 50)
    assert report.found == 42 and report.downloaded == 42 and not report.failed
    assert report.stored == 40 and report.duplicates == 2 and report.near_duplicates == 1
    assert {r.source_url for r in sink.images} == {shop.url(f"/img/colourway-{i}.jpg") for i in range(40)}
    assert len(list((tmp_path / "nike_dunk_low").glob("*.jpg"))) == 40


# --- the database column --------------------------------------------------------------------------


@pytest.fixture
def migrated(database_url: str) -> Iterator[tuple[sessionmaker[Session], Engine]]:
    """Sessions on a database migrated to head, and its engine."""
    engine = init_db(database_url)
    yield session_factory(engine), engine
    engine.dispose()


def record(sha1: str, phash: str) -> ImageRecord:
    """A scraped image's record with the given hashes."""
    return ImageRecord(sha1, phash, f"nike_dunk_low/{sha1}.jpg", "nike_dunk_low", "train",
                       "https://shop.example/1.jpg", "nike dunk low", "bing", 400, 240)


def test_the_database_keeps_hashes_with_colour_and_legacy_ones(
    migrated: tuple[sessionmaker[Session], Engine], tmp_path: Path
) -> None:
    sessions, engine = migrated
    sink = DbImageSink(sessions, data_dir=tmp_path, images_dir=tmp_path / "images")
    full = image_hash(shoe(UPPERS["mint"], OVERLAYS["white"]))
    assert sink.add_image(record("a" * 40, full)) and sink.add_image(record("b" * 40, split_hash(full)[0]))
    assert sorted(sink.known_images(), key=lambda k: k.sha1) == [
        KnownImage("a" * 40, full), KnownImage("b" * 40, split_hash(full)[0])
    ]

    # Downgrading past the widening keeps the pHash of every row; upgrading again works.
    config = alembic_config(engine)
    command.downgrade(config, "0003")
    with sessions() as session:
        assert session.scalars(select(models.Image.phash).order_by(models.Image.sha1)).all() == [
            split_hash(full)[0], split_hash(full)[0]
        ]
    command.upgrade(config, "head")
