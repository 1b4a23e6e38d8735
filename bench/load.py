"""Load: many users sending photos and pressing buttons at once, through the local Bot API server; nothing lost.

Three processes, as in ``bench.bot_latency``: the playground (the local Bot API server) in this
one, the bot (python-telegram-bot long polling it, the real model, SQLite in a temp dir unless
``--database-url``) in a child, the simulated users in another child. Each user, for
``--seconds``: sends a photo, waits for the answer, thinks (exponential, mean ``--think`` s),
then presses ✅ Correct (``--correct`` of the time) or ❌ Wrong (or "It is a sneaker"), sometimes
▶ to the next page, and a model from the list; thinks again and sends the next photo.

Prints throughput (photos/s, presses/s), p50/p95/p99 latency (photo sent to answer received,
press to the edited message received), errors (target 0: any non-ok answer of the Bot API
or the user API, any photo without an answer, any press without its edit or its callback
answer, any alert, any error the bot logged), the bot's peak resident memory (VmHWM) and
CPU, and then opens the bot's database and checks that every press that stores feedback (✅,
and a pick from the list) is in the ``feedback`` table: count, prediction ids, verdicts, labels.
The ❌ Wrong, "It is a sneaker" and ▶ presses only redraw the message and store nothing.

    .venv/bin/python -m bench.load [--users 50] [--seconds 60] [--think 1.0] [--press 1.0] [--correct 0.6]
                                   [--page 0.2] [--pool 1000] [--photos-from DIR|synthetic] [--overall-rate 0]
                                   [--database-url URL] [--model DIR] [--without-memory]

``--without-memory`` is a diagnosis by elimination: the bot runs with the learning loop's instant
memory unplugged (feedback is still stored and its photos filed). Exit status 1 when anything was lost.

``bench.soak`` runs the same users at a steady rate for minutes and follows the bot's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.bot_latency import RATE_LIMIT_PER_MINUTE, TOKEN, photo_source, photos
from bench.machine import machine_line

ANSWER_TIMEOUT = 60.0  # seconds a user waits for an answer or an edit before counting it lost
EVENT_POLL = 5  # seconds of each user's long poll of its chat's events
WARM_UP_PHOTOS = 4  # photos answered before the clock starts (the first inference is slow); no presses

# ----------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and friends of a process, in kB, from /proc/<pid>/status."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key.startswith("Vm") or key.startswith("Rss"):
                values[key] = int(rest.split()[0])
    return values


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered))) - 1))]


# ----------------------------------------------------------------------------- the bot


class CountingHandler(logging.Handler):
    """Counts the bot's warnings and errors (by logger and level) and keeps the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}"] += 1
        if len(self.first) < 8:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.first.append(f"{record.levelname} {record.name}: {text}"[:300])


