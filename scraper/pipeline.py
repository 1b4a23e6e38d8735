"""The scrape pipeline: search, download, verify, dedupe, footwear check, store, report.

Fetch, parse and store are separate steps (sources parse, ``fetch`` downloads,
this module decides). Workers in a bounded thread pool download and clean images
and claim them in a shared dedupe index under a lock, so two threads never store
the same picture; the calling thread alone talks to the sink (the database) and
updates the report, so sinks need not be thread-safe.

Files: ``<images_dir>/<label>/<sha1>.jpg`` for accepted images and
``<images_dir>/_review/<label>/<sha1>.jpg`` for the ones the footwear check
refused (status ``review``): never training data until someone looks.

One run at a time per images directory is assumed (the scheduler's job has
``max_instances=1``). Two concurrent runs stay consistent in the database (sha1 is
unique there and the loser counts a duplicate), but the loser removes the file it
wrote, which in a narrow race may be the one the winner recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import imagehash
import numpy as np
from PIL import Image

from ml.atomic import atomic_write_bytes
from scraper.catalogue import is_valid_label
from scraper.errors import ScraperError, SourceError
from scraper.fetch import Fetcher, FetchSettings
from scraper.images import (
    COLOUR_BINS,
    NEAR_COLOUR_DISTANCE,
    NEAR_PHASH_DISTANCE,
    PHASH_BITS,
    CleanImage,
    clean_image,
    colour_roots,
    split_hash,
)
from scraper.report import ScrapeReport, SourceReport
from scraper.sources.base import ImageItem, Source, SourceSettings, available_sources, create_source

log = logging.getLogger(__name__)

Classifier = Callable[[Image.Image], bool]
"""True when the image shows footwear; False sends it to review.

Called by at most ``ScrapeConfig.classifier_concurrency`` threads at once (default one)."""
SourceFactory = Callable[[str, SourceSettings], Source]
Progress = Callable[[ScrapeReport], None]

REVIEW_DIR = "_review"


class ImageStatus(StrEnum):
    """A scraped image's status (the ``images.status`` column; members are its strings)."""

    TRAIN = "train"  # training data
    REVIEW = "review"  # the footwear check refused it: under ``_review/`` until someone looks


STATUS_TRAIN = ImageStatus.TRAIN
STATUS_REVIEW = ImageStatus.REVIEW


