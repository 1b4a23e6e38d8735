"""Helpers for the bot tests: the playground, a bot polling it, and a test user driving it over HTTP.

The test user only uses the playground's user API (the same one the web page uses); the
bot only uses the Bot API through python-telegram-bot. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker
from telegram.error import RetryAfter

from bot.app import BotRuntime, build_runtime, start_bot, stop_bot
from bot.playground import PlaygroundServer
from bot.services.models import ServedModel
from bot.settings import Settings

TOKEN = "123456:TEST-token"
WAIT = 20.0  # seconds to wait for a bot reply before failing
HTTP_TIMEOUT = 60.0  # upper bound for one user API call (a busy machine is slow; nothing asserts on speed)


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (320, 240), noise: int = 0) -> bytes:
    """A real JPEG of one colour (with optional seeded noise so each photo has its own hash)."""
    pixels = np.full((size[1], size[0], 3), color, dtype=np.uint8)
    if noise:
        rng = np.random.default_rng(noise)
        pixels = np.clip(pixels.astype(int) + rng.integers(-8, 9, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (200, 200)) -> bytes:
    """A real PNG."""
    return encoded(color, "PNG", size)


def encoded(color: tuple[int, int, int], image_format: str, size: tuple[int, int] = (200, 200)) -> bytes:
    """A real image file in ``image_format`` (PNG, WEBP, HEIF, ...)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, image_format)
    return buffer.getvalue()


def bot_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a bot under test: its own data dir and database, no rate limit surprises."""
    values: dict[str, Any] = {"data_dir": tmp_path / "var", "database_url": database_url,
                              "rate_limit_per_minute": 100, "poll_timeout_s": 2,
                              "search_url_template": "https://shop.example/search?q={query}"}
    values.update(overrides)
    return Settings(**values)


@dataclass
class BotUnderTest:
    """A running bot connected to a playground."""

    server: PlaygroundServer
    runtime: BotRuntime
    settings: Settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The bot's session factory, to check database rows."""
        return self.runtime.sessions


def colour_model(version: int = 1) -> ServedModel:
    """The colour test double (``ColourIdentifier``) served as model ``version``."""
    return ServedModel(version, ColourIdentifier())


@asynccontextmanager
async def running_bot(server: PlaygroundServer, settings: Settings,
                      served: ServedModel | None) -> AsyncIterator[BotUnderTest]:
    """A bot polling ``server`` for the ``async with`` block, stopped however the block ends (the server runs on).

    The real model loads when ``served`` is None. Tests that stop and start bots themselves
    (restarts, changed settings) use it inline; the others get one from their module's ``bot`` fixture.
    """
    runtime = await asyncio.to_thread(build_runtime, settings, served=served, api_root=server.url, token=TOKEN)
    await start_bot(runtime, poll_timeout=settings.poll_timeout_s)
    try:
        yield BotUnderTest(server, runtime, settings)
    finally:
        await stop_bot(runtime)


