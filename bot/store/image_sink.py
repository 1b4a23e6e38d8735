"""The scraper's ``ImageSink`` on the database: ``images`` rows and ``scrape_runs`` reports.

The pipeline calls the sink from one thread; each call is its own short
transaction, so a long run never holds the database. Paths in the ``images``
table are relative to the data directory, while the scraper speaks of paths
relative to the images directory: the sink translates.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.store.models import Image, ScrapeRun
from scraper.pipeline import ImageRecord, KnownImage
from scraper.report import ScrapeReport

SOURCE_SCRAPER = "scraper"


class DbImageSink:
    """Records scraped images and runs through ``sessions``."""

    def __init__(self, sessions: sessionmaker[Session], *, data_dir: Path, images_dir: Path) -> None:
        self._sessions = sessions
        self._data_dir = data_dir.resolve()
        self._images_dir = images_dir.resolve()

    def known_images(self) -> Iterable[KnownImage]:
        """Every image in the table (users', datasets', earlier scrapes'), for deduplication."""
        with self._sessions() as session:
            rows = session.execute(select(Image.sha1, Image.phash)).all()
        return [KnownImage(sha1, phash) for sha1, phash in rows]

    def add_image(self, record: ImageRecord) -> bool:
        """Insert one row; False when the sha1 is already there (another run stored it first)."""
        image = Image(
            sha1=record.sha1,
            phash=record.phash,
            path=self._store_path(record.path),
            label=record.label,
            source=SOURCE_SCRAPER,
            status=record.status,
            source_url=record.source_url,
            query=record.query,
            scraper_source=record.scraper_source,
            width=record.width,
            height=record.height,
        )
        try:
            with self._sessions.begin() as session:
                session.add(image)
        except IntegrityError:
            return False
        return True

    def add_run(self, report: ScrapeReport) -> None:
        """Insert the run and its JSON report."""
        with self._sessions.begin() as session:
            session.add(
                ScrapeRun(
                    label=report.label,
                    report=report.to_dict(),
                    started_at=report.started_at,
                    finished_at=report.finished_at,
                )
            )

    def _store_path(self, relative_to_images: str) -> str:
        """The path as the ``images`` table keeps it: relative to the data dir when inside it."""
        absolute = self._images_dir / relative_to_images
        try:
            return absolute.relative_to(self._data_dir).as_posix()
        except ValueError:
            return os.fspath(absolute)
