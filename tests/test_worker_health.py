"""The worker's /healthz, /readyz and /metrics (``bot/jobs/health.py``) and ``sneakerbot healthcheck``.

A real ``sneakerbot worker`` runs as a subprocess on each database; the tests ask it over HTTP
and wait on state (readiness, the numbers in /metrics), never on time. The server's answers
when something is wrong (no scheduler, no database, a taken port) are checked in-process.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, func, select

from bot.jobs.health import WorkerHealthServer, serve_worker_health
from bot.jobs.scheduler import build_scheduler
from bot.services.admin import enqueue
from bot.settings import Settings, get_settings
from bot.store.db import init_db, make_engine, session_factory
from bot.store.models import Image, JobRun, RequestKind, ScrapeRun, utcnow

from loop_support import wait_for, worker_process

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 120.0  # upper bound for the worker to come up or run a job; never an assertion on speed
HEAVY = ("torch", "telegram", "onnxruntime", "aiohttp", "httpx", "apscheduler", "prometheus_client")


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5.0, trust_env=False)


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed: (sample name, sorted labels) -> value."""
    response = get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def job_runs(found: dict, job: str) -> float:
    """Finished runs of ``job`` over every status, as /metrics says."""
    return sum(value for (name, labels), value in found.items()
               if name == "sneakerbot_job_runs_total" and ("job", job) in labels)


