"""Bot latency: photo sent to reply received, through the local Bot API server (the playground).

Three processes, as in production: the playground (the local Bot API server) in this one;
the bot (python-telegram-bot long polling over HTTP, the real model from the registry, SQLite
or the given database, the rate limit on) in a child; the simulated users in another child,
so their HTTP clients are neither the server's nor the bot's CPU. Each user sends photos
through the playground's user API and long-polls its chat for the answer.

Scenarios: 1 user and 10 users each sending the next photo as soon as the last is answered
(the throughput), and 10 users sending ``--rate`` photos/s between them without waiting, as
random (Poisson) arrivals (latency under the target load). Prints p50/p95 latency (photo
sent to reply received), photos per second, the CPU time per photo of each process and the
load average: on a shared machine the CPU figures are the ones that mean something.

    .venv/bin/python -m bench.bot_latency [--photos 60] [--rate 20] [--overall-rate 0] [--model DIR]
                                          [--database-url URL] [--photos-from DIR|synthetic]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

TOKEN = "123456:bench"
WARM_UP = 6
# High enough never to refuse a photo here, but the limit is checked and counted for each one.
RATE_LIMIT_PER_MINUTE = 1_000_000


DEFAULT_PHOTOS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "air-jordan"


def photos(count: int, source: Path | None = None, *, seed: int = 0) -> list[bytes]:
    """``count`` distinct phone-size JPEGs: real sneaker photos from ``source`` (a folder of class
    folders) when given, else synthetic ones. Real ones matter: the model skips its footwear
    branch for sneakers it knows, so synthetic photos measure the slower path only."""
    if source is None:
        return synthetic_photos(count, seed=seed)
    files = sorted(p for p in source.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    picked = np.random.default_rng(seed).choice(len(files), min(count, len(files)), replace=False)
    return [phone_jpeg(Image.open(files[i])) for i in picked]


def phone_jpeg(image: Image.Image, longest: int = 800) -> bytes:
    """The photo re-encoded at ``longest`` px on its longer side, as a phone would send it (decode cost included)."""
    image = image.convert("RGB")
    scale = longest / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def synthetic_photos(count: int, size: tuple[int, int] = (800, 600), *, seed: int = 0) -> list[bytes]:
    """Distinct JPEGs of phone-photo size (smooth gradients plus noise, so they compress like photos)."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        ends = rng.integers(0, 255, (2, 3))
        base = np.linspace(ends[0], ends[1], size[0] * size[1]).reshape(size[1], size[0], 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=88)
        result.append(buffer.getvalue())
    return result


def cpu_seconds() -> float:
    """CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- simulated users


class User:
    """One chat: sends photos, and one long poll that notes when each answer arrives."""

    def __init__(self, session: aiohttp.ClientSession, user_id: int) -> None:
        self.session = session
        self.user_id = user_id
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.new_answer = asyncio.Event()

    async def listen(self, expected: int) -> None:
        """Record when the bot's reply to each sent photo arrives (matched by ``reply_to_message``)."""
        cursor = 0
        while len(self.answered) < expected:
            async with self.session.get(f"/playground/api/chats/{self.user_id}/events",
                                        params={"after": cursor, "timeout": 30}) as response:
                events = (await response.json())["result"]["events"]
            now = time.perf_counter()
            if events:
                cursor = events[-1]["seq"]
            for event in events:
                reply_to = (event.get("message") or {}).get("reply_to_message") or {}
                if event["type"] == "message" and reply_to.get("message_id") is not None:
                    self.answered[reply_to["message_id"]] = now
                    self.new_answer.set()

    async def send(self, data: bytes) -> None:
        """Send one photo and note when."""
        form = aiohttp.FormData()
        form.add_field("photo", data, filename="p.jpg", content_type="image/jpeg")
        started = time.perf_counter()
        async with self.session.post(f"/playground/api/chats/{self.user_id}/messages", data=form) as response:
            self.sent[(await response.json())["result"][0]["message_id"]] = started

    async def run(self, images: list[bytes], at: list[float] | None) -> list[float]:
        """Photos sent at the given seconds from now (open loop), or each after the last answer (None)."""
        listener = asyncio.create_task(self.listen(len(images)))
        senders = []
        start = time.perf_counter()
        for i, data in enumerate(images):
            if at is None:
                self.new_answer.clear()
                before = len(self.answered)
                await self.send(data)
                while len(self.answered) == before:
                    await self.new_answer.wait()
                    self.new_answer.clear()
            else:
                await asyncio.sleep(max(0.0, start + at[i] - time.perf_counter()))
                senders.append(asyncio.create_task(self.send(data)))
        await asyncio.gather(listener, *senders)
        return [(self.answered[m] - self.sent[m]) * 1000 for m in self.sent]


