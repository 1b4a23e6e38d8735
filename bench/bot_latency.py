"""Bot latency: photo sent to reply received, through the local Bot API server (the playground).

The playground (the local Bot API server) and the simulated users run in this process; the
bot (python-telegram-bot long polling over HTTP, the real model from the registry, SQLite or
the given database) runs in a child process, as a bot and its Bot API server do. Each user
sends photos through the playground's user API and waits for the answer before the next one.
Prints p50/p95 latency (photo sent to reply received) and photos per second for: 1 user and
10 users each sending the next photo as soon as the last is answered (the throughput), and
10 users sending 20 photos/s between them without waiting (latency under the target load).

    .venv/bin/python -m bench.bot_latency [--photos 60] [--model models/starter] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bot.app import build_runtime, start_bot, stop_bot
from bot.playground import PlaygroundServer
from bot.settings import Settings

TOKEN = "123456:bench"


def photos(count: int, size: tuple[int, int] = (800, 600)) -> list[bytes]:
    """Distinct JPEGs of phone-photo size (smooth gradients plus noise, so they compress like photos)."""
    rng = np.random.default_rng(0)
    result = []
    for _ in range(count):
        ends = rng.integers(0, 255, (2, 3))
        base = np.linspace(ends[0], ends[1], size[0] * size[1]).reshape(size[1], size[0], 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=88)
        result.append(buffer.getvalue())
    return result


async def listen(client: httpx.AsyncClient, user_id: int, sent: dict[int, float], answered: dict[int, float],
                 expected: int) -> None:
    """Record when the bot's reply to each sent photo arrives (matched by ``reply_to_message``)."""
    cursor = 0
    while len(answered) < expected:
        events = (await client.get(f"/playground/api/chats/{user_id}/events",
                                   params={"after": cursor, "timeout": 30})).json()["result"]["events"]
        now = time.perf_counter()
        if events:
            cursor = events[-1]["seq"]
        for event in events:
            reply_to = (event.get("message") or {}).get("reply_to_message") or {}
            if event["type"] == "message" and reply_to.get("message_id") in sent:
                answered[reply_to["message_id"]] = now


async def send(client: httpx.AsyncClient, user_id: int, data: bytes, sent: dict[int, float]) -> None:
    """Send one photo and note when."""
    started = time.perf_counter()
    response = await client.post(f"/playground/api/chats/{user_id}/messages",
                                 files=[("photo", ("p.jpg", data, "image/jpeg"))])
    sent[response.json()["result"][0]["message_id"]] = started


async def user_session(client: httpx.AsyncClient, user_id: int, images: list[bytes], interval: float | None,
                       ) -> list[float]:
    """One user: photos at a fixed ``interval`` (open loop), or each after the last answer (None)."""
    sent: dict[int, float] = {}
    answered: dict[int, float] = {}
    listener = asyncio.create_task(listen(client, user_id, sent, answered, len(images)))
    for data in images:
        if interval is None:
            before = len(answered)
            await send(client, user_id, data, sent)
            while len(answered) == before:
                await asyncio.sleep(0.002)
        else:
            asyncio.create_task(send(client, user_id, data, sent))
            await asyncio.sleep(interval)
    await listener
    return [(answered[m] - sent[m]) * 1000 for m in sent]


async def scenario(client: httpx.AsyncClient, users: int, images: list[bytes], first_user: int,
                   rate: float | None = None) -> dict[str, float]:
    """``users`` concurrent users sharing ``images``; ``rate`` photos/s in total, or as fast as answered."""
    per_user = [images[i::users] for i in range(users)]
    interval = users / rate if rate else None
    started = time.perf_counter()
    results = await asyncio.gather(*(user_session(client, first_user + i, chunk, interval)
                                     for i, chunk in enumerate(per_user)))
    wall = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r)
    return {"users": users, "offered": rate or 0, "photos": len(latencies), "p50_ms": statistics.median(latencies),
            "p95_ms": latencies[max(0, int(round(0.95 * len(latencies))) - 1)], "photos_per_s": len(latencies) / wall}


def cpu_seconds() -> float:
    """CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bot_process(overrides: dict[str, object], api_root: str, ready: Event, done: Event, cpu: Queue) -> None:
    """The bot in its own process, as in production (the Bot API server is not the bot's CPU)."""

    async def serve() -> None:
        settings = Settings(**overrides)
        runtime = build_runtime(settings, api_root=api_root, token=TOKEN)
        await start_bot(runtime, poll_timeout=settings.poll_timeout_s)
        served = runtime.services.models.current()
        started_cpu = cpu_seconds()
        ready.set()
        print(f"bot: model version {served.version}, {settings.inference_threads} inference threads, "
              f"database {settings.db_url.split(':')[0]}", flush=True)
        await asyncio.to_thread(done.wait)
        cpu.put(cpu_seconds() - started_cpu)
        await stop_bot(runtime)

    asyncio.run(serve())


async def main(args: argparse.Namespace) -> None:
    """Start the playground here and the bot in a child process, warm up, run 1 and 10 users."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, object] = {"data_dir": Path(tmp), "rate_limit_per_minute": 0, "telegram_overall_rate": 0,
                                        "poll_timeout_s": 10}
        if args.database_url:
            overrides["database_url"] = args.database_url
        if args.model:
            overrides["starter_model_dir"] = Path(args.model).resolve()
        server = PlaygroundServer(TOKEN)
        await server.start()
        context = multiprocessing.get_context("spawn")
        ready, done, bot_cpu = context.Event(), context.Event(), context.Queue()
        child = context.Process(target=bot_process, args=(overrides, server.url, ready, done, bot_cpu))
        child.start()
        try:
            if not await asyncio.to_thread(ready.wait, 300):
                raise SystemExit("the bot did not start")
            images = photos(args.photos)
            load_before = os.getloadavg()[0]
            cpu_before = cpu_seconds()
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                await scenario(client, 2, photos(6), first_user=900)  # warm-up
                rows = [await scenario(client, 1, images, first_user=1000),
                        await scenario(client, 10, images, first_user=10_000),
                        await scenario(client, 10, images, first_user=20_000, rate=args.rate)]
            here = cpu_seconds() - cpu_before
        finally:
            done.set()
            bot_seconds = await asyncio.to_thread(bot_cpu.get, True, 60)
            await asyncio.to_thread(child.join, 60)
            await server.stop()
    print(f"{'users':>5} {'sending':>16} {'photos':>6} {'p50 ms':>8} {'p95 ms':>8} {'photos/s':>9}")
    for row in rows:
        mode = f"{row['offered']:g}/s in total" if row["offered"] else "after each answer"
        print(f"{row['users']:>5} {mode:>16} {row['photos']:>6} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
              f"{row['photos_per_s']:>9.1f}")
    measured = sum(row["photos"] for row in rows)
    print(f"CPU per photo: bot {bot_seconds * 1000 / (measured + 6):.0f} ms, playground + simulated users "
          f"{here * 1000 / measured:.0f} ms; load average at start {load_before:.1f} "
          f"on {os.cpu_count()} CPUs")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=60, help="photos per scenario")
    parser.add_argument("--rate", type=float, default=20.0, help="photos/s offered in the open-loop 10-user run")
    parser.add_argument("--model", help="model directory (default: the starter model)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in a temp dir)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