def bot_main(overrides: dict[str, Any], api_root: str, ready: Event, stop: Event, out: Queue,
             commands: Queue | None, trace_frames: int, without_memory: bool = False) -> None:
    """The bot in its own process, as in production. ``commands`` takes ("snapshot", path) when
    ``trace_frames`` > 0 (tracemalloc is on from the start); puts a summary when ``stop`` is set.
    ``without_memory`` (a diagnosis, by elimination) unplugs the learning loop's instant memory:
    feedback is still stored and filed, but no embedding is remembered or consulted."""
    from bot.app import build_runtime, start_bot, stop_bot
    from bot.settings import Settings

    if trace_frames:
        import tracemalloc

        tracemalloc.start(trace_frames)
    counting = CountingHandler()
    logging.getLogger().addHandler(counting)
    logging.getLogger().setLevel(logging.WARNING)

    def snapshots(requests: Queue) -> None:
        import tracemalloc

        while (command := requests.get()) is not None:
            snapshot = tracemalloc.take_snapshot().filter_traces([
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>")])
            snapshot.dump(command[1])
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            out.put(("snapshot", (command[1], current, peak)))

    async def serve() -> None:
        settings = Settings(**overrides)
        runtime = build_runtime(settings, api_root=api_root, token=TOKEN)
        if without_memory:
            runtime.services.identify.refiners.clear()
            runtime.services.feedback.listeners.clear()
        await start_bot(runtime, poll_timeout=settings.poll_timeout_s)
        served = runtime.services.models.current()
        if commands is not None:
            threading.Thread(target=snapshots, args=(commands,), daemon=True).start()
        ready.set()
        print(f"bot: model version {served.version}, {settings.inference_threads} inference threads, "
              f"{settings.concurrent_updates} concurrent updates, database {settings.db_url.split(':')[0]}, "
              f"Bot API client {settings.telegram_http}, overall rate limit {settings.telegram_overall_rate or 'off'}"
              f"{', tracemalloc on' if trace_frames else ''}"
              f"{', WITHOUT the learning memory (diagnosis)' if without_memory else ''}", flush=True)
        await asyncio.to_thread(stop.wait)
        await stop_bot(runtime)
        out.put(("done", {"log": dict(counting.counts), "first": counting.first}))

    asyncio.run(serve())


@dataclass
class BotUnderLoad:
    """The playground (this process), the bot (a child) and what the server saw."""

    server: Any
    bot: multiprocessing.process.BaseProcess
    db_url: str
    data_dir: Path
    bot_out: Queue
    commands: Queue | None
    server_errors: Counter[str] = field(default_factory=Counter)
    shutdown_errors: Counter[str] = field(default_factory=Counter)
    error_log: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), what) of each
    stopping_at: float = float("inf")  # when the bot was told to stop
    server_calls: Counter[str] = field(default_factory=Counter)
    bot_log: dict[str, Any] = field(default_factory=dict)
    # Called once the bot has stopped, while its data dir and database are still there.
    on_stopped: Callable[[BotUnderLoad], Any] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def count_error(self, what: str) -> None:
        now = time.monotonic()
        if now >= self.stopping_at:
            # PTB's Updater.stop confirms the last update with one more getUpdates, which ends its own
            # abandoned long poll with 409 here: nobody reads that answer.
            self.shutdown_errors[what] += 1
            return
        self.server_errors[what] += 1
        self.error_log.append((now, what))

    @property
    def pid(self) -> int:
        return self.bot.pid or 0

    def snapshot(self, path: Path, timeout: float = 120.0) -> tuple[int, int] | None:
        """Ask the bot for a tracemalloc snapshot dumped to ``path``: once written, the traced memory
        now and its peak since the last snapshot (bytes); None when none was taken."""
        if self.commands is None:
            return None
        self.commands.put(("snapshot", str(path)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kind, value = self.bot_out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if kind == "snapshot":
                return value[1], value[2]
        return None


def bot_overrides(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The bot's settings: its own data dir, the rate limit counted but never refusing, no Telegram pacing."""
    overrides: dict[str, Any] = {"data_dir": data_dir, "rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
                                    "telegram_overall_rate": args.overall_rate, "poll_timeout_s": 10}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.model:
        overrides["starter_model_dir"] = Path(args.model).resolve()
    return overrides


@contextlib.asynccontextmanager
async def bot_under_load(args: argparse.Namespace, *, trace_frames: int = 0) -> AsyncIterator[BotUnderLoad]:
    """Playground here (every answer it gives counted by route and status), the bot in a child."""
    from aiohttp import web

    from bot.playground import PlaygroundServer
    from bot.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        overrides = bot_overrides(args, Path(tmp))
        db_url = Settings(**overrides).db_url
        server = PlaygroundServer(TOKEN)
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        out: Queue = context.Queue()
        commands: Queue | None = context.Queue() if trace_frames else None
        handle = BotUnderLoad(server, None, db_url, Path(tmp), out, commands)  # type: ignore[arg-type]

        @web.middleware
        async def count_answers(request: web.Request, handler: Callable) -> web.StreamResponse:
            route = route_name(request.path)
            handle.server_calls[route] += 1
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                handle.count_error(f"{route} {exc.status}")
                raise
            except Exception as exc:
                handle.count_error(f"{route} {type(exc).__name__}")
                raise
            if response.status >= 400:
                handle.count_error(f"{route} {response.status}")
            return response

        server.app.middlewares.insert(0, count_answers)  # outermost: sees the answers as sent
        await server.start()
        handle.bot = context.Process(target=bot_main, args=(overrides, server.url, ready, stop, out, commands,
                                                            trace_frames, getattr(args, "without_memory", False)),
                                     name="bot")
        handle.bot.start()
        try:
            if not await asyncio.to_thread(ready.wait, 300):
                raise SystemExit("the bot did not start")
            yield handle
        finally:
            handle.stopping_at = time.monotonic()
            stop.set()
            if commands is not None:
                commands.put(None)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    kind, value = await asyncio.to_thread(out.get, True, max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if kind == "done":
                    handle.bot_log = value
                    break
            await asyncio.to_thread(handle.bot.join, 30)
            if handle.bot.is_alive():
                handle.bot.terminate()
            await server.stop()
            if handle.on_stopped is not None:
                await asyncio.to_thread(handle.on_stopped, handle)


def route_name(path: str) -> str:
    """"Bot API getUpdates", "download", "user API messages" and so on (ids left out)."""
    if path.startswith("/bot"):
        return "Bot API " + path.rsplit("/", 1)[-1]
    if path.startswith("/file/"):
        return "Bot API download"
    if path.startswith("/playground/api/chats/"):
        return "user API " + path.rsplit("/", 1)[-1]
    return path


# ----------------------------------------------------------------------------- simulated users


@dataclass
class Outcome:
    """What the users saw. Times are ``time.monotonic()`` (one clock for every process on Linux)."""

    photos: list[tuple[float, float | None]] = field(default_factory=list)  # (sent at, ms to answer or None)
    presses: list[tuple[float, str, float | None]] = field(default_factory=list)  # (pressed at, action, ms to edit)
    # Presses the Bot API took that store feedback: (prediction id, user, verdict, label, edit received).
    stored: list[tuple[int, int, str, str | None, bool]] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)  # every prediction id answered (pressed or not)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    finished: float = 0.0
    cpu_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "errors": dict(self.errors)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Outcome:
        return cls(**{**values, "errors": Counter(values["errors"])})


@dataclass
class Plan:
    """How the users behave."""

    users: int = 50
    seconds: float = 60.0
    think: float = 1.0  # mean pause (s) before each press and before the next photo; exponential
    press: float = 1.0  # share of answers the user presses a button under at all
    correct: float = 0.6  # share of answers confirmed with ✅ (the others: ❌ Wrong, then a model)
    page: float = 0.2  # share of corrections that first go ▶ to the next page
    pool: int = 1000  # distinct photos, used in turn (a photo may come back, from another user)
    source: str | None = None  # folder of class folders of real photos, or None for synthetic
    rate: float = 0.0  # 0: each user goes on after the last press (closed loop); else photos/s in total (open loop)
    first_user: int = 100_000
    seed: int = 0


class Chat:
    """One user's chat: sends, presses, and one long poll that files each bot event for whoever waits for it."""

    def __init__(self, session: aiohttp.ClientSession, user_id: int, outcome: Outcome) -> None:
        self.session = session
        self.user_id = user_id
        self.outcome = outcome
        self.arrived: dict[tuple[str, int], deque[tuple[float, dict]]] = {}
        self.waiting: dict[tuple[str, int], asyncio.Future] = {}
        self.callback_answers: dict[str, dict] = {}
        self.pressed: set[str] = set()
        self.cursor = 0

    def _path(self, tail: str) -> str:
        return f"/playground/api/chats/{self.user_id}/{tail}"

    async def listen(self) -> None:
        """Long-poll the chat's events for as long as the chat lives."""
        while True:
            try:
                async with self.session.get(self._path("events"),
                                            params={"after": self.cursor, "timeout": EVENT_POLL}) as response:
                    body = await response.json()
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.outcome.errors[f"user API events: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            now = time.monotonic()
            if not body.get("ok"):
                self.outcome.errors[f"user API events: {body.get('description')}"] += 1
                continue
            events = body["result"]["events"]
            # Every event of this chat up to "last" is in this answer: later polls need not scan them again.
            self.cursor = max([self.cursor, body["result"]["last"], *(e["seq"] for e in events)])
            for event in events:
                self._file(event, now)

    def _file(self, event: dict, now: float) -> None:
        message = event.get("message") or {}
        if event["type"] == "message" and message.get("from", {}).get("is_bot"):
            reply_to = (message.get("reply_to_message") or {}).get("message_id")
            if reply_to is None:
                self.outcome.errors["bot message that answers no photo"] += 1
            else:
                self._deliver(("answer", reply_to), now, message)
        elif event["type"] == "edit":
            self._deliver(("edit", message["message_id"]), now, message)
        elif event["type"] == "callback_answer":
            self.callback_answers[event["callback_query_id"]] = event

    def _deliver(self, key: tuple[str, int], now: float, message: dict) -> None:
        waiter = self.waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result((now, message))
        else:
            self.arrived.setdefault(key, deque()).append((now, message))

    async def wait_for(self, key: tuple[str, int], timeout: float = ANSWER_TIMEOUT) -> tuple[float, dict] | None:
        """The next event filed under ``key`` (arrival time, message), or None after ``timeout``."""
        early = self.arrived.get(key)
        if early:
            return early.popleft()
        future = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.waiting.pop(key, None)
            return None

    async def _post(self, tail: str, what: str, **kwargs: Any) -> Any:
        try:
            async with self.session.post(self._path(tail), **kwargs) as response:
                body = await response.json()
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.outcome.errors[f"user API {what}: {type(exc).__name__}"] += 1
            return None
        if not body.get("ok"):
            self.outcome.errors[f"user API {what}: {body.get('error_code')} {body.get('description')}"] += 1
            return None
        return body["result"]

    async def send_photo(self, data: bytes) -> tuple[float, dict | None]:
        """Send one photo; (sent at, the bot's answer or None)."""
        form = aiohttp.FormData()
        form.add_field("photo", data, filename="p.jpg", content_type="image/jpeg")
        started = time.monotonic()
        sent = await self._post("messages", "send photo", data=form)
        if sent is None:
            return started, None
        answer = await self.wait_for(("answer", sent[0]["message_id"]))
        if answer is None:
            self.outcome.errors["photo without an answer"] += 1
            self.outcome.photos.append((started, None))
            return started, None
        self.outcome.photos.append((started, (answer[0] - started) * 1000))
        return started, answer[1]

    async def press(self, message: dict, data: str) -> tuple[bool, dict | None]:
        """Press the button with ``data`` under ``message``: (taken by the user API, the edited message or None)."""
        key = ("edit", message["message_id"])
        started = time.monotonic()
        result = await self._post("callback", "press", json={"message_id": message["message_id"], "data": data})
        action = data.split(":", 1)[0]
        if result is None:
            self.outcome.presses.append((started, action, None))
            return False, None
        self.pressed.add(result["callback_query_id"])
        edited = await self.wait_for(key)
        if edited is None:
            self.outcome.errors["press without its edit"] += 1
            self.outcome.presses.append((started, action, None))
            return True, None
        self.outcome.presses.append((started, action, (edited[0] - started) * 1000))
        return True, edited[1]

    def settle(self) -> None:
        """Count presses the bot never answered (or answered with an alert), and stray edits."""
        for query_id in self.pressed:
            answer = self.callback_answers.get(query_id)
            if answer is None:
                self.outcome.errors["press without a callback answer"] += 1
            elif answer.get("show_alert"):
                self.outcome.errors[f"alert: {answer.get('text')}"] += 1
        stray = sum(len(q) for key, q in self.arrived.items())
        if stray:
            self.outcome.errors["answer or edit nobody waited for"] += stray


def buttons(message: dict) -> list[str]:
    """The callback data of every inline button of a message."""
    return [item["callback_data"] for row in (message.get("reply_markup") or {}).get("inline_keyboard", [])
            for item in row if "callback_data" in item]


def think(rng: np.random.Generator, mean: float) -> Awaitable[None]:
    return asyncio.sleep(float(rng.exponential(mean)) if mean > 0 else 0)


async def conversation(chat: Chat, data: bytes, plan: Plan, rng: np.random.Generator) -> None:
    """One photo: send, wait for the answer, think, then ✅, or ❌ / "It is a sneaker" [▶] and a model."""
    _, answer = await chat.send_photo(data)
    if answer is None:
        return
    datas = buttons(answer)
    confirm = next((d for d in datas if d.startswith("c:")), None)
    wrong = next((d for d in datas if d.startswith(("w:", "s:"))), None)
    if wrong is None:
        chat.outcome.errors["answer without buttons"] += 1
        return
    prediction_id = int(wrong.split(":")[1])
    chat.outcome.predictions.append(prediction_id)
    if rng.random() >= plan.press:
        return
    await think(rng, plan.think)
    if confirm is not None and rng.random() < plan.correct:
        taken, edited = await chat.press(answer, confirm)
        if taken:
            chat.outcome.stored.append((prediction_id, chat.user_id, "correct", None, edited is not None))
        return
    _, listing = await chat.press(answer, wrong)
    if listing is None:
        return
    forward = next((d for d in buttons(listing) if d.startswith("p:")), None)
    if forward is not None and rng.random() < plan.page:
        await think(rng, plan.think / 4)
        _, listing = await chat.press(listing, forward)
        if listing is None:
            return
    models = [d for d in buttons(listing) if d.startswith("l:")]
    if not models:
        chat.outcome.errors["model list without models"] += 1
        return
    await think(rng, plan.think)
    pick = models[int(rng.integers(len(models)))]
    taken, edited = await chat.press(listing, pick)
    if taken:
        chat.outcome.stored.append((prediction_id, chat.user_id, "wrong", pick.split(":", 2)[2], edited is not None))


async def run_users(url: str, plan: Plan, go: Event | None = None) -> Outcome:
    """The users of ``plan`` against the playground at ``url``; ``go`` is set when the clock starts."""
    outcome = Outcome()
    source = Path(plan.source) if plan.source else None
    pool = photos(plan.pool, source, seed=plan.seed)
    warm = photos(WARM_UP_PHOTOS, source, seed=plan.seed + 1)
    rng = np.random.default_rng(plan.seed)
    connector = aiohttp.TCPConnector(limit=0)  # every user's long poll and sends at once
    async with aiohttp.ClientSession(url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT * 2)) as session:
        warm_chat = Chat(session, plan.first_user - 1, Outcome())
        warm_listener = asyncio.create_task(warm_chat.listen())
        for data in warm:
            await warm_chat.send_photo(data)
        warm_listener.cancel()
        chats = [Chat(session, plan.first_user + i, outcome) for i in range(plan.users)]
        listeners = [asyncio.create_task(chat.listen()) for chat in chats]
        next_photo = iter(range(10**9))
        cpu_before = time.process_time()
        outcome.started = time.monotonic()
        if go is not None:
            go.set()
        deadline = outcome.started + plan.seconds

        async def closed_loop(chat: Chat, user_rng: np.random.Generator) -> None:
            await asyncio.sleep(float(user_rng.uniform(0, plan.think)))  # users do not start in step
            while time.monotonic() < deadline:
                await conversation(chat, pool[next(next_photo) % len(pool)], plan, user_rng)
                if time.monotonic() < deadline:
                    await think(user_rng, plan.think)

        async def open_loop() -> None:
            # One Poisson process of ``rate`` photos/s shared out among the users in turn.
            running, arrival, turn = set(), outcome.started, 0
            while True:
                arrival += float(rng.exponential(1.0 / plan.rate))
                if arrival >= deadline:
                    break
                await asyncio.sleep(max(0.0, arrival - time.monotonic()))
                chat = chats[turn % len(chats)]
                task = asyncio.create_task(conversation(chat, pool[turn % len(pool)], plan,
                                                        np.random.default_rng([plan.seed, turn])))
                running.add(task)
                task.add_done_callback(running.discard)
                turn += 1
            await asyncio.gather(*list(running))

        if plan.rate:
            await open_loop()
        else:
            await asyncio.gather(*(closed_loop(chat, np.random.default_rng([plan.seed, i]))
                                   for i, chat in enumerate(chats)))
        outcome.finished = time.monotonic()
        outcome.cpu_seconds = time.process_time() - cpu_before
        await asyncio.sleep(1.0)  # callback answers still on their way
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        for chat in chats:
            chat.settle()
    return outcome


def users_main(url: str, plan: Plan, go: Event, out: Queue) -> None:
    """The simulated users in their own process; puts their ``Outcome`` as a dict."""
    try:
        out.put(asyncio.run(run_users(url, plan, go)).as_dict())
    except BaseException as exc:
        out.put({"crash": f"{type(exc).__name__}: {exc}"})
        raise


async def users_in_child(url: str, plan: Plan, on_go: Callable[[], Any] | None = None) -> Outcome:
    """Run the users in a child process; ``on_go`` is awaited when their clock starts (e.g. a sampler)."""
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()
    child = context.Process(target=users_main, args=(url, plan, go, out), name="users")
    child.start()
    sampler = None
    if not await asyncio.to_thread(go.wait, 600):
        raise SystemExit("the simulated users did not start")
    if on_go is not None:
        sampler = asyncio.ensure_future(on_go())
    result = await asyncio.to_thread(out.get, True, plan.seconds + 30 * ANSWER_TIMEOUT)
    await asyncio.to_thread(child.join, 60)
    if sampler is not None:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    if "crash" in result:
        raise SystemExit(f"the simulated users crashed: {result['crash']}")
    return Outcome.from_dict(result)


# ----------------------------------------------------------------------------- the database check


@dataclass
class FeedbackCheck:
    expected: int
    rows: int  # feedback rows of this run's predictions
    table_rows: int  # all rows of the feedback table
    missing: list[tuple]
    unexpected: list[tuple]
    wrong_label: list[tuple]
    ids: list[int]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_label) and self.rows == self.expected


def check_feedback(db_url: str, outcome: Outcome) -> FeedbackCheck:
    """Every press that stores feedback must be one row of ``feedback``, with its prediction, user,
    verdict and label (a ✅'s label is the prediction's top guess); nothing else for those predictions."""
    from sqlalchemy import create_engine, select

    from bot.store.models import Feedback, Prediction

    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Feedback.id, Feedback.prediction_id, Feedback.user_id, Feedback.verdict,
                                             Feedback.label)).all()
            tops: dict[int, list] = dict(connection.execute(select(Prediction.id, Prediction.top)).all())
    finally:
        engine.dispose()
    ours = set(outcome.predictions)
    found = Counter((pid, user, verdict, label) for _, pid, user, verdict, label in rows if pid in ours)
    wanted: Counter[tuple] = Counter()
    wrong_label = []
    for pid, user, verdict, label, _ in outcome.stored:
        if verdict == "correct":
            label = (tops.get(pid) or [{}])[0].get("label")
        elif label is not None and label.startswith("#"):  # a long label's hashed button data
            label = next((lab for (p, _, v, lab) in found if p == pid and lab and
                          "#" + hashlib.sha1(lab.encode()).hexdigest()[:12] == label), label)
        wanted[(pid, user, verdict, label)] += 1
    missing = list((wanted - found).elements())
    unexpected = list((found - wanted).elements())
    for key in missing:  # a row for that press with another label is a wrong label, not a lost press
        if any(k[:3] == key[:3] for k in unexpected):
            wrong_label.append(key)
    return FeedbackCheck(sum(wanted.values()), sum(found.values()), len(rows), missing, unexpected, wrong_label,
                         sorted({pid for pid, *_ in outcome.stored}))


