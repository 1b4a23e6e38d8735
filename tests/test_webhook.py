"""Webhook mode, health and metrics (``bot/web.py``, ``bot/metrics.py``), fed by the playground's webhook delivery.

The bot listens on loopback; the playground POSTs each update to it with the secret header, as
Telegram does, and retries a delivery that failed. Nothing is patched: the user drives the
playground over HTTP, the bot answers through the Bot API, and the tests wait on state.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from bot.app import BotRuntime, build_runtime, start_bot, stop_bot
from bot.metrics import BotMetrics
from bot.playground import PlaygroundServer
from bot.services.models import ServedModel
from bot.settings import Settings
from bot.store.models import Feedback, Prediction
from bot.web import SECRET_HEADER, BotWebServer, WebhookConfig

from bot_harness import (
    BLUE,
    RED,
    TOKEN,
    ColourIdentifier,
    TestUser,
    bot_settings,
    colour_model,
    jpeg_bytes,
    wait_until,
)

SECRET = "s3cret_webhook-token"
HOOK_PATH = "/telegram/webhook"


def free_port() -> int:
    """A loopback port nobody listens on (the bot's endpoint before it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def webhook_config(port: int) -> WebhookConfig:
    return WebhookConfig(f"http://127.0.0.1:{port}{HOOK_PATH}", SECRET, "127.0.0.1", port)


async def build(server: PlaygroundServer, settings: Settings, served: ServedModel) -> BotRuntime:
    return await asyncio.to_thread(build_runtime, settings, served=served, api_root=server.url, token=TOKEN)


@asynccontextmanager
async def webhook_bot(server: PlaygroundServer, settings: Settings, served: ServedModel,
                      port: int | None = None) -> AsyncIterator[BotRuntime]:
    """A bot in webhook mode on loopback for the block (stopping it twice is harmless)."""
    runtime = await build(server, settings, served)
    await start_bot(runtime, webhook=webhook_config(port or free_port()))
    try:
        yield runtime
    finally:
        await stop_bot_once(runtime)


async def stop_bot_once(runtime: BotRuntime) -> None:
    if runtime.application.running:
        await stop_bot(runtime)


async def bot_api(http: httpx.AsyncClient, method: str, **params: Any) -> tuple[int, dict]:
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    response = await http.post(f"/bot{TOKEN}/{method}", data=form)
    return response.status_code, response.json()


def bot_messages(server: PlaygroundServer, chat_id: int) -> list[dict]:
    """Every message the bot sent in the chat."""
    return [m for (chat, _), m in sorted(server.state.messages.items())
            if chat == chat_id and m["from"].get("is_bot")]


def sample(metrics: BotMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page parsed by prometheus-client's own parser: (sample name, labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def count_rows(runtime: BotRuntime, model: type) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


async def test_conversation_by_webhook(playground: PlaygroundServer, playground_http: httpx.AsyncClient,
                                       tmp_path: Path, database_url: str) -> None:
    settings = bot_settings(tmp_path, database_url)
    user = TestUser(playground_http, user_id=2001)
    async with webhook_bot(playground, settings, colour_model(3)) as runtime:
        _, info = await bot_api(playground_http, "getWebhookInfo")
        assert info["result"]["url"].endswith(HOOK_PATH) and "secret" not in json.dumps(info)
        status, body = await bot_api(playground_http, "getUpdates")  # a webhook is set: no polling
        assert status == 409 and "webhook is active" in body["description"]

        await user.send_photo(jpeg_bytes(RED, noise=1))
        answer = await user.reply()
        assert "Air Jordan 11" in answer["text"]
        edited = await user.confirm(answer)
        assert "Air Jordan 11" in edited["text"]
        await user.send_photo(jpeg_bytes(BLUE, noise=2))
        unsure = await user.reply()
        listing_edit = await user.correct(unsure, "Air Jordan 6")
        assert "Air Jordan 6" in listing_edit["text"]
        await user.send_text("/start")
        assert "sneaker" in (await user.reply())["text"]
        await wait_until(lambda: not playground.state.updates, what="every update delivered")
    # Stopped: every handler has finished. One answer per photo and command, nothing twice.
    assert len(bot_messages(playground, 2001)) == 3
    assert count_rows(runtime, Prediction) == 2
    assert count_rows(runtime, Feedback) == 2
    delivered = [d["update_id"] for d in playground.state.deliveries]
    assert all(d["ok"] for d in playground.state.deliveries)
    assert len(delivered) == len(set(delivered)) == 6  # 2 photos, /start, 3 presses (correct, wrong, pick)


async def test_post_without_or_with_wrong_secret_is_refused(playground: PlaygroundServer,
                                                            playground_http: httpx.AsyncClient,
                                                            tmp_path: Path, sqlite_url: str) -> None:
    settings = bot_settings(tmp_path, sqlite_url)
    playground.state.user(3001)
    update = {"update_id": 900, "message": {
        "message_id": 77, "date": 0, "chat": playground.state.chats[3001], "from": playground.state.users[3001],
        "text": "/start", "entities": [{"type": "bot_command", "offset": 0, "length": 6}]}}
    async with webhook_bot(playground, settings, colour_model(1)) as runtime:
        assert runtime.web is not None
        url = runtime.web.url + HOOK_PATH
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(url, json=update)).status_code == 403
            assert (await client.post(url, json=update, headers={SECRET_HEADER: "wrong"})).status_code == 403
            assert (await client.post(url, json=update, headers={SECRET_HEADER: SECRET + "x"})).status_code == 403
            assert runtime.web.refused == 3
            assert runtime.application.update_queue.empty()
            assert sample(runtime.metrics, "sneakerbot_updates_total", kind="command") == 0
            # The same update with the secret is taken (so the refusals were about the secret alone).
            accepted = await client.post(url, json=update, headers={SECRET_HEADER: SECRET})
            assert accepted.status_code == 200
            garbage = await client.post(url, content=b"not json", headers={SECRET_HEADER: SECRET})
            assert garbage.status_code == 400
        reply = await TestUser(playground_http, user_id=3001).reply()
        assert "sneaker" in reply["text"]
    assert len(bot_messages(playground, 3001)) == 1  # the refused three did nothing
    assert sample(runtime.metrics, "sneakerbot_updates_total", kind="command") == 1


async def test_readyz_before_and_after_the_model_and_a_broken_database(playground: PlaygroundServer,
                                                                       tmp_path: Path, sqlite_url: str) -> None:
    # The CLI's order: the web server first (health while the model loads), then the runtime. Polling mode.
    metrics = BotMetrics()
    web = BotWebServer("127.0.0.1", 0, metrics=metrics)
    await web.start()
    runtime: BotRuntime | None = None
    try:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
            before = await client.get("/readyz")
            assert before.status_code == 503 and before.json() == {"ready": False, "reason": "model not loaded"}
            assert ("sneakerbot_build_info" in {f.name for f in text_string_to_metric_families(
                (await client.get("/metrics")).text)})

            runtime = await asyncio.to_thread(build_runtime, bot_settings(tmp_path, sqlite_url), served=colour_model(4),
                                              api_root=playground.url, token=TOKEN, metrics=metrics)
            await start_bot(runtime, poll_timeout=1, web=web)
            after = await client.get("/readyz")
            assert after.status_code == 200 and after.json() == {"ready": True, "model_version": 4}
            assert (await client.get("/healthz")).status_code == 200

            working = runtime.engine
            runtime.engine = create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
            broken = await client.get("/readyz")
            assert broken.status_code == 503 and broken.json()["reason"].startswith("database: ")
            runtime.engine.dispose()
            runtime.engine = working
            assert (await client.get("/readyz")).status_code == 200
    finally:
        if runtime is not None:
            await stop_bot(runtime)
        await web.stop()


async def test_metrics_move_as_updates_arrive(playground: PlaygroundServer, playground_http: httpx.AsyncClient,
                                              tmp_path: Path, sqlite_url: str) -> None:
    settings = bot_settings(tmp_path, sqlite_url)
    user = TestUser(playground_http, user_id=4001)
    async with webhook_bot(playground, settings, colour_model(7)) as runtime, \
            httpx.AsyncClient(timeout=30) as client:
        assert runtime.web is not None
        page = await client.get(runtime.web.url + "/metrics")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
        first = scrape(page.text)
        assert first[("sneakerbot_updates_total", (("kind", "photo"),))] == 0
        assert first[("sneakerbot_model_version", ())] == 7
        assert any(name == "sneakerbot_build_info" for name, _ in first)

        await user.send_photo(jpeg_bytes(RED, noise=3))
        answer = await user.reply()
        await user.confirm(answer)
        await user.send_text("/help")
        await user.reply()
        await user.send_text("hello")
        await user.reply()
        await user.send_kind("sticker")
        await user.reply()
        await wait_until(lambda: sample(runtime.metrics, "sneakerbot_feedback_total", kind="correct") == 1,
                         what="the confirmation counted")

        now = scrape((await client.get(runtime.web.url + "/metrics")).text)
        assert now[("sneakerbot_updates_total", (("kind", "photo"),))] == 1
        assert now[("sneakerbot_updates_total", (("kind", "callback"),))] == 1
        assert now[("sneakerbot_updates_total", (("kind", "command"),))] == 1
        assert now[("sneakerbot_updates_total", (("kind", "other"),))] == 2
        assert now[("sneakerbot_predictions_total", (("verdict", "sneaker"),))] == 1
        assert now[("sneakerbot_feedback_total", (("kind", "correct"),))] == 1
        assert now[("sneakerbot_photo_reply_seconds_count", ())] == 1
        assert now[("sneakerbot_photo_reply_seconds_sum", ())] > 0


class GatedIdentifier(ColourIdentifier):
    """The colour double, held inside ``predict`` until the test lets it go: an update in flight."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, images: Sequence[Any], k: int = 3) -> list:
        self.entered.set()
        assert self.release.wait(60), "the test never released the photo"
        return super().predict(images, k)


async def test_failed_delivery_is_retried_in_order_and_answered_once(
        playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path, sqlite_url: str) -> None:
    state = playground.state
    port = free_port()
    config = webhook_config(port)
    runtime = await build(playground, bot_settings(tmp_path, sqlite_url), colour_model(2))
    web = BotWebServer(config.host, config.port, metrics=runtime.metrics, webhook=config)
    try:
        # Telegram has the webhook, the bot's endpoint is down: the delivery fails and is tried again.
        status, _ = await bot_api(playground_http, "setWebhook", url=config.url, secret_token=SECRET)
        assert status == 200
        user = TestUser(playground_http, user_id=5001)
        photo = await user.send_photo(jpeg_bytes(RED, noise=4))
        await user.send_text("/start")
        first, second = (u["update_id"] for u in state.updates)
        await wait_until(lambda: any(d["error"] == "Connection refused" for d in state.deliveries),
                         what="a refused delivery")
        _, info = await bot_api(playground_http, "getWebhookInfo")
        assert info["result"]["last_error_message"] == "Connection refused"
        assert info["result"]["pending_update_count"] == 2

        # The endpoint is up but the bot is not started yet: 503, tried again.
        await web.start()
        await wait_until(lambda: any((d["error"] or "").startswith("Wrong response from the webhook: 503")
                                     for d in state.deliveries), what="a 503 delivery")

        await start_bot(runtime, webhook=config, web=web)
        replies = [await user.reply(), await user.reply()]  # handled concurrently: either may come first
        answer = next(r for r in replies if "reply_to_message" in r)
        assert answer["reply_to_message"]["message_id"] == photo["message_id"]
        await wait_until(lambda: not state.updates, what="both updates delivered")
    finally:
        if runtime.application.running:
            await stop_bot(runtime)
        await web.stop()
    assert len(bot_messages(playground, 5001)) == 2  # each answered once
    tries = [(d["update_id"], d["ok"]) for d in state.deliveries]
    assert [ok for update_id, ok in tries if update_id == first].count(True) == 1
    assert [update_id for update_id, ok in tries if ok] == [first, second]
    # The chat's order: the second update was not tried before the first got through.
    first_ok = tries.index((first, True))
    assert all(update_id == first for update_id, _ in tries[:first_ok + 1])


async def test_shutdown_finishes_the_update_in_flight(playground: PlaygroundServer,
                                                      playground_http: httpx.AsyncClient,
                                                      tmp_path: Path, sqlite_url: str) -> None:
    gated = GatedIdentifier()
    user = TestUser(playground_http, user_id=6001)
    runtime = await build(playground, bot_settings(tmp_path, sqlite_url), ServedModel(1, gated))
    await start_bot(runtime, webhook=webhook_config(free_port()))
    web = runtime.web
    assert web is not None
    try:
        photo = await user.send_photo(jpeg_bytes(RED, noise=5))
        await wait_until(gated.entered.is_set, what="the photo inside the model")
        stopping = asyncio.create_task(stop_bot(runtime))
        await wait_until(lambda: not web.running, what="the web server to stop accepting")
        # Stopped accepting: a new update is not taken (it waits at Telegram for the next start).
        await user.send_text("/help")
        await wait_until(lambda: any(not d["ok"] for d in playground.state.deliveries), what="a refused delivery")
        assert not stopping.done()  # still finishing the photo
        gated.release.set()
        await asyncio.wait_for(stopping, 60)
    finally:
        gated.release.set()
        if runtime.application.running:
            await stop_bot(runtime)
    answer = await user.reply()
    assert answer["reply_to_message"]["message_id"] == photo["message_id"] and "Air Jordan 11" in answer["text"]
    assert len(bot_messages(playground, 6001)) == 1
    assert [u["message"]["text"] for u in playground.state.updates] == ["/help"]
    with runtime.sessions() as session:
        assert session.scalar(select(Prediction.reply_message_id)) == answer["message_id"]


async def test_playground_webhook_api(playground: PlaygroundServer, playground_http: httpx.AsyncClient) -> None:
    _, info = await bot_api(playground_http, "getWebhookInfo")
    assert info["result"]["url"] == "" and info["result"]["pending_update_count"] == 0
    status, body = await bot_api(playground_http, "setWebhook", url="http://127.0.0.1:9/hook", secret_token="no spaces")
    assert (status, body["description"]) == (400, "Bad Request: secret token contains unallowed characters")
    status, body = await bot_api(playground_http, "setWebhook", url="ftp://example.com/hook")
    assert status == 400

    # A getUpdates waiting when a webhook is set ends with 409, like the ones after it.
    waiting = asyncio.create_task(bot_api(playground_http, "getUpdates", timeout=20))
    await wait_until(lambda: playground.state.poll_generation == 1, what="the long poll waiting")
    port = free_port()  # nobody listens: deliveries fail and the update stays queued
    status, _ = await bot_api(playground_http, "setWebhook", url=f"http://127.0.0.1:{port}/hook", secret_token=SECRET,
                              allowed_updates=["message"])
    assert status == 200
    assert (await waiting)[0] == 409
    user = TestUser(playground_http, user_id=7001)
    await user.send_text("hi")
    await wait_until(lambda: len(playground.state.deliveries) >= 2, what="a delivery tried again")
    _, info = await bot_api(playground_http, "getWebhookInfo")
    result = info["result"]
    assert result["url"] == f"http://127.0.0.1:{port}/hook" and result["allowed_updates"] == ["message"]
    assert result["pending_update_count"] == 1 and result["last_error_message"] == "Connection refused"
    assert SECRET not in json.dumps(result)

    # Deleted: the update waits for getUpdates again, which works as before.
    assert (await bot_api(playground_http, "deleteWebhook"))[0] == 200
    status, body = await bot_api(playground_http, "getUpdates", timeout=0)
    assert status == 200 and [u["message"]["text"] for u in body["result"]] == ["hi"]
    _, info = await bot_api(playground_http, "getWebhookInfo")
    assert info["result"]["url"] == ""


def test_webhook_mode_needs_a_secret_and_an_absolute_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bot.cli import main
    from bot.web import WebhookConfigError

    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("SNEAKERBOT_WEBHOOK_SECRET", raising=False)
    assert main(["run", "--webhook", "https://bot.example.com/hook"]) == 2  # refused before anything starts
    settings = Settings(webhook_url="https://bot.example.com/tg/hook", webhook_secret=SECRET,
                        webhook_listen_host="0.0.0.0", webhook_listen_port=8080)
    config = WebhookConfig.from_settings(settings)
    assert (config.path, config.host, config.port) == ("/tg/hook", "0.0.0.0", 8080)
    assert SECRET not in repr(config) and SECRET not in repr(settings)
    with pytest.raises(WebhookConfigError):
        WebhookConfig("bot.example.com/hook", SECRET)
    for weak in ("has space in it here", "short"):
        with pytest.raises(WebhookConfigError):
            WebhookConfig("https://bot.example.com/hook", weak)
