"""Two webhook replicas on PostgreSQL under load: photo-to-reply latency, nothing lost or doubled.

The topology of ``docker compose up --scale bot=2`` on loopback, as in ``tests/test_replicas.py``:
the playground (Telegram) POSTs every update to one webhook URL, a round-robin proxy in this
process (Caddy's part) passes each to the next replica, and ``--replicas`` bot processes in
webhook mode share one PostgreSQL database and one data dir. The simulated users of
``bench.load`` (50 users thinking 1 s offer about 20 photos/s) send photos and press buttons.
``--lose N`` makes the playground lose the bot's answer to N deliveries, so Telegram delivers
those updates again (maybe to the other replica).

Prints throughput, p50/p95/p99 photo to answer and press to edit (target p95 ≤ 150 ms), each
replica's RSS and CPU, errors, lost answers (a photo without an answer within 60 s), doubled
answers (a photo with more than one reply in the chat: counted in the playground) and the
feedback check of ``bench.load``.

    SNEAKERBOT_TEST_POSTGRES_URL=postgresql+psycopg://... .venv/bin/python -m bench.replicas \\
        [--replicas 2] [--users 50] [--seconds 60] [--lose 20] [--database-url URL]

A fresh PostgreSQL schema is made for the run and dropped after it. Exit status 1 when anything
was lost, doubled or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.bot_latency import TOKEN
from bench.load import (
    Outcome,
    add_common_args,
    check_feedback,
    latency_line,
    plan_from,
    print_feedback_check,
    proc_cpu_seconds,
    proc_status,
    users_in_child,
)
from bench.machine import machine_line
from bot.store.db import temporary_schema

HOOK_PATH = "/telegram/webhook"
SECRET = "bench_replicas-secret-0123"
PG_ENV = "SNEAKERBOT_TEST_POSTGRES_URL"


def replica_main(overrides: dict[str, Any], api_root: str, hook_url: str, port: int, ready: Event,
                 stop: Event) -> None:
    """One bot replica in webhook mode, in its own process, until ``stop``."""
    import logging

    from bot.app import build_runtime, start_bot, stop_bot
    from bot.settings import Settings
    from bot.web import WebhookConfig

    logging.basicConfig(level=logging.WARNING)

    async def serve() -> None:
        settings = Settings(**overrides)
        runtime = build_runtime(settings, api_root=api_root, token=TOKEN)
        await start_bot(runtime, webhook=WebhookConfig(hook_url, SECRET, "127.0.0.1", port))
        ready.set()
        await asyncio.to_thread(stop.wait)
        await stop_bot(runtime)

    asyncio.run(serve())


@dataclass
class RoundRobin:
    """Each webhook POST to the next replica (Caddy's ``lb_policy``), passed on as it came."""

    upstreams: list[str]
    sent: Counter[int] = field(default_factory=Counter)
    turn: itertools.count = field(default_factory=itertools.count)
    session: aiohttp.ClientSession = field(init=False, repr=False)  # set by ``topology`` before any POST

    async def handle(self, request: web.Request) -> web.Response:
        index = next(self.turn) % len(self.upstreams)
        self.sent[index] += 1
        headers = {key: value for key, value in request.headers.items() if key.lower().startswith("x-telegram")}
        headers["Content-Type"] = "application/json"
        try:
            async with self.session.post(self.upstreams[index] + request.path, data=await request.read(),
                                         headers=headers) as answer:
                return web.Response(status=answer.status, body=await answer.read())
        except aiohttp.ClientError:
            return web.Response(status=502)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Topology:
    server: Any
    replica_pids: list[int]  # in replica order
    proxy: RoundRobin
    db_url: str


def started_pid(process: multiprocessing.process.BaseProcess) -> int:
    """The process id of a started process (``pid`` is None only before ``start``)."""
    if process.pid is None:
        raise RuntimeError(f"process {process.name} was not started")
    return process.pid


@contextlib.asynccontextmanager
async def topology(args: argparse.Namespace, db_url: str) -> AsyncIterator[Topology]:
    """The playground and the proxy here, the replicas in children; everything stopped afterwards."""
    from bot.playground import PlaygroundServer

    with tempfile.TemporaryDirectory() as tmp:
        overrides: dict[str, Any] = {"data_dir": Path(tmp), "database_url": db_url, "rate_limit_per_minute": 10_000,
                                     "telegram_overall_rate": 0.0, "start_worker_in_bot": False,
                                     "model_poll_seconds": 3.0, "inference_threads": args.inference_threads}
        if args.model:
            overrides["starter_model_dir"] = Path(args.model).resolve()
        server = PlaygroundServer(TOKEN, webhook_backoff=0.1)
        await server.start()
        ports = [free_port() for _ in range(args.replicas)]
        proxy = RoundRobin([f"http://127.0.0.1:{port}" for port in ports])
        app = web.Application()
        app.router.add_post(HOOK_PATH, proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        proxy_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
        hook_url = f"http://127.0.0.1:{proxy_port}{HOOK_PATH}"
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        replicas, readies = [], []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as proxy.session:
            try:
                for index, port in enumerate(ports):
                    ready = context.Event()
                    child = context.Process(target=replica_main, name=f"bot-{index}",
                                            args=(overrides, server.url, hook_url, port, ready, stop))
                    child.start()
                    replicas.append(child)
                    readies.append(ready)
                for ready in readies:
                    if not await asyncio.to_thread(ready.wait, 300):
                        raise SystemExit("a replica did not start")
                yield Topology(server, [started_pid(child) for child in replicas], proxy, db_url)
            finally:
                stop.set()
                for child in replicas:
                    await asyncio.to_thread(child.join, 60)
                    if child.is_alive():
                        child.terminate()
                await runner.cleanup()
                await server.stop()


def doubled_answers(server: Any) -> int:
    """User messages the bot replied to more than once (each photo must get exactly one answer)."""
    replies = Counter((chat_id, message["reply_to_message"]["message_id"])
                      for (chat_id, _), message in server.state.messages.items()
                      if message.get("from", {}).get("is_bot") and message.get("reply_to_message"))
    return sum(1 for count in replies.values() if count > 1)


async def run(args: argparse.Namespace, db_url: str) -> int:
    plan = plan_from(args)
    async with topology(args, db_url) as top:
        if args.lose:
            top.server.state.add_faults("webhook", _lost_answer(), args.lose)
        load_before = machine_line()
        marks: dict[int, float] = {}

        async def on_go() -> None:
            marks.update({pid: proc_cpu_seconds(pid) for pid in top.replica_pids})

        outcome = await users_in_child(top.server.url, plan, on_go)
        cpu = {pid: proc_cpu_seconds(pid) - marks[pid] for pid in top.replica_pids}
        memory = {pid: proc_status(pid) for pid in top.replica_pids}
        doubled = doubled_answers(top.server)
        lost_injected = len([f for f in top.server.state.faults_served if f["method"] == "webhook"])
        check = await asyncio.to_thread(check_feedback, db_url, outcome)
    return report(args, plan, outcome, top, cpu, memory, doubled, lost_injected, load_before, check)


def _lost_answer() -> Any:
    from bot.playground.state import Fault

    return Fault("drop", after_accept=True)


def report(args: argparse.Namespace, plan: Any, outcome: Outcome, top: Topology, cpu: dict[int, float],
           memory: dict[int, dict[str, int]], doubled: int, lost_injected: int, load_before: str, check: Any) -> int:
    wall = outcome.finished - outcome.started
    end = outcome.started + plan.seconds
    photo_ms = [ms for _, ms in outcome.photos if ms is not None]
    press_ms = [ms for _, _, ms in outcome.presses if ms is not None]
    lost = sum(1 for _, ms in outcome.photos if ms is None)
    photos_in = sum(1 for sent, ms in outcome.photos if ms is not None and sent + ms / 1000 <= end)
    print(load_before + " (before)")
    print(f"{args.replicas} webhook replicas behind a round-robin proxy, PostgreSQL; {plan.users} users for "
          f"{plan.seconds:g} s (think time mean {plan.think:g} s); all done after {wall:.1f} s")
    print(f"webhook deliveries per replica: {dict(sorted(top.proxy.sent.items()))}; answers lost on purpose "
          f"(Telegram delivers those updates again): {lost_injected}")
    print(f"throughput in the {plan.seconds:g} s: {photos_in / plan.seconds:.1f} photos/s; in all {len(photo_ms)} "
          f"photos answered of {len(outcome.photos)} sent, {len(press_ms)} presses edited of {len(outcome.presses)}")
    print(latency_line("photo to answer", photo_ms) + "  (target p95 <= 150 ms)")
    print(latency_line("press to edited message", press_ms))
    for index, pid in enumerate(top.replica_pids):
        status = memory[pid]
        print(f"replica {index}: CPU {cpu[pid]:.1f} s ({cpu[pid] / wall:.2f} cores), peak RSS "
              f"{status.get('VmHWM', 0) / 1024:.0f} MB")
    errors = sum(outcome.errors.values())
    print(f"lost answers: {lost}; doubled answers: {doubled}; user-side errors: {errors}"
          + (f" {dict(outcome.errors)}" if errors else ""))
    print_feedback_check(check, outcome)
    print(machine_line() + " (after)")
    return 0 if not (lost or doubled or errors) and check.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--lose", type=int, default=20, help="deliveries whose answer the playground loses")
    parser.add_argument("--inference-threads", type=int, default=1, help="per replica (2 cores in all here)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    base = args.database_url or os.environ.get(PG_ENV)
    if not base or not base.startswith("postgresql"):
        print(f"bench.replicas needs PostgreSQL: --database-url or {PG_ENV} (scripts/test-env.sh sets it)",
              file=sys.stderr)
        return 2
    print(machine_line() + " (at start)", flush=True)
    started = time.monotonic()
    with temporary_schema(base, "bench") as db_url:
        status = asyncio.run(run(args, db_url))
    print(f"bench.replicas took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