async def scenario(session: aiohttp.ClientSession, users: int, images: list[bytes], first_user: int,
                   rate: float | None = None) -> dict[str, float]:
    """``users`` concurrent users sharing ``images``; ``rate`` photos/s in total, or as fast as answered."""
    per_user = [images[i::users] for i in range(users)]
    schedule: list[list[float] | None] = [None] * users
    if rate:
        # One Poisson process of ``rate`` photos/s shared out among the users in turn: people do not
        # press "send" in step (a fixed interval per user would send a whole round in one instant,
        # measuring a burst instead of a rate), and the run lasts about photos / rate seconds.
        arrivals = np.cumsum(np.random.default_rng(first_user).exponential(1.0 / rate, len(images)))
        schedule = [list(arrivals[i::users]) for i in range(users)]
    started = time.perf_counter()
    results = await asyncio.gather(*(User(session, first_user + i).run(chunk, schedule[i])
                                     for i, chunk in enumerate(per_user)))
    wall = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r)
    return {"users": users, "offered": rate or 0, "photos": len(latencies), "p50_ms": statistics.median(latencies),
            "p95_ms": latencies[max(0, int(round(0.95 * len(latencies))) - 1)], "photos_per_s": len(latencies) / wall}


def users_process(url: str, count: int, rate: float, source: Path | None, out: Queue) -> None:
    """The simulated users in their own process; puts (rows, CPU seconds spent sending and waiting)."""

    async def run() -> None:
        images, warm_up = photos(count, source), photos(WARM_UP, source, seed=1)
        connector = aiohttp.TCPConnector(limit=0)  # every user's long poll and sends at once
        async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            await scenario(session, 2, warm_up, first_user=900)
            started = cpu_seconds()
            rows = [await scenario(session, 1, images, first_user=1000),
                    await scenario(session, 10, images, first_user=10_000),
                    await scenario(session, 10, images, first_user=20_000, rate=rate)]
            out.put((rows, cpu_seconds() - started))

    asyncio.run(run())


# ----------------------------------------------------------------------------- the bot


def bot_process(overrides: dict[str, Any], api_root: str, ready: Event, measure: Event, done: Event,
                cpu: Queue) -> None:
    """The bot in its own process, as in production (the Bot API server is not the bot's CPU)."""
    from bot.app import build_runtime, start_bot, stop_bot
    from bot.settings import Settings

    async def serve() -> None:
        settings = Settings(**overrides)
        runtime = build_runtime(settings, api_root=api_root, token=TOKEN)
        await start_bot(runtime, poll_timeout=settings.poll_timeout_s)
        served = runtime.services.models.current()
        ready.set()
        print(f"bot: model version {served.version}, {settings.inference_threads} inference threads, "
              f"database {settings.db_url.split(':')[0]}, Bot API client {settings.telegram_http}, "
              f"overall rate limit {settings.telegram_overall_rate or 'off'}", flush=True)
        await asyncio.to_thread(measure.wait)
        started = cpu_seconds()
        await asyncio.to_thread(done.wait)
        cpu.put(cpu_seconds() - started)
        await stop_bot(runtime)

    asyncio.run(serve())


# ----------------------------------------------------------------------------- the Bot API server


