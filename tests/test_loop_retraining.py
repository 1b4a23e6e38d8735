"""Retraining's data rules: fixed splits, user photos never in test, new corrections counted once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.services.retraining import (
    TrainingImage,
    assign_splits,
    consume_feedback,
    count_new_corrections,
    database_images,
    draw_splits,
    snapshot,
)
from bot.store.db import init_db, session_factory
from bot.store.models import Feedback, Image, Prediction, User


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = init_db(f"sqlite:///{tmp_path / 'bot.db'}")
    yield session_factory(engine)
    engine.dispose()


def _sha1(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


def test_user_photos_never_land_in_test_and_splits_are_fixed() -> None:
    sha1s = [_sha1(i) for i in range(2000)]
    drawn = draw_splits([((source, s), s, "a", source) for source in ("user", "scraper") for s in sha1s])
    user = [drawn["user", s] for s in sha1s]
    scraped = [drawn["scraper", s] for s in sha1s]

    assert set(user) == {"train", "val"}
    assert set(scraped) == {"train", "val", "test"}
    assert 0.05 < scraped.count("test") / len(sha1s) < 0.15
    again = draw_splits([(s, s, "a", "scraper") for s in sha1s])
    assert [again[s] for s in sha1s] == scraped  # the same answer every time


def test_database_images_get_their_split_once(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    (tmp_path / "images" / "a").mkdir(parents=True)
    with sessions.begin() as session:
        for i, source in enumerate(["user"] * 30 + ["scraper"] * 30):
            path = Path("images") / "a" / f"{i}.jpg"
            (tmp_path / path).write_bytes(b"x")
            session.add(Image(sha1=_sha1(i), path=str(path), label="a", source=source, status="train"))
        session.add(Image(sha1=_sha1(99), path="images/a/missing.jpg", label="a", source="user", status="train"))
        session.add(Image(sha1=_sha1(98), path="images/a/0.jpg", label="a", source="user", status="review"))

    assert assign_splits(sessions) == 62
    assert assign_splits(sessions) == 0
    images = database_images(sessions, tmp_path)

    assert len(images) == 60  # the missing file and the image under review are left out
    assert not [i for i in images if i.source == "user" and i.split == "test"]
    with sessions() as session:
        stored = {row.sha1: row.split for row in session.scalars(select(Image))}
    assert all(stored[i.sha1] == i.split for i in images)


def test_a_carried_test_photo_stays_in_test_and_the_newest_label_wins() -> None:
    import numpy as np
    import pandas as pd

    from ml.carried import Carried
    from ml.retrain import keep_test_split

    carried = Carried(pd.DataFrame({"sha1": ["s1", "s2"], "label": ["a", "b"], "split": ["test", "train"],
                                    "view": ["center", "center"], "footwear": [0.5, 0.5]}), np.zeros((2, 4)))
    frame = pd.DataFrame({"path": ["i/a.jpg", "i/b.jpg", "i/n.jpg"], "label": ["c", "c", "c"],
                          "sha1": ["s1", "s2", "s3"], "split": ["train", "test", "val"]})

    kept = keep_test_split(frame, carried).set_index("sha1")

    assert kept.loc["s1", "split"] == "test"  # held out by the base model: never trained on
    assert kept.loc["s2", "split"] == "test" and kept.loc["s3", "split"] == "val"
    assert list(carried.without({"s1"}).frame["sha1"]) == ["s2"]  # the database's label replaces the carried one
    assert snapshot([TrainingImage(Path("x"), "c", "s3", "val", "user")]) == {
        "n": 1, "classes": {"c": 1}, "splits": {"val": 1}, "sha1": ["s3"]}


def test_corrections_count_until_a_retrain_uses_them(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(User(id=7))
        session.flush()
        for i, verdict in enumerate(["wrong", "wrong", "correct", "not_listed", "wrong"]):
            prediction = Prediction(user_id=7, chat_id=7, image_sha1=_sha1(i), top=[], verdict="sneaker")
            session.add(prediction)
            session.flush()
            session.add(Feedback(prediction_id=prediction.id, user_id=7, verdict=verdict,
                                 label=None if verdict == "not_listed" else "a"))

    assert count_new_corrections(sessions) == 3
    assert consume_feedback(sessions, 2) == 5
    assert count_new_corrections(sessions) == 0
    with sessions() as session:
        assert {row.consumed_by_version for row in session.scalars(select(Feedback))} == {2}
