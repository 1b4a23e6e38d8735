"""What every search source shares: result types, the ``Source`` protocol and the registry.

A source turns a query into full-size image URLs. Parsing is a pure function from
HTML to ``ImageItem`` in each source's module (tested on saved pages); ``search``
only does the I/O around it. Sources are built by name through the registry, so
the order and the fallback are configuration, not code.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import requests

from scraper.errors import SourceError

if TYPE_CHECKING:
    from bs4 import Tag

DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


@dataclass(frozen=True)
class ImageItem:
    """One search hit: the full-size image URL and what we know around it."""

    url: str
    thumbnail_url: str | None = None
    page_url: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class SearchResult:
    """What a search returned; ``blocked`` means the engine refused us (CAPTCHA, JS wall)."""

    items: list[ImageItem]
    blocked: bool = False
    detail: str | None = None


@dataclass(frozen=True)
class SourceSettings:
    """Plain values every source may need; entry points fill it from their settings."""

    bing_url: str = "https://www.bing.com/images/search"
    google_url: str = "https://www.google.com/search"
    selenium_url: str | None = None
    chromium_path: str = "/usr/bin/chromium"
    chromedriver_path: str = "/usr/bin/chromedriver"
    user_agent: str = DEFAULT_USER_AGENT
    timeout_s: float = 15.0
    max_pages: int = 10
    selenium_max_rounds: int = 60
    selenium_settle_s: float = 1.5


class Source(Protocol):
    """A search engine adapter."""

    name: str

    def search(self, query: str, max_items: int) -> SearchResult:
        """Up to ``max_items`` distinct full-size image URLs for ``query``."""
        ...

    def close(self) -> None:
        """Release sessions or browsers."""
        ...


SourceFactory = Callable[[SourceSettings], Source]
_REGISTRY: dict[str, SourceFactory] = {}
_MODULES: dict[str, str] = {}  # name -> module that registers it on import (``register_module``)


def register_source(name: str) -> Callable[[SourceFactory], SourceFactory]:
    """Class or function decorator adding a source factory under ``name``."""

    def decorate(factory: SourceFactory) -> SourceFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_module(name: str, module: str) -> None:
    """Name a source whose module registers it when first asked for (``scraper.sources`` lists the built-ins).

    Why lazy: building the Bing source must not import selenium, which only the browser source needs.
    """
    _MODULES[name] = module


def available_sources() -> list[str]:
    """Names ``create_source`` accepts."""
    return sorted({*_REGISTRY, *_MODULES})


def create_source(name: str, settings: SourceSettings) -> Source:
    """Build a source by name; unknown names fail with the list of valid ones."""
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])  # its @register_source runs
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
    return factory(settings)


def dedupe_items(items: Iterable[ImageItem]) -> list[ImageItem]:
    """Keep the first item per URL, in order."""
    seen: set[str] = set()
    out: list[ImageItem] = []
    for item in items:
        if item.url not in seen:
            seen.add(item.url)
            out.append(item)
    return out


def is_http_url(url: str | None) -> bool:
    """True for absolute http(s) URLs, the only ones worth returning."""
    return bool(url) and url.lower().startswith(("http://", "https://"))  # type: ignore[union-attr]


def new_session(user_agent: str) -> requests.Session:
    """A session that looks like a browser to the search engine."""
    session = requests.Session()
    session.headers.update(
        {
            "User-Agent": user_agent,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "Accept-Language": "en-US,en;q=0.9",
        }
    )
    return session


def get_page(session: requests.Session, url: str, params: dict[str, str | int], timeout_s: float) -> requests.Response:
    """GET a results page; network errors become ``SourceError``."""
    try:
        return session.get(url, params=params, timeout=(min(timeout_s, 10.0), timeout_s))
    except requests.RequestException as exc:
        raise SourceError(f"{url}: {short_error(exc)}") from exc


class PagedHttpSource(ABC):
    """A search engine read over plain HTTP, one results page after another.

    Each engine says where its results are, how to ask for page ``n``, how a refusal
    looks and how to parse a page; when to stop is the same for all: at ``max_items``
    URLs, at a page that adds nothing new, or after ``max_pages``.
    """

    name: str

    def __init__(self, settings: SourceSettings) -> None:
        self._settings = settings
        self._session = new_session(settings.user_agent)

    def search(self, query: str, max_items: int) -> SearchResult:
        """Collect up to ``max_items`` URLs; a refused page ends the search as ``blocked`` with what came before."""
        collected: list[ImageItem] = []
        for page in range(self._settings.max_pages):
            params = self._page_params(query, page)
            response = get_page(self._session, self._results_url(), params, self._settings.timeout_s)
            if self._is_blocked(response):
                return SearchResult(collected, blocked=True, detail=f"HTTP {response.status_code} {response.url}")
            if response.status_code >= 400:
                raise SourceError(f"HTTP {response.status_code} from {response.url}")
            before = len(collected)
            collected = dedupe_items([*collected, *self._parse(response)])
            if len(collected) >= max_items or len(collected) == before:
                break
        return SearchResult(collected[:max_items])

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    @abstractmethod
    def _results_url(self) -> str:
        """The engine's results page, from the settings."""

    @abstractmethod
    def _page_params(self, query: str, page: int) -> dict[str, str | int]:
        """Query parameters for results page ``page`` (0-based) of ``query``."""

    @abstractmethod
    def _is_blocked(self, response: requests.Response) -> bool:
        """True when the engine answered with a CAPTCHA or a wall instead of results."""

    @abstractmethod
    def _parse(self, response: requests.Response) -> list[ImageItem]:
        """The page's items, by the module's pure ``parse``."""


def short_error(exc: BaseException) -> str:
    """One line for the report: the exception type and the innermost cause's first line."""
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def tag_attr(tag: Tag, key: str) -> str | None:
    """``tag``'s ``key`` attribute as text, None when absent. bs4 types every value as maybe a list (it splits
    multi-valued attributes such as ``class``); none the sources read is, but a list is joined back anyway."""
    value = tag.get(key)
    return " ".join(value) if isinstance(value, list) else value
