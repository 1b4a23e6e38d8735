"""Instant learning's scope rules on a real database: who sees whose corrections, and when."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bot.services.identify import Guess
from bot.services.learning import GLOBAL, PRIVATE, LearningService, MemoryRules, RefinedPrediction
from bot.store.models import MemoryEntry
from ml.memory import l2_normalise

ADMIN = 1
DIM = 32
BACKBONE = "efficientnet_lite0"
NAMES = {"air_jordan_1": "Air Jordan 1", "air_jordan_3": "Air Jordan 3", "air_jordan_4": "Air Jordan 4"}


def make_service(sessions: sessionmaker[Session], **options: object) -> LearningService:
    return LearningService(
        sessions,
        MemoryRules(admin_ids=frozenset({ADMIN}), agree_users=3, match_threshold=0.92),
        embed=lambda path: (BACKBONE, np.load(path)),  # photos in these tests are stored embeddings
        current_backbone=lambda: BACKBONE,
        display_name=lambda label: NAMES.get(label, label),
        **options,
    )


@pytest.fixture
def service(db_sessions: sessionmaker[Session]) -> LearningService:
    return make_service(db_sessions)


def _photo(seed: int) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).normal(size=DIM))


def _model_answer(embedding: np.ndarray) -> RefinedPrediction:
    """What the classifier says before the memory: Air Jordan 1, fairly sure."""
    top = [Guess("air_jordan_1", "Air Jordan 1", 0.7), Guess("air_jordan_3", "Air Jordan 3", 0.2),
           Guess("air_jordan_4", "Air Jordan 4", 0.1)]
    return RefinedPrediction(top, "unsure", 0.9, embedding)


def _answer(service: LearningService, user_id: int, photo: np.ndarray) -> str:
    return service.refine(user_id, "sha", _model_answer(photo)).top[0].label


def _scopes(sessions: sessionmaker[Session]) -> dict[int, str]:
    with sessions() as session:
        return {row.user_id: row.scope for row in session.scalars(select(MemoryEntry))}


def test_a_users_correction_counts_for_them_at_once_and_for_nobody_else(service: LearningService) -> None:
    photo = _photo(1)
    assert service.remember("a" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False) == PRIVATE

    refined = service.refine(7, "a" * 40, _model_answer(photo))
    assert refined.top[0].label == "air_jordan_4"
    assert refined.top[0].display_name == "Air Jordan 4"
    assert refined.verdict == "sneaker"
    assert _answer(service, 8, photo) == "air_jordan_1"


def test_another_process_sees_a_change_within_the_recheck_time(db_sessions: sessionmaker[Session]) -> None:
    now = [100.0]
    writer, reader = make_service(db_sessions), make_service(db_sessions, recheck_s=2.0, clock=lambda: now[0])
    photo = _photo(2)
    assert _answer(reader, ADMIN, photo) == "air_jordan_1"  # reads the (empty) memory once
    writer.remember("b" * 40, ADMIN, "air_jordan_3", BACKBONE, photo, is_admin=True)
    assert _answer(writer, 9, photo) == "air_jordan_3"  # the writing process at once
    now[0] += 1.0
    assert _answer(reader, 9, photo) == "air_jordan_1"  # another process trusts its copy for a moment
    now[0] += 1.5
    assert _answer(reader, 9, photo) == "air_jordan_3"  # and then asks the database


def test_enough_distinct_users_agreeing_make_it_global(
    service: LearningService, db_sessions: sessionmaker[Session]
) -> None:
    photo = _photo(2)
    for user_id in (7, 8):
        service.remember(f"{user_id:040d}", user_id, "air_jordan_4", BACKBONE, photo, is_admin=False)
    service.remember("0" * 39 + "9", 9, "air_jordan_4", BACKBONE, photo * 1.01, is_admin=False)
    # The same user answering twice is still one user.
    assert _scopes(db_sessions) == {7: GLOBAL, 8: GLOBAL, 9: GLOBAL}
    assert _answer(service, 100, photo) == "air_jordan_4"


def test_two_users_are_not_enough(service: LearningService, db_sessions: sessionmaker[Session]) -> None:
    photo = _photo(3)
    for user_id in (7, 8):
        service.remember(f"{user_id:040d}", user_id, "air_jordan_4", BACKBONE, photo, is_admin=False)
    service.remember("7" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False)

    assert set(_scopes(db_sessions).values()) == {PRIVATE}
    assert _answer(service, 100, photo) == "air_jordan_1"


def test_an_admins_correction_is_global_at_once_and_overrides_users(
    service: LearningService, db_sessions: sessionmaker[Session]
) -> None:
    photo = _photo(4)
    for user_id in (7, 8, 9):
        service.remember(f"{user_id:040d}", user_id, "air_jordan_4", BACKBONE, photo, is_admin=False)
    assert _answer(service, 100, photo) == "air_jordan_4"

    assert service.remember("1" * 40, ADMIN, "air_jordan_3", BACKBONE, photo, is_admin=True) == GLOBAL

    assert _answer(service, 100, photo) == "air_jordan_3"
    assert _answer(service, 7, photo) == "air_jordan_4"  # their own answer still counts for them
    assert _scopes(db_sessions) == {7: PRIVATE, 8: PRIVATE, 9: PRIVATE, ADMIN: GLOBAL}


def test_an_admin_giving_the_same_label_accepts_a_users_answer(
    service: LearningService, db_sessions: sessionmaker[Session]
) -> None:
    photo = _photo(5)
    service.remember("7" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False)
    service.remember("1" * 40, ADMIN, "air_jordan_4", BACKBONE, photo, is_admin=True)

    assert _scopes(db_sessions) == {7: GLOBAL, ADMIN: GLOBAL}


def test_the_last_answer_counts(service: LearningService, db_sessions: sessionmaker[Session]) -> None:
    photo = _photo(6)
    service.remember("7" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False)
    assert _answer(service, 7, photo) == "air_jordan_4"

    service.remember("7" * 40, 7, "air_jordan_3", BACKBONE, photo, is_admin=False)

    assert _answer(service, 7, photo) == "air_jordan_3"
    with db_sessions() as session:
        assert len(list(session.scalars(select(MemoryEntry)))) == 1


def test_not_listed_after_a_correction_withdraws_it(service: LearningService) -> None:
    photo = _photo(16)
    service.remember("8" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False)
    assert _answer(service, 7, photo) == "air_jordan_4"

    service.on_withdrawn(7, "8" * 40)

    assert _answer(service, 7, photo) == "air_jordan_1"


def test_an_unrelated_photo_is_left_to_the_model(service: LearningService) -> None:
    service.remember("1" * 40, ADMIN, "air_jordan_4", BACKBONE, _photo(7), is_admin=True)
    answer = _model_answer(_photo(8))

    assert service.refine(100, "x", answer) is answer


def test_feedback_events_are_remembered_through_the_embedder(service: LearningService, tmp_path: Path) -> None:
    from bot.services.feedback import FeedbackEvent

    photo = _photo(9)
    np.save(tmp_path / "photo.npy", photo)
    service.on_feedback(FeedbackEvent(1, ADMIN, True, "2" * 40, "air_jordan_3", tmp_path / "photo.npy"))

    assert _answer(service, 55, photo) == "air_jordan_3"


def test_a_press_reuses_the_embedding_made_when_the_photo_was_identified(
    db_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from bot.services.feedback import FeedbackEvent

    embedded: list[Path] = []
    service = make_service(db_sessions)
    service.embed = lambda path: embedded.append(path) or (BACKBONE, np.load(path))
    photo, other = _photo(20), _photo(21)
    np.save(tmp_path / "other.npy", other)
    service.refine(7, "3" * 40, _model_answer(photo))  # identified here: its embedding is kept

    service.on_feedback(FeedbackEvent(1, 7, False, "3" * 40, "air_jordan_4", tmp_path / "missing.npy"))
    service.on_feedback(FeedbackEvent(2, 7, False, "4" * 40, "air_jordan_3", tmp_path / "other.npy"))

    assert embedded == [tmp_path / "other.npy"]  # only the photo another process identified is embedded again
    assert _answer(service, 7, photo) == "air_jordan_4"
    assert _answer(service, 7, other) == "air_jordan_3"


def test_own_presses_do_not_read_the_whole_memory_again(db_sessions: sessionmaker[Session]) -> None:
    """What a press costs must not grow with the memory: the bot fell behind when every press and the
    photo after it re-read every row (docs/bot.md, "Load and soak")."""
    from sqlalchemy import event

    service = make_service(db_sessions)
    for seed in range(30):
        service.remember(f"{seed:040d}", 7, "air_jordan_4", BACKBONE, _photo(100 + seed), is_admin=False)
    statements: list[str] = []
    engine = db_sessions.kw["bind"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for seed in range(30, 40):
            photo = _photo(100 + seed)
            service.remember(f"{seed:040d}", 7, "air_jordan_3", BACKBONE, photo, is_admin=False)
            assert _answer(service, 7, photo) == "air_jordan_3"
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert full_reads(statements) == []
    with db_sessions() as session:
        assert session.scalar(select(func.count(MemoryEntry.id))) == 40


def full_reads(statements: list[str]) -> list[str]:
    """The SELECTs that read every row of the memory (the ones that read only newer rows name an id)."""
    return [s for s in statements if "FROM memory_entries" in s and "ORDER BY" in s and "memory_entries.id >" not in s]


def test_another_process_reads_only_the_rows_it_has_not_seen(db_sessions: sessionmaker[Session]) -> None:
    """With replicas, every press of one changes what the others must check: reading the whole table
    each time made a press cost grow with everything learnt (bench.replicas). New rows are read alone;
    a deletion elsewhere still makes the others read it all."""
    from sqlalchemy import event

    now = [0.0]
    writer, reader = make_service(db_sessions), make_service(db_sessions, recheck_s=1.0, clock=lambda: now[0])
    for seed in range(20):
        writer.remember(f"{seed:040d}", ADMIN, "air_jordan_4", BACKBONE, _photo(200 + seed), is_admin=True)
    assert _answer(reader, 5, _photo(200)) == "air_jordan_4"  # its first look reads the table once
    statements: list[str] = []
    engine = db_sessions.kw["bind"]
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for seed in range(20, 30):
            photo = _photo(200 + seed)
            writer.remember(f"{seed:040d}", ADMIN, "air_jordan_3", BACKBONE, photo, is_admin=True)
            now[0] += 1.5
            assert _answer(reader, 5, photo) == "air_jordan_3"
        assert full_reads(statements) == []
        assert sum("memory_entries.id >" in s for s in statements) == 10

        writer.on_withdrawn(ADMIN, f"{25:040d}")  # a deletion: new rows cannot explain the fingerprint
        now[0] += 1.5
        assert _answer(reader, 5, _photo(225)) == "air_jordan_1"
        assert len(full_reads(statements)) == 1
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_two_processes_agree_on_the_scope_rules(db_sessions: sessionmaker[Session]) -> None:
    """Users answering through different bot processes count together, and each process sees the result."""
    first, second = make_service(db_sessions), make_service(db_sessions)
    photo = _photo(30)
    first.remember("7" * 40, 7, "air_jordan_4", BACKBONE, photo, is_admin=False)
    second.remember("8" * 40, 8, "air_jordan_4", BACKBONE, photo * 1.001, is_admin=False)
    assert first.remember("9" * 40, 9, "air_jordan_4", BACKBONE, photo, is_admin=False) == GLOBAL

    assert _scopes(db_sessions) == {7: GLOBAL, 8: GLOBAL, 9: GLOBAL}
    assert _answer(first, 100, photo) == "air_jordan_4"
    second.on_withdrawn(9, "9" * 40)  # another process's write: the first one reads again after its recheck
    fresh = make_service(db_sessions)
    assert _answer(fresh, 100, photo) == "air_jordan_4"  # the two left are still global