def print_feedback_check(check: FeedbackCheck, outcome: Outcome) -> None:
    verdicts = Counter(verdict for _, _, verdict, *_ in outcome.stored)
    unedited = sum(1 for *_, edited in outcome.stored if not edited)
    ids = check.ids
    span = f"prediction ids {ids[0]}..{ids[-1]}, {len(ids)} distinct" if ids else "no ids"
    print(f"feedback table: {check.rows} rows for this run's {len(set(outcome.predictions))} answered predictions "
          f"({check.table_rows} in the table); presses that store feedback: {check.expected} "
          f"(✅ {verdicts['correct']}, a model from the list {verdicts['wrong']}"
          f"{f'; {unedited} of them never saw their edit' if unedited else ''}); {span}")
    verdict = "OK, every press is there (prediction id, user, verdict, label), nothing else" if check.ok else "FAILED"
    print(f"feedback check: {verdict}; missing {len(check.missing)}, "
          f"unexpected {len(check.unexpected)}, wrong label {len(check.wrong_label)}")
    for name, items in (("missing", check.missing), ("unexpected", check.unexpected)):
        if items:
            print(f"  {name} (prediction id, user, verdict, label): {items[:20]}{' ...' if len(items) > 20 else ''}")


# ----------------------------------------------------------------------------- the report


