"""Scale-out without Docker: two bot replicas in webhook mode and one worker on one PostgreSQL.

The topology of ``docker compose up --scale bot=2`` on loopback: the playground is Telegram (it
POSTs every update to the webhook URL and delivers it again when the answer does not reach it),
a small round-robin HTTP proxy stands in for Caddy, and ``sneakerbot run --webhook`` and
``sneakerbot worker`` are real processes sharing the database and the data dir. Twenty users
send 200 updates, some of them delivered twice (the playground loses the bot's answer), and
every update must be answered exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from test_webhook import free_port

from bot.playground import PlaygroundServer
from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, Prediction, UpdateClaim
from bot.web import SECRET_HEADER

from bot_harness import TOKEN, TestUser, button_texts, running_playground, user_api
from loop_support import COLOURS, photo, shared_model

SECRET = "replica_test-secret-0123"
HOOK_PATH = "/telegram/webhook"
USERS, PHOTOS_EACH = 20, 5  # 20 users x (5 photos + 5 presses) = 200 updates
LOST_ANSWERS = 24  # deliveries whose answer the playground "loses": Telegram delivers them again
RATE_LIMIT = PHOTOS_EACH  # per user and minute: the traffic fits, one photo more is refused
START_S = 180.0  # a replica loads the model and migrates the database; a busy 2-core machine is slow

pytestmark = pytest.mark.timeout(900)


@dataclass
class RoundRobinProxy:
    """Caddy's part: each POST to the webhook path goes to the next replica; what went where is kept."""

    upstreams: list[str]
    routed: list[tuple[int, int, str, int]] = field(default_factory=list)  # update id, chat, kind, replica
    _turn: Iterator[int] = field(default_factory=lambda: itertools.count())
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        index = next(self._turn) % len(self.upstreams)
        update = await request.json()
        kind = "press" if "callback_query" in update else "message"
        chat = (update.get("callback_query") or {}).get("from", {}).get("id") or update["message"]["chat"]["id"]
        self.routed.append((update["update_id"], chat, kind, index))
        headers = {SECRET_HEADER: request.headers.get(SECRET_HEADER, ""), "Content-Type": "application/json"}
        try:
            async with self.session.post(self.upstreams[index] + request.path, data=body, headers=headers) as answer:
                return web.Response(status=answer.status, body=await answer.read())
        except aiohttp.ClientError:
            return web.Response(status=502)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RoundRobinProxy]:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as self.session:
            try:
                yield self
            finally:
                await runner.cleanup()


