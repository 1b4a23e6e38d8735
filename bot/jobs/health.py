"""The worker's health and metrics, on a small threaded HTTP server of the standard library.

The worker is a synchronous process (APScheduler's threads), so it serves these from
``http.server.ThreadingHTTPServer`` in a daemon thread rather than the bot's aiohttp app
(``bot/web.py``); the answers have the same shape as the bot's:

- ``GET /healthz``: 200 while the process serves HTTP (liveness).
- ``GET /readyz``: 200 when the scheduler runs and the database answers ``SELECT 1`` within
  ``READY_DB_TIMEOUT_S``; 503 otherwise, with a short JSON reason.
- ``GET /metrics``: Prometheus' text format, from the server's own ``CollectorRegistry``.

The job and scrape numbers are read from the database at each scrape (``WorkerCollector``),
not counted in this process, so they survive restarts and are the same whichever worker is
asked:

- ``sneakerbot_job_runs_total{job,status}``: finished runs in ``job_runs``; ``job`` is the job id
  without its argument (``scrape_now:air_max_90`` counts as ``scrape_now``), ``status`` is
  ``ok``, ``failed`` or ``interrupted`` (the worker stopped in the middle);
- ``sneakerbot_job_last_finished_timestamp_seconds{job,status}``: when the last such run ended
  (for "no good nightly retrain for two days" alerts);
- ``sneakerbot_scrape_runs_total``: finished scrape runs (one per class scraped);
- ``sneakerbot_images{source,status}``: images stored now, by source (user, scraper, dataset) and
  status (train, review, rejected); ``source="scraper"`` is what the scrapes kept;
- ``sneakerbot_worker_database_up``: 1 when this scrape could read the database (0: the numbers
  above are missing from it);
- ``sneakerbot_build_info{version,python}`` and the process' own ``process_*`` metrics.

``serve_worker_health`` starts it when ``SNEAKERBOT_HEALTH_PORT`` is set. When the port is
taken (the bot serves its own health there and runs this worker as its child) the worker
runs without it and says so in the log.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING, BaseScheduler
from prometheus_client import CollectorRegistry, Info, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bot.jobs.scheduler import PERIODIC_JOBS
from bot.metrics import CONTENT_TYPE, build_version
from bot.settings import Settings
from bot.store.repositories import ImageRepository, JobRunRepository, ScrapeRunRepository

log = logging.getLogger(__name__)
T = TypeVar("T")

READY_DB_TIMEOUT_S = 2.0  # /readyz and /metrics wait this long for the database
JOB_STATUSES = ("ok", "failed", "interrupted")
# Jobs whose series exist from the start (a rate over a missing series is empty); others appear with their first run.
KNOWN_JOBS = (*(spec.id for spec in PERIODIC_JOBS), "retrain_now", "scrape_now")
IMAGE_SOURCES = ("user", "scraper", "dataset")  # ``Image.source`` and ``Image.status`` values
IMAGE_STATUSES = ("train", "review", "rejected")


# --------------------------------------------------------------------------- what the database says


@dataclass(frozen=True)
class WorkerCounts:
    """The numbers ``/metrics`` shows, read from the database in one go."""

    job_runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (job, status) -> finished runs
    last_finished: dict[tuple[str, str], float] = field(default_factory=dict)  # (job, status) -> unix time
    scrape_runs: int = 0
    images: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, status) -> images


def job_name(job_id: str) -> str:
    """The metric's ``job`` label: the id without its argument (``scrape_now:<label>`` -> ``scrape_now``)."""
    return job_id.split(":", 1)[0]


def read_counts(engine: Engine) -> WorkerCounts:
    """Job runs, scrape runs and images as the database holds them now."""
    job_runs: dict[tuple[str, str], int] = {}
    last_finished: dict[tuple[str, str], float] = {}
    with Session(engine) as session:
        for job_id, job_status, count, last in JobRunRepository(session).finished_by_status():
            key = (job_name(job_id), job_status)
            job_runs[key] = job_runs.get(key, 0) + count
            last_finished[key] = max(last_finished.get(key, 0.0), _timestamp(last))
        scrape_runs = ScrapeRunRepository(session).count_finished()
        images = ImageRepository(session).count_by_source_status()
    return WorkerCounts(job_runs, last_finished, scrape_runs, images)


