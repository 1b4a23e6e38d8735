"""Growing the catalogue as an admin would: ``/addclass`` → scrape → retrain → the new model names it.

A fresh install: the shipped starter model (32 Air Jordan classes), a temporary working
directory with no dataset anywhere near it, the bot polling the local Bot API server and
``sneakerbot worker`` in its own process. A local Bing-like search server serves 48
colourways of a shoe the starter never saw (generated: one silhouette, every colourway
different), all of which the scraper must keep. The retrain has only what the starter
carries plus those photos; the promoted model must keep every Air Jordan and name a
colourway nobody scraped.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from bot.playground import PlaygroundServer
from bot.settings import STARTER_MODEL_DIR, get_settings
from bot.store.models import Image as ImageRow
from bot.store.models import ModelVersion, Prediction

from bot_harness import BotUnderTest, TestUser, bot_settings, running_bot
from loop_support import worker_process
from scraper_support import LocalServer, bing_page, encode, running_server, send

ADMIN = 4242
LABEL, NAME = "nike_dunk_low", "Nike Dunk Low"
WAIT_S = 600  # an upper bound for the whole loop on a busy machine; nothing asserts on speed
HUES = 12
TONES = [(0.85, 0.9), (0.45, 0.95), (0.9, 0.45), (0.3, 0.6)]  # (saturation, value) of the upper

pytestmark = pytest.mark.slow


def colourway(hue: float, saturation: float, value: float, stripe_hue: float) -> Image.Image:
    """One colourway of the same low-top shoe, drawn on white as a product shot would be."""
    def rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
        return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]

    image = Image.new("RGB", (360, 240), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    upper = rgb(hue, saturation, value)
    draw.polygon([(40, 170), (60, 110), (140, 95), (200, 60), (250, 62), (270, 100), (330, 130), (335, 170)],
                 fill=upper, outline=(30, 30, 30))
    draw.polygon([(120, 160), (190, 105), (300, 125), (240, 160)], fill=rgb(stripe_hue, 0.8, 0.85))  # the swoosh
    draw.rectangle([30, 170, 340, 195], fill=(240, 240, 235), outline=(60, 60, 60))  # the sole
    for x in range(205, 255, 12):
        draw.line([(x, 70), (x + 18, 95)], fill=(245, 245, 245), width=4)  # the laces
    return image


def served_colourways() -> list[bytes]:
    """48 colourways: 12 hues in 4 tones, each with its own stripe colour."""
    return [encode(colourway(h / HUES, s, v, (h + 5 * t + 3) / HUES), "JPEG", quality=90)
            for h in range(HUES) for t, (s, v) in enumerate(TONES)]


def held_out_colourways() -> list[bytes]:
    """Colourways between the served hues, never scraped."""
    return [encode(colourway((h + 0.5) / HUES, 0.7, 0.8, (h + 7.5) / HUES), "JPEG", quality=88)
            for h in (1, 4, 7, 10)]


@pytest.fixture(scope="module")
def search() -> Iterator[LocalServer]:
    """A Bing-like search engine: any query about a dunk finds the 48 colourways."""
    with running_server() as srv:
        urls = []
        for i, data in enumerate(served_colourways()):
            srv.add(f"/img/dunk-{i}.jpg", data, "image/jpeg")
            urls.append(srv.url(f"/img/dunk-{i}.jpg"))

        def page(req, _srv: LocalServer) -> None:  # noqa: ANN001
            found = urls if "dunk" in req.path.lower() else []
            send(req, 200, bing_page(found, "nike dunk low").encode(), "text/html")

        srv.add_handler("/bing/search", page)
        yield srv


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search: LocalServer) -> Path:
    """A fresh install in a working directory with no dataset beside it; the bot and the worker share these."""
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path.parent / "shared").exists()
    data_dir = tmp_path / "var"
    for key, value in {
        "SNEAKERBOT_DATA_DIR": str(data_dir),
        "SNEAKERBOT_DATABASE_URL": f"sqlite:///{data_dir / 'bot.db'}",
        "SNEAKERBOT_ADMIN_IDS": str(ADMIN),
        "SNEAKERBOT_RETRAIN_CHECK_SECONDS": "1",
        "SNEAKERBOT_MODEL_POLL_SECONDS": "0.5",
        "SNEAKERBOT_BING_URL": search.url("/bing/search"),
        "SNEAKERBOT_SCRAPER_SOURCES": '["bing"]',
        "SNEAKERBOT_SCRAPER_ALLOW_PRIVATE": "true",
        "SNEAKERBOT_SCRAPER_HOST_DELAY_S": "0",
        "SNEAKERBOT_SCRAPER_FOOTWEAR_CHECK": "false",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SNEAKERBOT_BASE_DATASET_DIR", raising=False)
    return data_dir


@pytest.fixture
async def bot(env: Path, playground: PlaygroundServer, tmp_path: Path) -> AsyncIterator[BotUnderTest]:
    settings = bot_settings(tmp_path, get_settings().db_url, admin_ids=frozenset({ADMIN}), model_poll_seconds=0.5)
    async with running_bot(playground, settings, None) as running:  # the shipped starter, as version 1
        yield running


@pytest.fixture
def worker(bot: BotUnderTest, tmp_path: Path) -> Iterator[subprocess.Popen]:
    with worker_process(tmp_path / "worker.log") as process:
        yield process


def labels_of(model_dir: Path) -> set[str]:
    return {c["label"] for c in json.loads((model_dir / "model.json").read_text())["classes"]}


async def answer_from(bot: BotUnderTest, user: TestUser, data: bytes, version: int) -> tuple[dict, Prediction]:
    """Send ``data`` until the bot answers it with ``version`` (the swap is polled); the reply and its row."""
    for _ in range(200):
        await user.send_photo(data)
        reply = await user.reply()
        with bot.sessions() as session:
            row = session.scalars(select(Prediction).where(Prediction.chat_id == user.user_id)
                                  .order_by(Prediction.id.desc())).first()
        if row.model_version == version:
            return reply, row
        await asyncio.sleep(0.5)
    raise AssertionError(f"the bot never answered with version {version}")


async def test_addclass_scrapes_retrains_and_the_new_model_names_it(
    bot: BotUnderTest, worker: subprocess.Popen, playground_http: httpx.AsyncClient, search: LocalServer,
) -> None:
    admin, user = TestUser(playground_http, ADMIN), TestUser(playground_http, 777)
    starter_labels = labels_of(STARTER_MODEL_DIR)

    await admin.send_text(f"/addclass {LABEL} {NAME}")
    assert "queued" in (await admin.reply())["text"]

    # Every colourway is kept: no two of them are the same photo.
    scraped, _ = await admin.message_starting("scrape of", timeout=WAIT_S)
    assert scraped["text"].startswith(f"scrape of {LABEL}: 48 of 48 stored")
    with bot.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.label == LABEL)) == 48

    result, progress = await admin.message_starting("✅", "❌", "Retrain", timeout=WAIT_S)
    assert result["text"].startswith("✅ promoted v2"), result["text"]
    assert f"new: {LABEL} 100.0% on its" in result["text"]
    assert "the same 1313 test photos" in result["text"]  # every class the starter knows, from what it carries
    assert progress[0] == "retrain: embedding 48 photos"
    with bot.sessions() as session:
        v2 = session.get(ModelVersion, 2)
        assert v2.is_current and v2.metrics["test"]["n"] == 1313
        # what the gate allows a candidate that adds a class (SNEAKERBOT_PROMOTION_NEW_CLASS_TOLERANCE, 1 point)
        assert v2.metrics["test"]["top1"] >= v2.metrics["current_test"]["top1"] - 0.01
    assert labels_of(bot.settings.models_path / "2") == starter_labels | {LABEL}  # no class forgotten

    # A colourway nobody scraped is named, by the name the admin gave.
    for data in held_out_colourways():
        reply, row = await answer_from(bot, user, data, version=2)
        assert row.top[0]["label"] == LABEL and NAME in reply["text"], reply["text"]
    with bot.sessions() as session:
        stored = set(session.scalars(select(ImageRow.sha1).where(ImageRow.label == LABEL)))
    assert not stored & {hashlib.sha1(data).hexdigest() for data in held_out_colourways()}
