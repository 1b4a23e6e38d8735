"""Bing Images over plain HTTP: the source that still answers without a browser.

Each result is ``<a class="iusc" m="{json}">``; ``m`` holds ``murl`` (full-size
image), ``turl`` (thumbnail), ``purl`` (the page) and ``t`` (title). The same URL
comes back percent-encoded in several ``mediaurl=`` links per result, which we use
only as a fallback when ``m`` is missing or broken, and deduplicate.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import requests
from bs4 import BeautifulSoup

from scraper.sources.base import (
    ImageItem,
    PagedHttpSource,
    dedupe_items,
    is_http_url,
    register_source,
    tag_attr,
)

PAGE_SIZE = 35
_BLOCK_MARKERS = ("b_captcha", "/challenge/", "captcha-container", "verify you are a human")


def parse(html: str | bytes) -> list[ImageItem]:
    """Every full-size image URL on a Bing results page, in page order, without duplicates."""
    soup = BeautifulSoup(html, "lxml")
    items = [_item_from_meta(tag_attr(a, "m")) for a in soup.select("a.iusc")]
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
        for url in parse_qs(urlparse(tag_attr(link, "href") or "").query).get("mediaurl", []):
            if is_http_url(url):
                items.append(ImageItem(url=url))
    return items


@register_source("bing")
class BingSource(PagedHttpSource):
    """Pages through ``bing_url`` with ``first=``."""

    name = "bing"

    def _results_url(self) -> str:
        return self._settings.bing_url

    def _page_params(self, query: str, page: int) -> dict[str, str | int]:
        return {"q": query, "first": 1 + page * PAGE_SIZE, "count": PAGE_SIZE}

    def _is_blocked(self, response: requests.Response) -> bool:
        return is_blocked(response.content, response.status_code)

    def _parse(self, response: requests.Response) -> list[ImageItem]:
        return parse(response.content)
