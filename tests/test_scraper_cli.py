"""``sneakerbot scrape`` end to end: settings from the environment, a migrated SQLite database, the catalogue."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.cli import main
from bot.scraping import catalogue_entry, seed_catalogue
from bot.settings import get_settings
from bot.store.db import init_db, session_factory
from bot.store.models import Image, ScrapeRun, SneakerClass

from scraper_support import FIXTURES, LocalServer, bing_page, encode, picture, running_server

PICTURES = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        for name in PICTURES:
            srv.add(f"/img/{name}.jpg", encode(picture(name), "JPEG", quality=90), "image/jpeg")
        srv.add("/bing/search", bing_page([srv.url(f"/img/{n}.jpg") for n in PICTURES]), "text/html")
        srv.add("/captcha/search", (FIXTURES / "google_blocked_captcha.html").read_bytes(), "text/html")
        yield srv


@pytest.fixture()
def env(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for a local run: data under tmp_path, endpoints on the local server, loopback allowed."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("SNEAKERBOT_DATABASE_URL", raising=False)
    data_dir = tmp_path / "var"
    for key, value in {
        "SNEAKERBOT_DATA_DIR": str(data_dir),
        "SNEAKERBOT_BING_URL": server.url("/bing/search"),
        "SNEAKERBOT_GOOGLE_URL": server.url("/captcha/search"),
        "SNEAKERBOT_SCRAPER_ALLOW_PRIVATE": "true",
        "SNEAKERBOT_SCRAPER_HOST_DELAY_S": "0",
        "SNEAKERBOT_SCRAPER_TIMEOUT_S": "5",
        "SNEAKERBOT_SCRAPER_FOOTWEAR_CHECK": "false",
        "SNEAKERBOT_SCRAPER_SOURCES": '["google", "bing"]',
    }.items():
        monkeypatch.setenv(key, value)
    return data_dir


@contextmanager
def database() -> Iterator[sessionmaker]:
    """Sessions on the settings' (migrated) database, disposed afterwards."""
    engine = init_db(get_settings().db_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def bing_queries(server: LocalServer) -> list[str]:
    return [parse_qs(urlsplit(r).query)["q"][0] for r in server.requests if r.startswith("/bing/search")]


def test_scrape_json_report_database_and_files(env: Path, server: LocalServer, capsys: pytest.CaptureFixture) -> None:
    assert main(["scrape", "air_jordan_11", "--max", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: report[k] for k in ("found", "downloaded", "failed", "duplicates", "rejected", "stored")} == {
        "found": 4, "downloaded": 4, "failed": {}, "duplicates": 0, "rejected": 0, "stored": 4,
    }
    assert report["sources"]["google"]["blocked"] is True and report["sources"]["google"]["found"] == 0
    assert report["sources"]["bing"] == {"blocked": False, "found": 4, "error": None, "tried": True}
    assert report["queries"] == ["air jordan 11", "nike air jordan 11 sneaker", "jordan 11 retro shoe"]

    with database() as sessions, sessions() as session:
        images = session.scalars(select(Image)).all()
        runs = session.scalars(select(ScrapeRun)).all()
        classes = session.scalars(select(SneakerClass)).all()
    assert len(images) == 4 and {i.status for i in images} == {"train"}
    assert all((env / i.path).is_file() and i.path.startswith("images/air_jordan_11/") for i in images)
    assert {i.scraper_source for i in images} == {"bing"} and {i.query for i in images} == {"air jordan 11"}
    assert len(runs) == 1 and runs[0].report["stored"] == 4
    assert len(classes) == 32


def test_admin_edited_queries_are_used(env: Path, server: LocalServer, capsys: pytest.CaptureFixture) -> None:
    with database() as sessions:
        seed_catalogue(sessions)
        with sessions.begin() as session:
            session.get(SneakerClass, "air_jordan_5").queries = ["aj5 fire red"]
        assert catalogue_entry(sessions, "air_jordan_5").queries == ("aj5 fire red",)
        assert seed_catalogue(sessions) == 0  # the edit survives a re-seed

    server.requests.clear()
    assert main(["scrape", "air_jordan_5", "--max", "2", "--source", "bing"]) == 0
    out = capsys.readouterr().out
    assert "Scrape of air_jordan_5: found 2, downloaded 2, stored 2" in out
    assert bing_queries(server) == ["aj5 fire red"]


def test_query_option_and_unknown_label(env: Path, server: LocalServer, capsys: pytest.CaptureFixture) -> None:
    server.requests.clear()
    assert main(["scrape", "air_max_90", "--query", "nike air max 90", "--max", "1", "--source", "bing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored"] == 1
    assert bing_queries(server) == ["nike air max 90"]


def test_all_sources_blocked_exits_1_with_blocked_report(env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["scrape", "air_jordan_11", "--source", "google", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["found"] == 0 and report["sources"] == {
        "google": {"blocked": True, "found": 0, "error": None, "tried": True}
    }


@pytest.mark.slow
def test_the_ml_footwear_detector_sends_non_shoes_to_review(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The real detector (pretrained EfficientNet-Lite0 via ONNX Runtime).

    An astronaut, a cat, a coffee are no shoes.
    """
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("SNEAKERBOT_SCRAPER_FOOTWEAR_CHECK", "true")
    assert main(["scrape", "air_jordan_3", "--max", "3", "--source", "bing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["found"] == 3 and report["rejected"] == 3 and report["stored"] == 0
    assert not (env / "images" / "air_jordan_3").exists()
    assert len(list((env / "images" / "_review" / "air_jordan_3").glob("*.jpg"))) == 3
    with database() as sessions, sessions() as session:
        assert {i.status for i in session.scalars(select(Image))} == {"review"}
