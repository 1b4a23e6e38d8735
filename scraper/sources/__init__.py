"""Image search sources, each in its own module, built by name through the registry."""

from scraper.sources.base import (
    ImageItem,
    SearchResult,
    Source,
    SourceSettings,
    available_sources,
    create_source,
    register_module,
    register_source,
)

# The built-in sources, imported when first asked for: the Bing source never pulls in selenium.
register_module("bing", "scraper.sources.bing")
register_module("google", "scraper.sources.google")
register_module("google-selenium", "scraper.sources.google_selenium")

__all__ = [
    "ImageItem",
    "SearchResult",
    "Source",
    "SourceSettings",
    "available_sources",
    "create_source",
    "register_module",
    "register_source",
]