def latency_line(name: str, values: list[float]) -> str:
    return (f"{name}: p50 {percentile(values, 50):.0f} ms, p95 {percentile(values, 95):.0f} ms, "
            f"p99 {percentile(values, 99):.0f} ms, max {max(values, default=float('nan')):.0f} ms ({len(values)})")


def error_lines(outcome: Outcome, bot: BotUnderLoad) -> list[str]:
    """Every kind of error seen, by whom; empty when there were none."""
    lines = [f"  users: {name}: {count}" for name, count in sorted(outcome.errors.items())]
    for name, count in sorted(bot.server_errors.items()):
        times = [t - outcome.started for t, what in bot.error_log if what == name]
        lines.append(f"  server answered non-ok: {name}: {count} (at {', '.join(f'{t:+.1f}' for t in times[:5])}"
                     f"{' ...' if len(times) > 5 else ''} s from the start; the users were done at "
                     f"{outcome.finished - outcome.started:+.1f} s)")
    lines += [f"  (not counted: while the bot stopped, the server answered {name} {count} time(s))"
              for name, count in sorted(bot.shutdown_errors.items())]
    lines += [f"  bot log: {name}: {count}" for name, count in sorted(bot.bot_log.get("log", {}).items())]
    lines += [f"    {text}" for text in bot.bot_log.get("first", [])]
    return lines