def _timestamp(value: datetime | str) -> float:
    if isinstance(value, str):  # SQLite's MAX() of a datetime column comes back as its text
        value = datetime.fromisoformat(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class WorkerCollector:
    """A Prometheus collector that asks ``read`` for the counts at every scrape."""

    def __init__(self, read: Callable[[], WorkerCounts]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (registering must not touch the database)."""
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        """The families with the database's numbers, or only ``database_up 0`` when it cannot be read."""
        try:
            counts = self._read()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:  # the class only: messages may name hosts
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
            counts = None
        return iter(self._families(counts))

    @staticmethod
    def _families(counts: WorkerCounts | None) -> list[Metric]:
        up = GaugeMetricFamily("sneakerbot_worker_database_up", "1 when this scrape could read the database")
        if counts is None:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        runs = CounterMetricFamily("sneakerbot_job_runs", "Finished worker job runs, by job and status",
                                   labels=["job", "status"])
        last = GaugeMetricFamily("sneakerbot_job_last_finished_timestamp_seconds",
                                 "When the last run of a job with this status finished", labels=["job", "status"])
        known = {(job, status): 0 for job in KNOWN_JOBS for status in JOB_STATUSES}
        for (job, status), count in sorted({**known, **counts.job_runs}.items()):
            runs.add_metric([job, status], count)
        for (job, status), when in sorted(counts.last_finished.items()):
            last.add_metric([job, status], when)
        scrapes = CounterMetricFamily("sneakerbot_scrape_runs", "Finished scrape runs (one per class scraped)")
        scrapes.add_metric([], counts.scrape_runs)
        images = GaugeMetricFamily("sneakerbot_images", "Images stored, by source and status",
                                   labels=["source", "status"])
        known_images = {(source, status): 0 for source in IMAGE_SOURCES for status in IMAGE_STATUSES}
        for (source, status), count in sorted({**known_images, **counts.images}.items()):
            images.add_metric([source, status], count)
        return [up, runs, last, scrapes, images]


# --------------------------------------------------------------------------- the server


def select_one(engine: Engine) -> None:
    """Raise unless the database answers."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def scheduler_problem(scheduler: BaseScheduler | None) -> str | None:
    """Why the scheduler does not run jobs now, or None when it does."""
    if scheduler is None or scheduler.state != STATE_RUNNING:
        return "scheduler paused" if scheduler is not None and scheduler.state == STATE_PAUSED \
            else "scheduler not running"
    loop = getattr(scheduler, "_thread", None)  # BackgroundScheduler's loop, if it shows it: a dead one takes no job
    if isinstance(loop, threading.Thread) and not loop.is_alive():
        return "scheduler loop stopped"
    return None


class WorkerHealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` of a worker on ``host:port`` (0: a free port).

    ``watch`` the scheduler once it exists; until it runs, ``/readyz`` says so. Database calls
    run on one thread of their own with a timeout, so a database that hangs makes answers
    fail, never requests pile up.
    """

    def __init__(self, host: str, port: int, engine: Engine, *, db_timeout: float = READY_DB_TIMEOUT_S) -> None:
        self.host, self.port = host, port
        self.engine = engine
        self.scheduler: BaseScheduler | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(WorkerCollector(lambda: self._on_database(read_counts)))
        Info("sneakerbot_build", "The running build", registry=self.registry).info(
            {"version": build_version(), "python": platform.python_version()})
        ProcessCollector(registry=self.registry)
        self._db_timeout = db_timeout
        self._database = ThreadPoolExecutor(1, thread_name_prefix="worker-health-db")
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def watch(self, scheduler: BaseScheduler) -> None:
        """Answer ``/readyz`` from this scheduler's state."""
        self.scheduler = scheduler

    def start(self) -> None:
        """Bind (``OSError`` when the port is taken) and serve in a daemon thread."""
        if self._httpd is not None:
            return
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="worker-health", daemon=True)
        self._thread.start()
        log.info("serving /healthz, /readyz, /metrics on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        self._database.shutdown(wait=False, cancel_futures=True)

    def readiness(self) -> tuple[int, dict]:
        """(HTTP status, JSON body) of ``/readyz``."""
        problem = scheduler_problem(self.scheduler)
        if problem is not None:
            return 503, {"ready": False, "reason": problem}
        try:
            self._on_database(select_one)
        except TimeoutError:
            return 503, {"ready": False, "reason": f"database: no answer within {self._db_timeout:g}s"}
        except (SQLAlchemyError, OSError) as exc:  # the class only: messages may name hosts and users
            return 503, {"ready": False, "reason": f"database: {type(exc).__name__}"}
        return 200, {"ready": True}

    def metrics(self) -> bytes:
        """Prometheus' text format of the server's registry."""
        return generate_latest(self.registry)

    def _on_database(self, call: Callable[[Engine], T]) -> T:
        """``call(engine)`` on the database thread; ``TimeoutError`` after ``db_timeout``."""
        try:
            return self._database.submit(call, self.engine).result(timeout=self._db_timeout)
        except FutureTimeout as exc:
            raise TimeoutError(f"no answer within {self._db_timeout:g}s") from exc


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: WorkerHealthServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.health = health
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        """The three routes; anything else is 404."""
        health = self.server.health
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, _json({"ok": True}))
        elif path == "/readyz":
            status, body = health.readiness()
            self._send(status, _json(body))
        elif path == "/metrics":
            self._send(200, (health.metrics(), CONTENT_TYPE))
        else:
            self._send(404, _json({"ok": False, "reason": "not found"}))

    def _send(self, status: int, content: tuple[bytes, str]) -> None:
        body, content_type = content
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Requests are not logged (a probe every few seconds would fill the log)."""


def _json(body: dict) -> tuple[bytes, str]:
    return json.dumps(body, separators=(",", ":")).encode(), "application/json; charset=utf-8"


def serve_worker_health(settings: Settings, engine: Engine) -> WorkerHealthServer | None:
    """The worker's health server on ``health_host:health_port``, started; None when no port is set
    or it is taken (logged: the worker runs on without it)."""
    if settings.health_port is None:
        return None
    server = WorkerHealthServer(settings.health_host, settings.health_port, engine)
    try:
        server.start()
    except OSError as exc:
        log.warning("not serving worker health on %s:%s (%s); a bot running this worker as its child serves "
                    "its own there", settings.health_host, settings.health_port, exc.strerror or exc)
        server.stop()
        return None
    return server