@asynccontextmanager
async def running_playground(**options: Any) -> AsyncIterator[PlaygroundServer]:
    """A started playground (the tests' Telegram) for the ``async with`` block; ``options`` go to the server."""
    server = PlaygroundServer(TOKEN, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def user_api(server: PlaygroundServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the playground, for ``TestUser``s (the user API is what the web chat uses)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        yield client


def retry_after_seconds(error: RetryAfter) -> float:
    """``RetryAfter.retry_after`` in seconds, whether python-telegram-bot gives an int or a ``timedelta``.

    PTB 22 returns an int unless ``PTB_TIMEDELTA`` is set; a later major version always returns a timedelta.
    """
    value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass
class TestUser:
    """A Telegram user in the playground, seen through the user API."""

    client: httpx.AsyncClient
    user_id: int
    cursor: int = 0
    backlog: list[dict] = field(default_factory=list)

    __test__ = False  # not a pytest class

    def _path(self, tail: str) -> str:
        return f"/playground/api/chats/{self.user_id}/{tail}"

    async def _post(self, tail: str, **kwargs: Any) -> Any:
        response = await self.client.post(self._path(tail), **kwargs)
        body = response.json()
        assert body["ok"], body
        return body["result"]

    async def send_text(self, text: str) -> dict:
        return (await self._post("messages", json={"text": text}))[0]

    async def send_kind(self, kind: str) -> dict:
        return (await self._post("messages", json={"kind": kind}))[0]

    async def send_photos(self, photos: Sequence[bytes]) -> list[dict]:
        files = [("photo", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
        return await self._post("messages", files=files)

    async def send_photo(self, data: bytes) -> dict:
        return (await self.send_photos([data]))[0]

    async def send_document(self, data: bytes, filename: str, mime_type: str) -> dict:
        return (await self._post("messages", files=[("document", (filename, data, mime_type))]))[0]

    async def press_data(self, message_id: int, data: str) -> str:
        return (await self._post("callback", json={"message_id": message_id, "data": data}))["callback_query_id"]

    async def press(self, message: dict, text: str) -> str:
        """Press the inline button whose text contains ``text``."""
        return await self.press_data(message["message_id"], button(message, text)["callback_data"])

    async def confirm(self, answer: dict) -> dict:
        """Press ✅ Correct on ``answer``; returns the edited message."""
        await self.press(answer, "Correct")
        return await self.edit()

    async def correct(self, answer: dict, choice: str) -> dict:
        """❌ Wrong (or "It is a sneaker", "It is one of yours"), then the list's button ``choice``; returns the
        message after that edit."""
        texts = button_texts(answer)
        wrong = next(label for label in ("Wrong", "It is a sneaker", "It is one of yours")
                     if any(label in text for text in texts))
        await self.press(answer, wrong)
        listing = await self.edit()
        await self.press(listing, choice)
        return await self.edit()

    async def next_event(self, *types: str, timeout: float = WAIT) -> dict:
        """The oldest unseen bot event of one of ``types`` in this chat (others stay for later calls).

        Updates are handled concurrently, so e.g. an edit may come before a slower photo answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for index, event in enumerate(self.backlog):
                if event["type"] in types:
                    return self.backlog.pop(index)
            remaining = deadline - loop.time()
            assert remaining > 0, f"no {types} event within {timeout}s"
            await self._fetch(min(remaining, 5))

    async def _fetch(self, wait: float) -> None:
        """Add new bot events to the backlog (waiting up to ``wait`` seconds for the first)."""
        response = await self.client.get(self._path("events"), params={"after": self.cursor, "timeout": wait})
        events = response.json()["result"]["events"]
        if events:
            self.cursor = events[-1]["seq"]
        self.backlog.extend(e for e in events if not _from_user(e))

    async def reply(self) -> dict:
        """The bot's next new message."""
        return (await self.next_event("message"))["message"]

    async def message_starting(self, *prefixes: str, timeout: float = WAIT) -> tuple[dict, list[str]]:
        """The first new message that starts with one of ``prefixes``, and the texts of those before it
        (a worker's progress reports before its result)."""
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event("message", timeout=max(deadline - loop.time(), 0.001))
            text = event["message"].get("text", "")
            if text.startswith(prefixes):
                return event["message"], seen
            seen.append(text)

    async def edit(self) -> dict:
        """The bot's next edit."""
        return (await self.next_event("edit"))["message"]

    async def alert(self) -> dict:
        """The bot's next answer to a button press."""
        return await self.next_event("callback_answer")

    async def quiet(self, seconds: float = 1.0) -> list[dict]:
        """New messages and edits not yet looked at, after ``seconds``: to check the bot said nothing more."""
        await asyncio.sleep(seconds)
        await self._fetch(0)
        said = [e for e in self.backlog if e["type"] in ("message", "edit")]
        self.backlog.clear()
        return said


def _from_user(event: dict) -> bool:
    """Events of the user's own messages."""
    message = event.get("message") or {}
    return event["type"] == "message" and not message.get("from", {}).get("is_bot", False)


def button(message: dict, text: str) -> dict:
    """The inline button whose text contains ``text``."""
    for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
        for item in row:
            if text in item["text"]:
                return item
    raise AssertionError(f"no button {text!r} in {message.get('reply_markup')}")


def button_texts(message: dict) -> list[str]:
    """All button texts, row by row."""
    return [item["text"] for row in (message.get("reply_markup") or {}).get("inline_keyboard", []) for item in row]


@dataclass(frozen=True)
class ClassInfo:
    label: str
    display_name: str


@dataclass(frozen=True)
class Guess:
    label: str
    display_name: str
    score: float


@dataclass(frozen=True)
class ColourPrediction:
    top: list[Guess]
    verdict: str
    footwear_score: float
    embedding: Any = None
    detail: str | None = None


class ColourIdentifier:
    """A deterministic test double for the ``Identifier`` protocol (tests only, until a real model is used).

    It reads the photo's mean colour: red means a confident "Air Jordan 11", blue an
    unsure guess, green a sneaker it does not know (Air Jordan 8 to 10 the closest),
    yellow a shoe that is not a sneaker ("other_footwear"), anything else "not a sneaker".
    It knows 20 models (three pages of buttons).
    """

    classes = [ClassInfo(f"air_jordan_{n}", f"Air Jordan {n}") for n in range(1, 21)]

    def predict(self, images: Sequence[Image.Image], k: int = 3) -> list[ColourPrediction]:
        return [self._one(np.asarray(image, dtype=float).reshape(-1, 3).mean(axis=0), k) for image in images]

    def _one(self, mean: np.ndarray, k: int) -> ColourPrediction:
        red, green, blue = mean
        if red > green + 60 and red > blue + 60:
            return ColourPrediction(self._top([11, 12, 13], [0.87, 0.06, 0.03], k), "sneaker", 0.95)
        if blue > red + 60 and blue > green + 60:
            return ColourPrediction(self._top([5, 6, 7], [0.41, 0.32, 0.12], k), "unsure", 0.7)
        if green > red + 60 and green > blue + 60:
            return ColourPrediction(self._top([8, 9, 10], [0.24, 0.19, 0.11], k), "unknown_sneaker", 0.9)
        if red > blue + 60 and green > blue + 60:
            return ColourPrediction(self._top([1, 2, 3], [0.3, 0.2, 0.1], k), "not_sneaker", 0.6,
                                    detail="other_footwear")
        return ColourPrediction(self._top([1, 2, 3], [0.2, 0.1, 0.05], k), "not_sneaker", 0.05)

    def _top(self, numbers: list[int], scores: list[float], k: int) -> list[Guess]:
        return [Guess(f"air_jordan_{n}", f"Air Jordan {n}", s) for n, s in zip(numbers[:k], scores[:k], strict=True)]


RED, BLUE, GREY = (200, 30, 30), (30, 40, 210), (128, 128, 128)
GREEN, YELLOW = (30, 190, 40), (210, 190, 30)  # an unknown sneaker, and a shoe that is not a sneaker


async def wait_until(check: Any, *, timeout: float = WAIT, what: str = "the condition") -> None:
    """Poll ``check()`` (a cheap state check: rows, counters) until it is true, failing after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.05)


async def updates_taken(server: PlaygroundServer, *, timeout: float = WAIT) -> None:
    """Wait until the bot has fetched and confirmed every update the playground queued for it."""
    await wait_until(lambda: not server.state.updates, timeout=timeout, what="the bot taking every update")