def error_total(outcome: Outcome, bot: BotUnderLoad) -> int:
    return (sum(outcome.errors.values()) + sum(bot.server_errors.values())
            + sum(n for name, n in bot.bot_log.get("log", {}).items() if name.startswith(("ERROR", "CRITICAL"))))


def report(plan: Plan, outcome: Outcome, bot: BotUnderLoad, memory: dict[str, int], bot_cpu: float,
           server_cpu: float, load_before: str, check: FeedbackCheck) -> None:
    wall = outcome.finished - outcome.started
    photo_ms = [ms for _, ms in outcome.photos if ms is not None]
    press_ms = [ms for _, _, ms in outcome.presses if ms is not None]
    # Throughput over the run's window: answers and edits received in it (the last conversations end after it).
    end = outcome.started + plan.seconds
    photos_in = sum(1 for sent, ms in outcome.photos if ms is not None and sent + ms / 1000 <= end)
    presses_in = sum(1 for sent, _, ms in outcome.presses if ms is not None and sent + ms / 1000 <= end)
    actions = Counter(action for _, action, _ in outcome.presses)
    print(load_before + " (before)")
    print(f"photos: {f'real sneaker photos from {plan.source}, re-encoded at 800 px' if plan.source else 'synthetic'}"
          f", {plan.pool} distinct, used in turn")
    sending = f"{plan.rate:g} photos/s offered in total" if plan.rate else "each goes on after the last press"
    print(f"{plan.users} users for {plan.seconds:g} s ({sending}; think time mean {plan.think:g} s; "
          f"{plan.press:.0%} of answers pressed: ✅ {plan.correct:.0%}, else ❌ and a model, "
          f"▶ first in {plan.page:.0%} of those); "
          f"all done after {wall:.1f} s")
    print(f"throughput in the {plan.seconds:g} s: {photos_in / plan.seconds:.1f} photos/s, "
          f"{presses_in / plan.seconds:.1f} presses/s; in all {len(photo_ms)} photos answered of "
          f"{len(outcome.photos)} sent, {len(press_ms)} presses edited of {len(outcome.presses)} ("
          + ", ".join(f"{ACTION_NAMES.get(a, a)} {n}" for a, n in sorted(actions.items())) + ")")
    print(latency_line("photo to answer", photo_ms))
    print(latency_line("press to edited message", press_ms))
    total = error_total(outcome, bot)
    print(f"errors: {total}" + ("" if total else " (no non-ok API answer, every photo answered, every press edited "
                                               "and answered, nothing logged at ERROR)"))
    for line in error_lines(outcome, bot):
        print(line)
    warnings = sum(n for name, n in bot.bot_log.get("log", {}).items() if name.startswith("WARNING"))
    if warnings:
        print(f"  (of which bot log warnings, not counted as errors: {warnings})")
    print(f"bot memory: peak RSS (VmHWM) {memory.get('VmHWM', 0) / 1024:.0f} MB, RSS at the end "
          f"{memory.get('VmRSS', 0) / 1024:.0f} MB (pid {bot.pid})")
    print(f"CPU: bot {bot_cpu:.1f} s ({bot_cpu / wall:.2f} cores, {bot_cpu * 1000 / max(1, len(photo_ms)):.1f} ms "
          f"per photo with its presses), Bot API server (playground) {server_cpu:.1f} s, simulated users "
          f"{outcome.cpu_seconds:.1f} s")
    print_feedback_check(check, outcome)
    print(machine_line() + " (after)")


