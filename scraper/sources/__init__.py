"""Image search sources, each in its own module, built by name through the registry."""

from scraper.sources.base import (
    ImageItem,
    SearchResult,
    Source,
    SourceSettings,
    available_sources,
    create_source,
    register_source,
)

__all__ = [
    "ImageItem",
    "SearchResult",
    "Source",
    "SourceSettings",
    "available_sources",
    "create_source",
    "register_source",
]