def healthcheck(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """``sneakerbot healthcheck`` as Docker runs it, with only ``env_vars`` configured."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SNEAKERBOT_", "TELEGRAM_"))}
    env.update(PYTHONPATH=str(ROOT), **env_vars)
    return subprocess.run([sys.executable, "-m", "bot", "healthcheck", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def worker_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[Settings]:
    """A worker's environment (a fresh database on each backend, health on a free port, no starter model)."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SNEAKERBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("SNEAKERBOT_RETRAIN_CHECK_SECONDS", "1")
    monkeypatch.setenv("SNEAKERBOT_STARTER_MODEL_DIR", str(tmp_path / "no-starter"))
    monkeypatch.setenv("SNEAKERBOT_HEALTH_HOST", "127.0.0.1")
    monkeypatch.setenv("SNEAKERBOT_HEALTH_PORT", str(free_port()))
    monkeypatch.delenv("SNEAKERBOT_WEBHOOK_URL", raising=False)
    yield get_settings()


def test_a_real_worker_serves_health_and_metrics_from_the_database(worker_settings: Settings,
                                                                   tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{worker_settings.health_port}"
    log = tmp_path / "worker.log"
    with worker_process(log) as process:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return get(f"{url}/readyz").status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        wait_for(ready, "the worker's /readyz", WAIT_S)
        assert get(f"{url}/readyz").json() == {"ready": True}
        assert get(f"{url}/healthz").json() == {"ok": True}
        assert get(f"{url}/nothing").status_code == 404

        before = samples(url)
        assert before[("sneakerbot_worker_database_up", ())] == 1
        assert job_runs(before, "retrain_now") == 0 and before[("sneakerbot_scrape_runs_total", ())] == 0
        assert before[("sneakerbot_images", (("source", "scraper"), ("status", "review")))] == 0
        assert ("sneakerbot_build_info", ()) not in before  # Info has labels
        assert any(name == "sneakerbot_build_info" for name, _ in before)

        # What other processes leave in the database counts as much as what this worker runs.
        engine = make_engine(worker_settings.db_url)
        try:
            with session_factory(engine).begin() as session:
                session.add(Image(sha1="a" * 40, path="images/x/a.jpg", label="x", source="scraper", status="review"))
                session.add(ScrapeRun(label="x", finished_at=utcnow()))
                session.add(JobRun(job_id="scrape_now:x", started_at=utcnow() - timedelta(seconds=5),
                                   finished_at=utcnow(), outcome="failed: no source answered"))
            enqueue(session_factory(engine), RequestKind.RETRAIN)
            wait_for(lambda: job_runs(samples(url), "retrain_now") == 1, "the retrain's run in /metrics", WAIT_S)
            with session_factory(engine)() as session:  # the counter is the table
                assert session.scalar(select(func.count()).where(JobRun.job_id == "retrain_now")) == 1
        finally:
            engine.dispose()

        after = samples(url)
        assert after[("sneakerbot_job_runs_total", (("job", "scrape_now"), ("status", "failed")))] == 1
        assert after[("sneakerbot_scrape_runs_total", ())] == 1
        assert after[("sneakerbot_images", (("source", "scraper"), ("status", "review")))] == 1
        finished = [value for (name, labels), value in after.items()
                    if name == "sneakerbot_job_last_finished_timestamp_seconds" and ("job", "retrain_now") in labels]
        assert len(finished) == 1 and finished[0] > 0

        # `sneakerbot healthcheck` against it: by --port, by the setting, by the webhook's port, /readyz.
        port = str(worker_settings.health_port)
        by_port = healthcheck("--port", port)
        assert by_port.returncode == 0 and "200 OK" in by_port.stdout, by_port.stderr
        assert healthcheck(SNEAKERBOT_HEALTH_PORT=port).returncode == 0
        assert healthcheck(SNEAKERBOT_WEBHOOK_URL="https://bot.example.com/hook",
                           SNEAKERBOT_WEBHOOK_LISTEN_PORT=port).returncode == 0
        assert healthcheck("--port", port, "--path", "/readyz").returncode == 0
        missing = healthcheck("--port", port, "--path", "/nothing")
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr

    # The worker stopped cleanly (worker_process checks its exit status): the port is closed now.
    closed = healthcheck("--port", port)
    assert closed.returncode == 1 and closed.stderr.count("\n") == 1 and "no answer" in closed.stderr


def test_healthcheck_without_a_port_says_so_and_stays_light(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bot", "healthcheck"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("SNEAKERBOT_")},
                                 "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1 and "nothing to check" in result.stderr
    # A Docker HEALTHCHECK every few seconds must not load a model or the bot's libraries.
    probe = (f"import sys; from bot.cli import main; code = main(['healthcheck', '--port', '{free_port()}']); "
             f"print(sorted(name for name in {HEAVY!r} if name in sys.modules)); sys.exit(code)")
    light = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert light.returncode == 1 and light.stdout.strip() == "[]", light.stdout + light.stderr


# --------------------------------------------------------------------------- in-process: what goes wrong


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = init_db(f"sqlite:///{tmp_path / 'health.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def server(engine: Engine) -> Iterator[WorkerHealthServer]:
    server = WorkerHealthServer("127.0.0.1", 0, engine)
    server.start()
    yield server
    server.stop()


def test_readyz_follows_the_scheduler(server: WorkerHealthServer, engine: Engine) -> None:
    assert get(f"{server.url}/readyz").json() == {"ready": False, "reason": "scheduler not running"}
    assert get(f"{server.url}/healthz").status_code == 200  # alive all along
    scheduler = build_scheduler(engine)
    server.watch(scheduler)
    scheduler.start(paused=True)
    try:
        response = get(f"{server.url}/readyz")
        assert response.status_code == 503 and response.json()["reason"] == "scheduler paused"
        scheduler.resume()
        assert get(f"{server.url}/readyz").status_code == 200
    finally:
        scheduler.shutdown()
    assert get(f"{server.url}/readyz").json()["reason"] == "scheduler not running"


def test_a_database_that_cannot_answer(tmp_path: Path, engine: Engine) -> None:
    """/readyz names the error's class only; /metrics still answers, with database_up 0."""
    scheduler = build_scheduler(engine)
    scheduler.start()
    gone = create_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")  # make_engine would create the dir
    server = WorkerHealthServer("127.0.0.1", 0, gone)
    server.watch(scheduler)
    server.start()
    try:
        response = get(f"{server.url}/readyz")
        assert response.status_code == 503 and response.json() == {"ready": False,
                                                                   "reason": "database: OperationalError"}
        found = samples(server.url)
        assert found[("sneakerbot_worker_database_up", ())] == 0
        assert not any(name.startswith("sneakerbot_job_runs") for name, _ in found)
    finally:
        server.stop()
        scheduler.shutdown()
        gone.dispose()


def test_a_database_that_hangs_fails_readiness_within_the_timeout(engine: Engine) -> None:
    """A PostgreSQL address that takes connections but never answers: /readyz says so instead of hanging."""
    scheduler = build_scheduler(engine)
    scheduler.start()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        hung = create_engine(f"postgresql+psycopg://nobody:x@{host}:{port}/none?connect_timeout=5")
        server = WorkerHealthServer("127.0.0.1", 0, hung, db_timeout=0.5)
        server.watch(scheduler)
        server.start()
        try:
            for _ in range(2):  # the second waits behind the first's hung call, and fails in time too
                response = get(f"{server.url}/readyz")
                assert response.status_code == 503
                assert response.json()["reason"] == "database: no answer within 0.5s"
            assert samples(server.url)[("sneakerbot_worker_database_up", ())] == 0
        finally:
            server.stop()
            scheduler.shutdown()
            hung.dispose()


def test_a_taken_port_leaves_the_worker_running_without_it(engine: Engine, caplog: pytest.LogCaptureFixture,
                                                             server: WorkerHealthServer) -> None:
    """The bot serves its health on the port and runs the worker as its child, with the same settings."""
    settings = get_settings(health_host="127.0.0.1", health_port=server.port)
    with caplog.at_level(logging.WARNING, logger="bot.jobs.health"):
        assert serve_worker_health(settings, engine) is None
    assert "not serving worker health" in caplog.text
    assert get(f"{server.url}/healthz").status_code == 200  # the first one is untouched
    assert serve_worker_health(get_settings(health_port=None), engine) is None  # not configured: nothing
