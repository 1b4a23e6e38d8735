"""A sink that keeps records in memory: for scripts, the benchmark and runs without a database."""

from __future__ import annotations

from collections.abc import Iterable

from scraper.pipeline import ImageRecord, KnownImage
from scraper.report import ScrapeReport


class MemorySink:
    """``ImageSink`` on plain lists; seed it with ``known`` to dedupe against earlier images."""

    def __init__(self, known: Iterable[KnownImage] = ()) -> None:
        self.known = list(known)
        self.images: list[ImageRecord] = []
        self.runs: list[ScrapeReport] = []

    def known_images(self) -> Iterable[KnownImage]:
        """Seeded images plus everything recorded so far."""
        return [*self.known, *(KnownImage(r.sha1, r.phash) for r in self.images)]

    def add_image(self, record: ImageRecord) -> bool:
        """Append unless the sha1 is already there."""
        if any(r.sha1 == record.sha1 for r in self.images) or any(k.sha1 == record.sha1 for k in self.known):
            return False
        self.images.append(record)
        return True

    def add_run(self, report: ScrapeReport) -> None:
        """Keep the report."""
        self.runs.append(report)
