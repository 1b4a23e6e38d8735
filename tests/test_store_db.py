"""The store: migrations create the schema on both backends, repositories read and write it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, select

from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, Prediction, User
from bot.store.repositories import FeedbackRepository, PredictionRepository, RateEventRepository, UserRepository

TABLES = {"users", "predictions", "feedback", "images", "sneaker_classes", "suggestions", "model_versions",
          "scrape_runs", "rate_events", "memory_entries", "alembic_version"}


def test_init_db_migrates_to_head_and_is_idempotent(database_url: str) -> None:
    engine = init_db(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
    engine = init_db(database_url)  # a second start changes nothing and does not fail
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_repositories_round_trip(database_url: str) -> None:
    engine = init_db(database_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        UserRepository(session).ensure(42, username="ann", is_admin=True)
        prediction = PredictionRepository(session).add(Prediction(
            user_id=42, chat_id=42, message_id=7, image_sha1="a" * 40, verdict="sneaker",
            top=[{"label": "air_jordan_1", "score": 0.9}]))
        FeedbackRepository(session).add(Feedback(prediction_id=prediction.id, user_id=42, verdict="correct",
                                                 label="air_jordan_1"))
        FeedbackRepository(session).add(Feedback(prediction_id=prediction.id, user_id=42, verdict="wrong",
                                                 label="air_jordan_3"))
    with sessions() as session:
        user = session.get(User, 42)
        assert user.is_admin and user.username == "ann"
        latest = FeedbackRepository(session).latest(prediction.id)
        assert (latest.verdict, latest.label) == ("wrong", "air_jordan_3")
        assert session.scalars(select(Prediction)).one().top[0]["label"] == "air_jordan_1"
    now = datetime.now(UTC)
    with sessions.begin() as session:
        events = RateEventRepository(session)
        events.add(42, now - timedelta(minutes=5))
        events.add(42, now)
    with sessions.begin() as session:
        events = RateEventRepository(session)
        assert events.count_since(42, now - timedelta(minutes=1)) == 1
        assert events.purge_before(now - timedelta(minutes=1)) == 1
    engine.dispose()


def test_memory_embeddings_move_from_json_to_float32_bytes_and_back(database_url: str) -> None:
    """Migration 0005 keeps every remembered answer: the JSON list becomes the same float32 vector."""
    import numpy as np
    from alembic import command
    from sqlalchemy import text

    from bot.store.db import alembic_config, make_engine

    engine = make_engine(database_url)
    config = alembic_config(engine)
    command.upgrade(config, "0004")
    values = [0.25, -0.5, 0.125, 1.0]
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO memory_entries (image_sha1, user_id, label, backbone, embedding, scope, created_at) "
            "VALUES (:sha1, 7, 'air_jordan_4', 'efficientnet_lite0', :embedding, 'user', :now)"),
            {"sha1": "a" * 40, "embedding": json.dumps(values), "now": datetime.now(UTC)})
    command.upgrade(config, "head")
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT vector FROM memory_entries")).scalar_one()
    assert np.frombuffer(stored, dtype="<f4").tolist() == values
    command.downgrade(config, "0004")
    with engine.connect() as connection:
        embedding = connection.execute(text("SELECT embedding FROM memory_entries")).scalar_one()
    assert (json.loads(embedding) if isinstance(embedding, str) else embedding) == values
    engine.dispose()


def test_processes_starting_together_on_an_empty_database_all_find_it_migrated(database_url: str) -> None:
    """Replicas and the worker migrate one at a time (a lock), none fails on "table already exists"."""
    import threading

    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def start_one() -> None:
        start.wait()
        try:
            init_db(database_url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=start_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    engine = init_db(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
