"""Google Images in a real browser (Chromium via Selenium), as the original download_img2.py did.

Plain HTTP gets a CAPTCHA or a JavaScript wall; a browser gets results. We load the
results page, scroll to the bottom until the page stops growing, press "show more"
when it appears, and parse the rendered DOM with the same pure ``parse`` as the
HTTP source, so we collect past the first 100 results.

The driver is local Chromium with Debian's chromedriver (the ``Service`` path is
given, so selenium-manager never tries to download a browser or driver), or a
Selenium Grid when ``selenium_url`` is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlencode

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from scraper.errors import SourceError
from scraper.sources import google
from scraper.sources.base import ImageItem, SearchResult, SourceSettings, register_source

log = logging.getLogger(__name__)

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1600",
)
# Google's "Show more results" control over the years, and a plain text match.
SHOW_MORE_SELECTORS = (
    (By.CSS_SELECTOR, "input.mye4qd"),
    (By.CSS_SELECTOR, "[data-show-more], .show-more"),
    (By.XPATH, "//*[self::button or self::input or self::a or @role='button']"
               "[contains(translate(normalize-space(.), 'SHOWMRE', 'showmre'), 'show more')"
               " or contains(translate(@value, 'SHOWMRE', 'showmre'), 'show more')]"),
)

parse = google.parse


def chrome_options(settings: SourceSettings) -> webdriver.ChromeOptions:
    """Headless Chromium options shared by the local and the remote driver."""
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-agent={settings.user_agent}")
    options.page_load_strategy = "eager"
    return options


def create_driver(settings: SourceSettings) -> WebDriver:
    """A Remote driver when ``selenium_url`` is set, else local Chromium with an explicit chromedriver."""
    options = chrome_options(settings)
    try:
        if settings.selenium_url:
            driver: WebDriver = webdriver.Remote(command_executor=settings.selenium_url, options=options)
        else:
            options.binary_location = settings.chromium_path
            service = webdriver.ChromeService(executable_path=settings.chromedriver_path)
            driver = webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        raise SourceError(f"cannot start the browser: {_first_line(exc)}") from exc
    driver.set_page_load_timeout(settings.timeout_s * 2)
    return driver


def _first_line(exc: WebDriverException) -> str:
    """WebDriver messages carry session info and stack traces: keep the first line."""
    return (exc.msg or str(exc)).strip().splitlines()[0]


@register_source("google-selenium")
class GoogleSeleniumSource:
    """Scroll-and-"show more" collection in one browser, started on first use."""

    name = "google-selenium"

    def __init__(
        self, settings: SourceSettings, driver_factory: Callable[[SourceSettings], WebDriver] = create_driver
    ) -> None:
        self._settings = settings
        self._driver_factory = driver_factory
        self._driver: WebDriver | None = None

    def search(self, query: str, max_items: int) -> SearchResult:
        """Load the results, then grow the page until ``max_items`` or nothing new comes."""
        driver = self._get_driver()
        url = f"{self._settings.google_url}?{urlencode({'q': query, 'tbm': 'isch', 'udm': 2})}"
        try:
            driver.get(url)
            if google.is_captcha(driver.page_source, driver.current_url):
                return SearchResult([], blocked=True, detail=driver.current_url)
            items = self._collect(driver, max_items)
            if not items and google.is_blocked(driver.page_source, driver.current_url):
                return SearchResult([], blocked=True, detail=driver.current_url)
        except WebDriverException as exc:
            raise SourceError(f"browser failed on {url}: {_first_line(exc)}") from exc
        return SearchResult(items[:max_items])

    def _collect(self, driver: WebDriver, max_items: int) -> list[ImageItem]:
        """Scroll, press "show more", re-parse; stop when enough or two rounds bring nothing."""
        items = parse(driver.page_source, driver.current_url)
        idle_rounds = 0
        for _ in range(self._settings.selenium_max_rounds):
            if len(items) >= max_items or idle_rounds >= 2:
                break
            before, links = len(items), self._count_links(driver)
            self._scroll_to_bottom(driver)
            if not self._wait_for_growth(driver, links) and self._press_show_more(driver):
                self._wait_for_growth(driver, links)
            items = parse(driver.page_source, driver.current_url)
            idle_rounds = idle_rounds + 1 if len(items) == before else 0
        return items

    def _scroll_to_bottom(self, driver: WebDriver) -> None:
        """Trigger the page's infinite scroll."""
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")

    def _wait_for_growth(self, driver: WebDriver, links: int) -> bool:
        """Poll the DOM for more result links than ``links`` until ``selenium_settle_s`` passes."""
        deadline = time.monotonic() + self._settings.selenium_settle_s
        while time.monotonic() < deadline:
            if self._count_links(driver) > links:
                return True
            time.sleep(0.1)
        return False

    @staticmethod
    def _count_links(driver: WebDriver) -> int:
        """Cheap in-browser count of result links, to avoid re-parsing the page while polling."""
        return int(driver.execute_script("return document.querySelectorAll('a[href*=\"imgurl=\"]').length;") or 0)

    @staticmethod
    def _press_show_more(driver: WebDriver) -> bool:
        """Click the first visible "show more" control; False when there is none."""
        for by, selector in SHOW_MORE_SELECTORS:
            for element in driver.find_elements(by, selector):
                if element.is_displayed() and element.is_enabled():
                    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
                    element.click()
                    return True
        return False

    def _get_driver(self) -> WebDriver:
        """Start the browser lazily: constructing the source must stay cheap."""
        if self._driver is None:
            self._driver = self._driver_factory(self._settings)
        return self._driver

    def close(self) -> None:
        """Quit the browser."""
        if self._driver is not None:
            try:
                self._driver.quit()
            finally:
                self._driver = None