async def run_bench(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, float], float]:
    """Playground here, bot and users in children; returns the rows, CPU seconds per side, load at start."""
    from bot.playground import PlaygroundServer

    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, object] = {"data_dir": Path(tmp), "rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
                                        "telegram_overall_rate": args.overall_rate, "poll_timeout_s": 10}
        if args.database_url:
            overrides["database_url"] = args.database_url
        if args.model:
            overrides["starter_model_dir"] = Path(args.model).resolve()
        server = PlaygroundServer(TOKEN)
        await server.start()
        context = multiprocessing.get_context("spawn")
        ready, measure, done = context.Event(), context.Event(), context.Event()
        bot_cpu, results = context.Queue(), context.Queue()
        bot = context.Process(target=bot_process, args=(overrides, server.url, ready, measure, done, bot_cpu))
        bot.start()
        try:
            if not await asyncio.to_thread(ready.wait, 300):
                raise SystemExit("the bot did not start")
            load = os.getloadavg()[0]
            users = context.Process(target=users_process,
                                    args=(server.url, args.photos, args.rate, photo_source(args), results))
            users.start()
            # The bot's and the server's CPU are counted from here (the warm-up is included, a few photos).
            measure.set()
            server_before = cpu_seconds()
            rows, users_cpu = await asyncio.to_thread(results.get, True, 900)
            server_cpu = cpu_seconds() - server_before
            await asyncio.to_thread(users.join, 60)
        finally:
            done.set()
            measure.set()
            bot_seconds = await asyncio.to_thread(bot_cpu.get, True, 60)
            await asyncio.to_thread(bot.join, 60)
            await server.stop()
    return rows, {"bot": bot_seconds, "server": server_cpu, "users": users_cpu}, load


def photo_source(args: argparse.Namespace) -> Path | None:
    """The folder of real photos to send, or None for synthetic ones."""
    if args.photos_from == "synthetic":
        return None
    folder = Path(args.photos_from) if args.photos_from else DEFAULT_PHOTOS
    return folder if folder.is_dir() else None


def report(rows: list[dict[str, float]], cpu: dict[str, float], load: float, source: Path | None) -> None:
    """The table and the CPU per photo of each process."""
    print(f"photos: {f'real sneaker photos from {source}, re-encoded at 800 px' if source else 'synthetic'}")
    print(f"{'users':>5} {'sending':>17} {'photos':>6} {'p50 ms':>8} {'p95 ms':>8} {'photos/s':>9}")
    for row in rows:
        mode = f"{row['offered']:g}/s in total" if row["offered"] else "after each answer"
        print(f"{row['users']:>5} {mode:>17} {row['photos']:>6} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
              f"{row['photos_per_s']:>9.1f}")
    measured = sum(row["photos"] for row in rows)
    print(f"CPU per photo: bot {cpu['bot'] * 1000 / (measured + WARM_UP):.1f} ms, "
          f"Bot API server (playground) {cpu['server'] * 1000 / (measured + WARM_UP):.1f} ms, "
          f"simulated users {cpu['users'] * 1000 / measured:.1f} ms; "
          f"load average at start {load:.1f} on {os.cpu_count()} CPUs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=60, help="photos per scenario")
    parser.add_argument("--rate", type=float, default=20.0, help="photos/s offered in the open-loop 10-user run")
    parser.add_argument("--overall-rate", type=float, default=0.0,
                        help="the bot's SNEAKERBOT_TELEGRAM_OVERALL_RATE (default 0: off, the playground has no "
                             "Telegram limit; the bot's own default of 30/s caps a photo, which makes two "
                             "chat-bound calls, at 15/s)")
    parser.add_argument("--model", help="model directory (default: the starter model)")
    parser.add_argument("--photos-from", help="a folder of class folders of sneaker photos (default: "
                        "../shared/datasets/air-jordan when present), or 'synthetic'")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the three scenarios and print the figures."""
    args = parse_args(argv)
    report(*asyncio.run(run_bench(args)), photo_source(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