@contextmanager
def process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``python -m bot <args>`` as a real process; SIGTERM at the end, and it must stop cleanly."""
    with log_path.open("w") as log:
        child = subprocess.Popen([sys.executable, "-m", "bot", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            assert child.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        finally:
            if child.poll() is None:
                child.kill()


def base_env(tmp_path: Path, database_url: str, server: PlaygroundServer, model_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SNEAKERBOT_")}
    env.update({
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "SNEAKERBOT_BOT_API_URL": server.url,
        "SNEAKERBOT_DATABASE_URL": database_url,
        "SNEAKERBOT_DATA_DIR": str(tmp_path / "data"),
        "SNEAKERBOT_STARTER_MODEL_DIR": str(model_dir),
        "SNEAKERBOT_START_WORKER_IN_BOT": "false",
        "SNEAKERBOT_WEBHOOK_SECRET": SECRET,
        "SNEAKERBOT_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "SNEAKERBOT_MODEL_POLL_SECONDS": "1",
        "SNEAKERBOT_INFERENCE_THREADS": "1",
        "SNEAKERBOT_ADMIN_IDS": "999",
    })
    return env


async def metric(http: httpx.AsyncClient, base: str, name: str) -> float | None:
    """One sample's value from a replica's /metrics (parsed with Prometheus' own parser)."""
    text = (await http.get(f"{base}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


async def ready(http: httpx.AsyncClient, base: str) -> bool:
    try:
        return (await http.get(f"{base}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def converse(user: TestUser, colour: tuple[int, int, int], seed: int) -> int:
    """Five photos, each answered, then one press that edits the answer: ✅ Correct (stored as feedback),
    or "It is a sneaker" where the tiny model says "not a sneaker" (it opens the list). Returns the ✅s."""
    confirmed = 0
    for k in range(PHOTOS_EACH):
        await user.send_photo(photo(colour, seed * 100 + k))
        answer = await user.reply()
        sure = any("Correct" in text for text in button_texts(answer))
        await user.press(answer, "Correct" if sure else "It is a sneaker")
        await user.edit()
        confirmed += sure
    return confirmed


async def wait_for(check, *, timeout: float, what: str) -> None:  # noqa: ANN001
    """Poll the async ``check()`` (state: rows, a replica's answer) until true; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.1)


def count_rows(sessions) -> tuple[dict[str, int], dict[int, str]]:  # noqa: ANN001
    """Rows of this run, and which instance claimed each update."""
    with sessions() as session:
        return {
            "predictions": session.scalar(select(func.count(Prediction.id))),
            "feedback": session.scalar(select(func.count(Feedback.id))),
            "claims": session.scalar(select(func.count(UpdateClaim.update_id))),
            "done": session.scalar(select(func.count(UpdateClaim.update_id)).where(UpdateClaim.done_at.is_not(None))),
            "feedback per prediction": max(Counter(session.scalars(select(Feedback.prediction_id))).values(),
                                           default=0),
        }, {row.update_id: row.instance for row in session.scalars(select(UpdateClaim))}


async def test_two_webhook_replicas_and_a_worker_answer_every_update_once(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, postgres_schema_url: str
) -> None:
    model_dir = shared_model(tmp_path_factory)
    ports = [free_port(), free_port()]
    replicas = [f"http://127.0.0.1:{port}" for port in ports]
    proxy = RoundRobinProxy(replicas)
    async with running_playground(webhook_backoff=0.05) as server, proxy.running(), user_api(server) as client, \
            httpx.AsyncClient(timeout=10) as http:
        env = base_env(tmp_path, postgres_schema_url, server, model_dir)
        worker_env = {**env, "SNEAKERBOT_HEALTH_PORT": str(free_port())}
        with process(["worker"], worker_env, tmp_path / "worker.log"), \
                process(["run", "--webhook", proxy.url + HOOK_PATH],
                        {**env, "SNEAKERBOT_WEBHOOK_LISTEN_PORT": str(ports[0])}, tmp_path / "bot-a.log") as bot_a, \
                process(["run", "--webhook", proxy.url + HOOK_PATH],
                        {**env, "SNEAKERBOT_WEBHOOK_LISTEN_PORT": str(ports[1])}, tmp_path / "bot-b.log") as bot_b:
            for base in replicas:  # each replica answers /readyz only once its model is loaded
                await wait_for(lambda base=base: ready(http, base), timeout=START_S, what=f"{base}/readyz")
            engine = init_db(postgres_schema_url)  # migrated by the first process to start (the others waited)
            sessions = session_factory(engine)
            lost = await client.post("/playground/api/faults", json={"method": "webhook", "kind": "drop",
                                                                     "after_accept": True, "count": LOST_ANSWERS})
            assert lost.json()["ok"]

            users = [TestUser(client, 1000 + i) for i in range(USERS)]
            colours = list(COLOURS.values())
            confirmed = sum(await asyncio.gather(*(converse(user, colours[i % len(colours)], i)
                                                   for i, user in enumerate(users))))

            # Every update claimed and finished: nothing more is coming. Then count what each chat got.
            total = USERS * PHOTOS_EACH * 2
            async def all_handled() -> bool:
                return (await asyncio.to_thread(count_rows, sessions))[0]["done"] >= total

            await wait_for(all_handled, timeout=120, what="every update handled")
            rows, claims = await asyncio.to_thread(count_rows, sessions)
            for user in users:  # each saw its 5 answers and 5 edits; what is left: one answer per press, no more
                await user._fetch(0)
                kinds = Counter(event["type"] for event in user.backlog)
                assert (kinds["message"], kinds["edit"], kinds["callback_answer"]) == (0, 0, PHOTOS_EACH), kinds
                user.backlog.clear()
            events = (await client.get("/playground/api/faults")).json()["result"]["served"]
            assert len([e for e in events if e["method"] == "webhook"]) == LOST_ANSWERS
            delivered = Counter(update_id for update_id, *_ in proxy.routed)
            assert len(delivered) == total and sum(delivered.values()) >= total + LOST_ANSWERS
            assert confirmed > 0
            assert rows == {"predictions": USERS * PHOTOS_EACH, "feedback": confirmed, "claims": total,
                            "done": total, "feedback per prediction": 1}

            # Both replicas worked, and presses were handled by the replica that did not answer their photo.
            pids = {str(bot_a.pid): "a", str(bot_b.pid): "b"}
            handled_by = {update_id: pids[instance.split(":")[1]] for update_id, instance in claims.items()}
            assert set(handled_by.values()) == {"a", "b"}
            crossed = 0
            for user in users:
                mine = [(update_id, kind) for update_id, chat, kind, _ in proxy.routed if chat == user.user_id]
                firsts = list(dict.fromkeys(mine))  # first delivery of each update, in order
                photos = [u for u, kind in firsts if kind == "message"]
                presses = [u for u, kind in firsts if kind == "press"]
                crossed += sum(handled_by[p] != handled_by[q] for p, q in zip(photos, presses, strict=True))
            assert crossed > 0

            # The per-user rate limit is one limit across the replicas: a sixth photo within the minute is refused.
            await users[0].send_photo(photo(colours[0], 99))
            assert (await users[0].reply())["text"].startswith("⏳ Slow down")

            # A model promoted now (as the worker does) is served by both replicas within 10 s.
            from bot.registry import ModelRegistry

            registry = ModelRegistry(sessions, tmp_path / "data" / "models")
            promoted = await asyncio.to_thread(registry.register, model_dir, data_snapshot={},
                                               promote_reason="test: a newer model")
            started = asyncio.get_running_loop().time()
            for base in replicas:
                async def serves_it(base: str = base) -> bool:
                    return await metric(http, base, "sneakerbot_model_version") == promoted.version

                await wait_for(serves_it, timeout=30, what=f"{base} serving version {promoted.version}")
            assert asyncio.get_running_loop().time() - started <= 10.0
            engine.dispose()


def test_an_update_is_claimed_once_finished_stays_handled_and_a_dead_claim_is_taken_over(db_sessions) -> None:  # noqa: ANN001
    from bot.services.updates import UpdateClaims

    a, b = UpdateClaims(db_sessions, lease_s=60, instance="a"), UpdateClaims(db_sessions, lease_s=60, instance="b")
    assert a.claim(7) and not b.claim(7) and not a.claim(7)  # the other replica and a second delivery to a
    a.finish(7)
    assert not b.claim(7) and b.duplicates == 2
    assert b.claim(8)  # b takes 8 and dies before finishing it
    late = UpdateClaims(db_sessions, lease_s=0, instance="c")  # past the lease: taken over, once
    assert late.claim(8) and not UpdateClaims(db_sessions, lease_s=60, instance="d").claim(8)


async def test_events_recorded_at_once_get_distinct_numbers() -> None:
    """The user API pages events by number: two events with one number hid one of them from a user."""
    async with running_playground() as server:
        async with server.state.changed:  # busy: as when the bot's calls and deliveries come together
            pushes = [asyncio.create_task(server.state.push_event(1, "message", n=n)) for n in range(200)]
            await asyncio.sleep(0)  # every push now waits for the lock
        await asyncio.gather(*pushes)
        assert [event["seq"] for event in server.state.events] == list(range(1, 201))
