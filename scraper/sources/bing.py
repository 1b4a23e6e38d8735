"""Bing Images over plain HTTP: the source that still answers without a browser.

Each result is ``<a class="iusc" m="{json}">``; ``m`` holds ``murl`` (full-size
image), ``turl`` (thumbnail), ``purl`` (the page) and ``t`` (title). The same URL
comes back percent-encoded in several ``mediaurl=`` links per result, which we use
only as a fallback when ``m`` is missing or broken, and deduplicate.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

from bs4 import BeautifulSoup

from scraper.errors import SourceError
from scraper.sources.base import (
    ImageItem,
    SearchResult,
    SourceSettings,
    dedupe_items,
    get_page,
    is_http_url,
    new_session,
    register_source,
)

PAGE_SIZE = 35
_BLOCK_MARKERS = ("b_captcha", "/challenge/", "captcha-container", "verify you are a human")


def parse(html: str | bytes) -> list[ImageItem]:
    """Every full-size image URL on a Bing results page, in page order, without duplicates."""
    soup = BeautifulSoup(html, "lxml")
    items = [_item_from_meta(a.get("m")) for a in soup.select("a.iusc")]
    items.extend(_items_from_mediaurl_links(soup))
    return dedupe_items(item for item in items if item is not None)


def is_blocked(html: str | bytes, status: int = 200) -> bool:
    """A CAPTCHA or rate-limit answer instead of results."""
    if status in (403, 429):
        return True
    text = html.decode("utf-8", "replace") if isinstance(html, bytes) else html
    lowered = text.lower()
    return 'class="iusc"' not in text and any(marker in lowered for marker in _BLOCK_MARKERS)


def _item_from_meta(raw: str | None) -> ImageItem | None:
    """The ``m`` attribute's JSON, or None when absent or not JSON."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    url = meta.get("murl")
    if not is_http_url(url):
        return None
    return ImageItem(url=url, thumbnail_url=meta.get("turl"), page_url=meta.get("purl"), title=meta.get("t"))


def _items_from_mediaurl_links(soup: BeautifulSoup) -> list[ImageItem]:
    """Full-size URLs carried percent-encoded in detail-view links."""
    items = []
    for link in soup.find_all(href=True):
        for url in parse_qs(urlparse(link["href"]).query).get("mediaurl", []):
            if is_http_url(url):
                items.append(ImageItem(url=url))
    return items


@register_source("bing")
class BingSource:
    """Pages through ``bing_url`` with ``first=`` until enough items or no new ones."""

    name = "bing"

    def __init__(self, settings: SourceSettings) -> None:
        self._settings = settings
        self._session = new_session(settings.user_agent)

    def search(self, query: str, max_items: int) -> SearchResult:
        """Collect up to ``max_items`` URLs; a blocked first page reports ``blocked``."""
        collected: list[ImageItem] = []
        for page in range(self._settings.max_pages):
            params: dict[str, str | int] = {"q": query, "first": 1 + page * PAGE_SIZE, "count": PAGE_SIZE}
            response = get_page(self._session, self._settings.bing_url, params, self._settings.timeout_s)
            if is_blocked(response.content, response.status_code):
                return SearchResult(collected, blocked=True, detail=f"HTTP {response.status_code} {response.url}")
            if response.status_code >= 400:
                raise SourceError(f"HTTP {response.status_code} from {response.url}")
            before = len(collected)
            collected = dedupe_items([*collected, *parse(response.content)])
            if len(collected) >= max_items or len(collected) == before:
                break
        return SearchResult(collected[:max_items])

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()
