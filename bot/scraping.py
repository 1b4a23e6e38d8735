"""The application side of the scraper: settings to config, the catalogue, the sink, the footwear check.

``scraper/`` knows nothing of settings, the database or the ML package; this is
where they meet. ``run_scrape`` is the one call the CLI and the scheduler's jobs
make for one label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from bot.settings import Settings
from bot.store.image_sink import DbImageSink
from bot.store.repositories import SneakerClassRepository
from scraper.catalogue import BUILTIN_CATALOGUE, CatalogueEntry, builtin_entry, default_queries
from scraper.fetch import FetchSettings
from scraper.pipeline import Classifier, Pipeline, Progress, ScrapeConfig
from scraper.report import ScrapeReport
from scraper.sources.base import SourceSettings

log = logging.getLogger(__name__)


def scrape_config(settings: Settings, *, sources: Sequence[str] | None = None) -> ScrapeConfig:
    """The scraper's plain configuration from the settings (``sources`` overrides the order)."""
    return ScrapeConfig(
        images_dir=settings.images_path,
        sources=tuple(sources or settings.scraper_sources),
        source_settings=SourceSettings(
            bing_url=settings.bing_url,
            google_url=settings.google_url,
            selenium_url=settings.selenium_url,
            chromium_path=settings.chromium_path,
            chromedriver_path=settings.chromedriver_path,
            timeout_s=settings.scraper_timeout_s,
        ),
        fetch=FetchSettings(
            timeout_s=settings.scraper_timeout_s,
            max_bytes=settings.scraper_max_bytes,
            allow_private=settings.scraper_allow_private,
            retries=settings.scraper_retries,
            host_delay_s=settings.scraper_host_delay_s,
        ),
        concurrency=settings.scraper_concurrency,
        min_side=settings.scraper_min_side,
        max_pixels=settings.max_image_pixels,
        phash_distance=settings.scraper_phash_distance,
        colour_distance=settings.scraper_colour_distance,
        classifier_concurrency=settings.scraper_classifier_concurrency,
    )


def seed_catalogue(sessions: sessionmaker[Session]) -> int:
    """Add the built-in classes missing from ``sneaker_classes``; admins' edits are kept. Returns how many."""
    with sessions.begin() as session:
        catalogue = SneakerClassRepository(session)
        present = catalogue.labels()
        missing = [entry for entry in BUILTIN_CATALOGUE if entry.label not in present]
        for entry in missing:
            catalogue.add(entry.label, entry.display_name, entry.queries)
    return len(missing)


def catalogue_entry(sessions: sessionmaker[Session], label: str) -> CatalogueEntry | None:
    """The class as admins left it in the database, else the built-in one, else None."""
    with sessions() as session:
        row = SneakerClassRepository(session).get(label)
        if row is not None:
            return CatalogueEntry(row.label, row.display_name, tuple(row.queries or default_queries(label)))
    return builtin_entry(label)


def footwear_classifier(settings: Settings) -> Classifier | None:
    """The ML footwear detector as a classifier, or None (with a warning) when it is unavailable.

    Imported lazily: the scraper must run where torch or the ML package is missing.
    """
    if not settings.scraper_footwear_check:
        return None
    try:
        from ml.footwear import FootwearDetector
    except ImportError as exc:
        log.warning("footwear check off: ml.footwear is unavailable (%s)", exc)
        return None
    try:
        detector = FootwearDetector.create(backbone=settings.backbone, cache_dir=settings.cache_path / "onnx")
    except Exception:  # no weights, broken install: scrape anyway, without the check
        log.warning("footwear check off: the detector did not load", exc_info=True)
        return None
    return detector.is_footwear


def run_scrape(
    settings: Settings,
    sessions: sessionmaker[Session],
    label: str,
    *,
    queries: Sequence[str] | None = None,
    max_items: int | None = None,
    sources: Sequence[str] | None = None,
    classifier: Classifier | None = None,
    progress: Progress | None = None,
) -> ScrapeReport:
    """Scrape one label: queries from the catalogue unless given, images and the report into the database."""
    entry = catalogue_entry(sessions, label)
    chosen = tuple(queries or (entry.queries if entry else default_queries(label)))
    sink = DbImageSink(sessions, data_dir=settings.data_dir, images_dir=settings.images_path)
    pipeline = Pipeline(scrape_config(settings, sources=sources), sink, classifier=classifier)
    return pipeline.run(label, chosen, max_items or settings.scraper_max_items, progress)
