"""Gather labelled sneaker images from image search: no Telegram, no database.

Entry points build a ``ScrapeConfig`` from plain values and pass an ``ImageSink``;
``scrape`` (or ``Pipeline.run``) returns a ``ScrapeReport``.
"""

from scraper.pipeline import ImageRecord, ImageSink, KnownImage, Pipeline, ScrapeConfig, scrape
from scraper.report import ScrapeReport

__all__ = ["ImageRecord", "ImageSink", "KnownImage", "Pipeline", "ScrapeConfig", "ScrapeReport", "scrape"]
