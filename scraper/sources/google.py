"""Google Images over plain HTTP, as the original project did, and how it fails today.

Google now answers most plain HTTP image searches with a ``/sorry/`` CAPTCHA page or
a page that needs JavaScript. ``is_blocked`` recognises those, so the run reports
the source as blocked instead of "0 images found" and falls back to the next one.
Where a results page does come back, ``parse`` takes full-size URLs from:

- ``/imgres?imgurl=...`` links (the classic and the rendered-DOM layout),
- ``["https://full/size.jpg", height, width]`` arrays in the script data,
- legacy ``rg_meta`` JSON (``"ou"``) and ``data-ou`` attributes.

Thumbnails on Google's own hosts (``encrypted-tbn*.gstatic.com``) are skipped.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urljoin, urlparse

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

PAGE_SIZE = 100
# ["https://host/path.jpg",600,800] inside AF_initDataCallback / JSON blobs.
_SCRIPT_IMAGE = re.compile(r'\["(https?://(?:[^"\\]|\\.)+?)",(\d+),(\d+)\]')
_GOOGLE_HOSTS = ("gstatic.com", "google.com", "googleusercontent.com", "googleapis.com")
_CAPTCHA_MARKERS = ('id="captcha-form"', "g-recaptcha", "/sorry/index", "unusual traffic from your computer")
_JS_WALL_MARKERS = ("/httpservice/retry/enablejs", "enable javascript", "turn on javascript", "javascript is disabled")


def parse(html: str | bytes, base_url: str = "https://www.google.com/") -> list[ImageItem]:
    """Every full-size image URL on a Google Images results page, in page order, deduplicated."""
    soup = BeautifulSoup(html, "lxml")
    items = [*_from_imgres_links(soup, base_url), *_from_scripts(soup), *_from_legacy_meta(soup)]
    return dedupe_items(item for item in items if is_http_url(item.url) and not _is_google_host(item.url))


def is_blocked(html: str | bytes, url: str = "", status: int = 200) -> bool:
    """A CAPTCHA, a rate limit, or a JavaScript wall with no results in it."""
    if is_captcha(html, url, status):
        return True
    text = _lower_text(html)
    return any(marker in text for marker in _JS_WALL_MARKERS) and not parse(html)


def is_captcha(html: str | bytes, url: str = "", status: int = 200) -> bool:
    """The ``/sorry/`` CAPTCHA or a rate limit: blocked whatever else the page holds."""
    if status == 429 or "/sorry/" in urlparse(url).path:
        return True
    text = _lower_text(html)
    return any(marker.lower() in text for marker in _CAPTCHA_MARKERS)


def _lower_text(html: str | bytes) -> str:
    return (html.decode("utf-8", "replace") if isinstance(html, bytes) else html).lower()


def _from_imgres_links(soup: BeautifulSoup, base_url: str) -> list[ImageItem]:
    """``<a href="/imgres?imgurl=...&imgrefurl=...">`` links."""
    items = []
    for link in soup.find_all("a", href=True):
        href = urljoin(base_url, tag_attr(link, "href") or "")
        if "imgurl=" not in href:
            continue
        query = parse_qs(urlparse(href).query)
        page_urls = query.get("imgrefurl")
        for url in query.get("imgurl", []):
            thumb = link.find("img")
            items.append(
                ImageItem(
                    url=url,
                    page_url=page_urls[0] if page_urls else None,
                    thumbnail_url=(tag_attr(thumb, "src") or tag_attr(thumb, "data-src")) if thumb else None,
                    title=tag_attr(link, "aria-label") or tag_attr(link, "title"),
                )
            )
    return items


def _from_scripts(soup: BeautifulSoup) -> list[ImageItem]:
    """``["url", h, w]`` triples in inline script data; JSON string escapes decoded."""
    items = []
    for script in soup.find_all("script"):
        for match in _SCRIPT_IMAGE.finditer(script.string or ""):
            try:
                url = json.loads(f'"{match.group(1)}"')
            except ValueError:
                continue
            items.append(ImageItem(url=url))
    return items


def _from_legacy_meta(soup: BeautifulSoup) -> list[ImageItem]:
    """The pre-2019 layout: ``div.rg_meta`` JSON with ``ou``, and ``data-ou`` attributes."""
    items = []
    for div in soup.select("div.rg_meta"):
        try:
            meta = json.loads(div.get_text())
        except ValueError:
            continue
        if meta.get("ou"):
            items.append(ImageItem(url=meta["ou"], page_url=meta.get("ru"), title=meta.get("pt")))
    # ``name=None`` spelled out: bs4's overloads type ``attrs`` only after a name.
    for tag in soup.find_all(None, {"data-ou": True}):
        url = tag_attr(tag, "data-ou")
        if url is not None:  # always, the search asked for the attribute
            items.append(ImageItem(url=url))
    return items


def _is_google_host(url: str) -> bool:
    """Thumbnails and redirects on Google's own hosts are not the full-size image."""
    host = (urlparse(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in _GOOGLE_HOSTS)


@register_source("google")
class GoogleSource(PagedHttpSource):
    """One plain HTTP request per page to ``google_url`` with ``tbm=isch``."""

    name = "google"

    def _results_url(self) -> str:
        return self._settings.google_url

    def _page_params(self, query: str, page: int) -> dict[str, str | int]:
        return {"q": query, "tbm": "isch", "udm": 2, "ijn": page, "start": page * PAGE_SIZE}

    def _is_blocked(self, response: requests.Response) -> bool:
        return is_blocked(response.content, response.url, response.status_code)

    def _parse(self, response: requests.Response) -> list[ImageItem]:
        return parse(response.content, response.url)