ACTION_NAMES = {"c": "✅", "w": "❌", "s": "it is a sneaker", "p": "▶", "l": "model picked"}


def server_cpu_seconds() -> float:
    """CPU time of this process (the playground) so far."""
    return time.process_time()


async def run_load(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    async with bot_under_load(args) as bot:
        load_before = machine_line()
        marks: dict[str, float] = {}

        async def on_go() -> None:
            marks.update(bot=proc_cpu_seconds(bot.pid), server=server_cpu_seconds())

        outcome = await users_in_child(bot.url, plan, on_go)
        bot_cpu = proc_cpu_seconds(bot.pid) - marks["bot"]
        server_cpu = server_cpu_seconds() - marks["server"]
        memory = proc_status(bot.pid)
        checks: list[FeedbackCheck] = []
        bot.on_stopped = lambda stopped: checks.append(check_feedback(stopped.db_url, outcome))
    report(plan, outcome, bot, memory, bot_cpu, server_cpu, load_before, checks[0])
    return 0 if checks[0].ok and error_total(outcome, bot) == 0 else 1


def plan_from(args: argparse.Namespace) -> Plan:
    source = photo_source(args)
    return Plan(users=args.users, seconds=args.seconds, think=args.think, press=args.press, correct=args.correct,
                page=args.page,
                pool=args.pool, source=str(source) if source else None, rate=getattr(args, "rate", 0.0) or 0.0,
                seed=args.seed)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--think", type=float, default=1.0, help="mean think time (s) before each press and photo")
    parser.add_argument("--press", type=float, default=1.0, help="share of answers pressed on at all")
    parser.add_argument("--correct", type=float, default=0.6, help="share of pressed answers confirmed with ✅")
    parser.add_argument("--page", type=float, default=0.2, help="share of corrections that go ▶ first")
    parser.add_argument("--pool", type=int, default=1000, help="distinct photos, used in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overall-rate", type=float, default=0.0,
                        help="the bot's SNEAKERBOT_TELEGRAM_OVERALL_RATE (default 0: off; the playground has no "
                             "Telegram limit)")
    parser.add_argument("--model", help="model directory (default: the starter model)")
    parser.add_argument("--photos-from", help="a folder of class folders of sneaker photos (default: "
                        "../shared/datasets/air-jordan when present), or 'synthetic'")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in a temp dir)")
    parser.add_argument("--without-memory", action="store_true",
                        help="diagnosis by elimination: unplug the learning loop's instant memory in the bot "
                             "(feedback is still stored and its photos filed)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the load and print the figures; exit status 1 when anything was lost or failed."""
    args = parse_args(argv)
    print(machine_line() + " (at start)", flush=True)
    return asyncio.run(run_load(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
