"""The daily scrape job: most-corrected classes first, never past the daily download budget.

The search engine is a local HTTP server serving a Bing-style results page and real
pictures (``tests/scraper_support.py``); the job runs the real scraper pipeline into the
real database, with its settings from the environment as the worker has them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from bot import render_admin
from bot.jobs.scrape import scrape_daily, scrape_now
from bot.settings import get_settings
from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, Image, JobRun, Notification, Prediction, ScrapeRun, User

from scraper_support import LocalServer, bing_page, encode, picture, running_server, send

# Each class's search finds its own pictures.
PICTURES = {"4": ["astronaut", "chelsea", "coffee"], "7": ["rocket", "immunohistochemistry", "camera"],
            "9": ["horse", "cat", "hubble_deep_field"]}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with running_server() as srv:
        for names in PICTURES.values():
            for name in names:
                srv.add(f"/img/{name}.jpg", encode(picture(name), "JPEG", quality=90), "image/jpeg")

        def search(req, _srv: LocalServer) -> None:  # noqa: ANN001
            query = parse_qs(urlsplit(req.path).query)["q"][0]
            names = next((names for key, names in PICTURES.items() if key in query.split()), [])
            send(req, 200, bing_page([srv.url(f"/img/{n}.jpg") for n in names], query).encode(), "text/html")

        srv.add_handler("/bing/search", search)
        yield srv


@pytest.fixture
def sessions(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.chdir(tmp_path)
    for key, value in {
        "SNEAKERBOT_DATA_DIR": str(tmp_path / "var"),
        "SNEAKERBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'bot.db'}",
        "SNEAKERBOT_BING_URL": server.url("/bing/search"),
        "SNEAKERBOT_SCRAPER_SOURCES": '["bing"]',
        "SNEAKERBOT_SCRAPER_ALLOW_PRIVATE": "true",
        "SNEAKERBOT_SCRAPER_HOST_DELAY_S": "0",
        "SNEAKERBOT_SCRAPER_FOOTWEAR_CHECK": "false",
        "SNEAKERBOT_SCRAPE_DAILY_BUDGET": "4",
        "SNEAKERBOT_SCRAPE_CLASSES_PER_RUN": "2",
    }.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    yield session_factory(engine)
    engine.dispose()


def _corrections(sessions, counts: dict[str, int]) -> None:  # noqa: ANN001
    """Users corrected the model to these labels this many times."""
    with sessions.begin() as session:
        session.add(User(id=7))
        session.flush()
        for label, n in counts.items():
            for i in range(n):
                prediction = Prediction(user_id=7, chat_id=7, image_sha1=f"{label[:30]}{i:010d}",
                                        top=[{"label": "air_jordan_1", "score": 0.9}], verdict="sneaker")
                session.add(prediction)
                session.flush()
                session.add(Feedback(prediction_id=prediction.id, user_id=7, verdict="wrong", label=label))


def _images(sessions) -> dict[str, int]:  # noqa: ANN001
    with sessions() as session:
        return dict(session.execute(select(Image.label, func.count()).group_by(Image.label)).all())


def test_nothing_corrected_nothing_scraped(sessions, server: LocalServer) -> None:  # noqa: ANN001
    before = server.hits["/bing/search"]
    assert scrape_daily() == "nothing to scrape: no corrections in the last week"
    assert server.hits["/bing/search"] == before


def test_most_corrected_classes_within_the_budget(sessions, server: LocalServer) -> None:  # noqa: ANN001
    _corrections(sessions, {"air_jordan_4": 3, "air_jordan_7": 2, "air_jordan_9": 1})

    outcome = scrape_daily()

    assert outcome.startswith("scraped air_jordan_4: 2 new, air_jordan_7: 2 new")
    assert _images(sessions) == {"air_jordan_4": 2, "air_jordan_7": 2}
    with sessions() as session:
        downloaded = sum(run.report["downloaded"] for run in session.scalars(select(ScrapeRun)))
    assert downloaded == 4

    # The budget is spent: the next run (or an admin's request) downloads nothing.
    before = server.hits["/bing/search"]
    assert scrape_daily() == "nothing to scrape: today's budget is used up"
    scrape_now("air_jordan_9", 10, notify_chat_ids=[99])
    assert server.hits["/bing/search"] == before
    with sessions() as session:
        note = session.scalars(select(Notification)).one()
        assert "budget" in render_admin.notification(note.kind, note.payload)
        assert [run.job_id for run in session.scalars(select(JobRun).order_by(JobRun.id))] == [
            "scrape_daily", "scrape_daily", "scrape_now:air_jordan_9"]