@dataclass(frozen=True)
class ScrapeConfig:
    """Everything a run needs, as plain values (entry points build it from their settings)."""

    images_dir: Path
    sources: tuple[str, ...] = ("bing", "google", "google-selenium")
    source_settings: SourceSettings = field(default_factory=SourceSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    concurrency: int = 8
    min_side: int = 64
    max_pixels: int = 40_000_000
    # Near-duplicate: pHash within phash_distance (of 64 bits) AND colour signatures within
    # colour_distance (Hellinger, 0..1); chosen by bench.dedupe, see scraper.images.
    phash_distance: int = NEAR_PHASH_DISTANCE
    colour_distance: float = NEAR_COLOUR_DISTANCE
    # How many worker threads may call the classifier at once: 1 unless it is known to be
    # thread-safe (an ONNX Runtime session is; a torch module with its own threads gains nothing).
    classifier_concurrency: int = 1


@dataclass(frozen=True)
class ImageRecord:
    """One stored image, as the sink records it; ``path`` is relative to ``images_dir``.

    ``phash`` is ``"<phash hex>:<colour signature hex>"`` (``scraper.images.image_hash``).
    """

    sha1: str
    phash: str
    path: str
    label: str
    status: ImageStatus
    source_url: str
    query: str
    scraper_source: str
    width: int
    height: int


@dataclass(frozen=True)
class KnownImage:
    """An image the sink already has, for deduplication across runs.

    ``phash`` as in ``ImageRecord``; rows stored before colour signatures hold a bare pHash,
    and images from elsewhere (users, datasets) none.
    """

    sha1: str
    phash: str | None


class ImageSink(Protocol):
    """Where the pipeline records images and runs (``bot/store`` implements it on the database)."""

    def known_images(self) -> Iterable[KnownImage]:
        """Every image already recorded, whatever its label or status."""
        ...

    def add_image(self, record: ImageRecord) -> bool:
        """Record one image; False when its sha1 is already recorded (a concurrent run won)."""
        ...

    def add_run(self, report: ScrapeReport) -> None:
        """Record the finished run's report."""
        ...


@dataclass(frozen=True)
class Candidate:
    """A search hit to download, with where it came from."""

    item: ImageItem
    query: str
    source: str


@dataclass(frozen=True)
class Outcome:
    """What happened to one candidate in a worker."""

    candidate: Candidate
    downloaded: bool = False
    failure: str | None = None
    duplicate: str | None = None  # "exact" | "near"
    record: ImageRecord | None = None
    created: Path | None = None


class DedupeIndex:
    """sha1 set plus near-duplicate hashes; ``claim`` is atomic across worker threads.

    A near-duplicate has its pHash within ``max_distance`` AND its colour signature within
    ``max_colour_distance`` of a known image (``scraper.images.is_near_duplicate``, the same
    rule pair by pair): pHash alone merged distinct colourways of one shoe shot the same way.

    Known images with a bare pHash (stored before colour signatures) are deduplicated by sha1
    only. Measured (``bench.dedupe``), a pHash-only rule even at distance 0 drops a quarter of
    the hue-turned and recoloured copies, and of the 16 real photo pairs at distance 0, 13 are
    not pixel copies (by eye, 11 are different shoes or colourways). Missing a re-encoded copy
    of an old image once costs less than losing a colourway, and the copy then stored carries
    colour, so the copies after it are caught.

    All known pHashes are compared at once: the same count of differing bits that
    ``imagehash.ImageHash.__sub__`` makes, on the same bit arrays (``hex_to_hash(...).hash``),
    in one numpy call for every row. A Python loop of ``ImageHash`` subtractions took 28 ms per
    claim at 10 000 known images, held under the lock that serialises the workers; this 0.5 ms.
    """

    def __init__(
        self, known: Iterable[KnownImage], max_distance: int, max_colour_distance: float = NEAR_COLOUR_DISTANCE
    ) -> None:
        """Index ``known`` once: hashes parsed into arrays, so each claim is one comparison per array."""
        self._sha1s: set[str] = set()
        self._max_distance = max_distance
        self._max_colour = max_colour_distance
        self._lock = threading.Lock()
        parsed: list[tuple[np.ndarray, np.ndarray]] = []
        for image in known:
            self._sha1s.add(image.sha1)
            hashes = _parse_hash(image.phash)
            if hashes is not None:
                parsed.append(hashes)
        self._bits = np.array([bits for bits, _ in parsed], dtype=bool).reshape(-1, PHASH_BITS)
        self._roots = np.array([roots for _, roots in parsed], dtype=np.float64).reshape(-1, COLOUR_BINS)

    def claim(self, sha1: str, phash: str) -> str | None:
        """Reserve the image; returns "exact" or "near" when it is a duplicate instead."""
        hashes = _parse_hash(phash)
        with self._lock:
            if sha1 in self._sha1s:
                return "exact"
            if hashes is not None and self._is_near(*hashes):
                return "near"
            self._sha1s.add(sha1)
            if hashes is not None:
                self._bits = np.vstack([self._bits, hashes[0]])
                self._roots = np.vstack([self._roots, hashes[1]])
            return None

    def _is_near(self, bits: np.ndarray, roots: np.ndarray) -> bool:
        """Any known image within both distances (caller holds the lock)."""
        close = np.count_nonzero(self._bits != bits, axis=1) <= self._max_distance
        if not close.any():
            return False
        colour = np.linalg.norm(self._roots[close] - roots, axis=1) / np.sqrt(2)
        return bool((colour <= self._max_colour).any())


def _parse_hash(value: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(pHash bits, colour square roots) of a stored hash; None without colour (sha1 dedupe only)."""
    phash, colour = split_hash(value or "")
    if colour is None:
        return None
    bits, roots = imagehash.hex_to_hash(phash).hash.flatten(), colour_roots(colour)
    return (bits, roots) if bits.size == PHASH_BITS and roots.size == COLOUR_BINS else None


class Pipeline:
    """One configured scraper; ``run`` may be called for several labels in turn."""

    def __init__(
        self,
        config: ScrapeConfig,
        sink: ImageSink,
        *,
        classifier: Classifier | None = None,
        source_factory: SourceFactory = create_source,
    ) -> None:
        if source_factory is create_source:
            _check_source_names(config.sources)
        self.config = config
        self._sink = sink
        self._classifier = classifier
        self._classifier_slots = threading.BoundedSemaphore(max(1, config.classifier_concurrency))
        self._source_factory = source_factory

    def run(self, label: str, queries: Sequence[str], max_items: int, progress: Progress | None = None) -> ScrapeReport:
        """Scrape up to ``max_items`` search results for ``label`` and report what became of each."""
        if not is_valid_label(label):
            raise ValueError(f"invalid label {label!r}: use lowercase letters, digits and underscores")
        if not queries:
            raise ValueError("at least one query is needed")
        report = ScrapeReport(label=label, queries=list(queries))
        candidates = self._search(queries, max_items, report)
        report.found = len(candidates)
        _notify(progress, report)
        if candidates:
            self._process_all(label, candidates, report, progress)
        report.finished_at = datetime.now(UTC)
        self._sink.add_run(report)
        return report

    # --- search -------------------------------------------------------------

    def _search(self, queries: Sequence[str], max_items: int, report: ScrapeReport) -> list[Candidate]:
        """Sources in order; fall back to the next one only when one is blocked, fails or finds nothing."""
        report.sources = {name: SourceReport(name) for name in self.config.sources}
        candidates: dict[str, Candidate] = {}
        for name in self.config.sources:
            source_report = report.sources[name]
            source_report.tried = True
            before = len(candidates)
            self._search_one(name, queries, max_items, candidates, source_report)
            source_report.found = len(candidates) - before
            settled = source_report.found and not (source_report.blocked or source_report.error)
            if len(candidates) >= max_items or settled:
                break
        return list(candidates.values())[:max_items]

    def _search_one(
        self, name: str, queries: Sequence[str], max_items: int, candidates: dict[str, Candidate], report: SourceReport
    ) -> None:
        """All queries on one source, adding new URLs to ``candidates``; errors land in ``report``."""
        source: Source | None = None
        try:
            source = self._source_factory(name, self.config.source_settings)
            for query in queries:
                result = source.search(query, max_items - len(candidates))
                for item in result.items:
                    candidates.setdefault(item.url, Candidate(item, query, name))
                if result.blocked:
                    report.blocked = True
                    log.warning("source %s is blocked (%s)", name, result.detail)
                    return
                if len(candidates) >= max_items:
                    return
        except SourceError as exc:
            report.error = str(exc)
            log.warning("source %s failed: %s", name, exc)
        finally:
            if source is not None:
                source.close()

    # --- download and store ---------------------------------------------------

    def _process_all(
        self, label: str, candidates: list[Candidate], report: ScrapeReport, progress: Progress | None
    ) -> None:
        """Workers download and file; this thread records and counts."""
        index = DedupeIndex(self._sink.known_images(), self.config.phash_distance, self.config.colour_distance)
        fetcher = Fetcher(self.config.fetch)
        try:
            with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency), thread_name_prefix="scrape") as pool:
                futures = [pool.submit(self._process, label, candidate, fetcher, index) for candidate in candidates]
                for future in as_completed(futures):
                    self._record(future.result(), report)
                    _notify(progress, report)
        finally:
            fetcher.close()

    def _process(self, label: str, candidate: Candidate, fetcher: Fetcher, index: DedupeIndex) -> Outcome:
        """Download, clean, dedupe, classify and write one image (runs in a worker thread)."""
        try:
            download = fetcher.fetch(candidate.item.url)
        except ScraperError as exc:
            return Outcome(candidate, failure=exc.reason)
        try:
            image = clean_image(download.content, min_side=self.config.min_side, max_pixels=self.config.max_pixels)
        except ScraperError as exc:
            return Outcome(candidate, downloaded=True, failure=exc.reason)
        duplicate = index.claim(image.sha1, image.phash)
        if duplicate:
            return Outcome(candidate, downloaded=True, duplicate=duplicate)
        status = STATUS_TRAIN if self._is_footwear(image) else STATUS_REVIEW
        folder = Path(label) if status == STATUS_TRAIN else Path(REVIEW_DIR, label)
        relative = folder / f"{image.sha1}.jpg"
        created = _write_atomic(self.config.images_dir / relative, image.jpeg)
        record = ImageRecord(
            sha1=image.sha1,
            phash=image.phash,
            path=relative.as_posix(),
            label=label,
            status=status,
            source_url=candidate.item.url,
            query=candidate.query,
            scraper_source=candidate.source,
            width=image.size[0],
            height=image.size[1],
        )
        return Outcome(candidate, downloaded=True, record=record, created=created)

    def _is_footwear(self, image: CleanImage) -> bool:
        """The classifier's verdict; no classifier accepts everything, a crashing one sends to review."""
        if self._classifier is None:
            return True
        try:
            with self._classifier_slots:
                return bool(self._classifier(image.image))
        except Exception:
            log.exception("footwear classifier failed; sending the image to review")
            return False

    def _record(self, outcome: Outcome, report: ScrapeReport) -> None:
        """Count one outcome and record a new image in the sink."""
        report.downloaded += outcome.downloaded
        if outcome.failure:
            report.failed[outcome.failure] += 1
        elif outcome.duplicate or (outcome.record and not self._sink.add_image(outcome.record)):
            report.duplicates += 1
            report.near_duplicates += outcome.duplicate == "near"
            if outcome.created is not None:
                outcome.created.unlink(missing_ok=True)
        elif outcome.record and outcome.record.status == STATUS_REVIEW:
            report.rejected += 1
        else:
            report.stored += 1


def _write_atomic(path: Path, data: bytes) -> Path | None:
    """Write via a temporary file and rename, so a crash never leaves half a JPEG; None if it existed."""
    if path.exists():
        return None
    return atomic_write_bytes(path, data)


def _check_source_names(names: Sequence[str]) -> None:
    """Fail before any network work when the configured order names an unknown source."""
    unknown = [name for name in names if name not in available_sources()]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; available: {', '.join(available_sources())}")


def _notify(progress: Progress | None, report: ScrapeReport) -> None:
    if progress is not None:
        progress(report)


def scrape(
    label: str,
    queries: Sequence[str],
    max_items: int,
    config: ScrapeConfig,
    sink: ImageSink,
    *,
    classifier: Classifier | None = None,
    progress: Progress | None = None,
) -> ScrapeReport:
    """The Python API the scheduler and the CLI call: one run for one label."""
    return Pipeline(config, sink, classifier=classifier).run(label, queries, max_items, progress)
