"""Backups and restores (``bot/services/backup.py``, ``sneakerbot backup | restore``) on SQLite and PostgreSQL.

A real bot serves a user through the playground while the backup runs; the backup goes into an
empty data dir and an empty database (on PostgreSQL a fresh database whose schema is not named
like the source's), and everything the bot kept before the backup must be there, byte for byte,
and a restored bot must take feedback on an answer given before the backup. Backups that are
incomplete or changed, and targets that hold data, are refused before anything is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from bot import render
from bot.cli import main as cli_main
from bot.playground import PlaygroundServer
from bot.registry import ModelRegistry
from bot.services.backup import (
    MANIFEST,
    BackupError,
    BackupReport,
    NotABackup,
    TargetNotEmpty,
    backup,
    libpq_connection,
    restore,
)
from bot.settings import Settings
from bot.store.db import alembic_config, init_db, make_engine, session_factory
from bot.store.models import Feedback, Image, ModelVersion, Prediction, User

from bot_harness import BLUE, GREY, RED, TestUser, bot_settings, colour_model, jpeg_bytes, running_bot
from loop_support import shared_model


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.store.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


HEAD = _head_revision()  # the newest migration, which a restore upgrades to
WAIT = 60.0  # seconds to wait for the other side of a hand-over before failing (a busy machine is slow)


# --- fixtures -------------------------------------------------------------------------
@pytest.fixture
def empty_database(database_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Makes empty databases of ``database_url``'s kind: a new SQLite file, or a new PostgreSQL database
    whose connections use ``schema`` (default: a fresh name, unlike the source's), dropped afterwards."""
    made: list[str] = []
    base = database_url.split("?")[0]

    def make(schema: str | None = None) -> str:
        if database_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'restored-{uuid.uuid4().hex[:8]}.db'}"
        name = f"sb_restore_{uuid.uuid4().hex[:10]}"
        schema = schema or f"r_{uuid.uuid4().hex[:10]}"
        with _admin(base) as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        return f"{url}?options=-csearch_path%3D{schema}"

    yield make
    for name in made:
        with _admin(base) as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class _admin:
    """An autocommit connection to the test server (CREATE/DROP DATABASE cannot run in a transaction)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")

    def __enter__(self) -> Any:
        self.conn = self.engine.connect()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real model directory (trained once per session, shared with the loop tests)."""
    return shared_model(tmp_path_factory)


# --- what the bot keeps ---------------------------------------------------------------
@dataclass
class Kept:
    """Rows and files of one data dir and database, as plain values to compare."""

    predictions: dict[int, tuple]
    feedback: dict[int, tuple]
    images: dict[str, tuple]
    model_versions: dict[int, tuple]
    files: dict[str, str]  # "images/..." and "models/..." -> sha1


def pending_paths(sessions: sessionmaker[Session]) -> dict[int, str | None]:
    with sessions() as session:
        return dict(session.execute(select(Prediction.id, Prediction.pending_path)).all())


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def tree_hashes(root: Path, prefix: str) -> dict[str, str]:
    return {f"{prefix}/{p.relative_to(root).as_posix()}": sha1_of(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def kept(sessions: sessionmaker[Session], settings: Settings) -> Kept:
    """Everything the backup must carry, read from the database and the disk."""
    with sessions() as session:
        return Kept(
            predictions={p.id: (p.user_id, p.image_sha1, p.verdict, p.top, p.model_version)
                         for p in session.scalars(select(Prediction))},
            feedback={f.id: (f.prediction_id, f.user_id, f.verdict, f.label)
                      for f in session.scalars(select(Feedback))},
            images={i.sha1: (i.path, i.label, i.source, i.status) for i in session.scalars(select(Image))},
            model_versions={m.version: (m.path, m.status, m.backbone, m.metrics, m.data_snapshot)
                            for m in session.scalars(select(ModelVersion))},
            files={**tree_hashes(settings.images_path, "images"), **tree_hashes(settings.models_path, "models")},
        )


def assert_contains(restored: dict, before: dict, what: str) -> None:
    missing = {key: value for key, value in before.items() if restored.get(key) != value}
    assert not missing, f"{what} not restored as they were: {missing}"


# --- the bot serving while the backup runs ----------------------------------------------
def prediction_id_of(message: dict) -> int:
    parsed = render.parse(message["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    assert parsed is not None
    return parsed.prediction_id


async def first_conversation(user: TestUser) -> dict:
    """A confirmed, a corrected, a "not a sneaker" and an unanswered photo; returns the unanswered answer."""
    answer = await ask(user, RED, 1)
    assert "Confirmed" in (await user.confirm(answer))["text"]
    answer = await ask(user, BLUE, 2)
    assert "Air Jordan 2" in (await user.correct(answer, "Air Jordan 2"))["text"]
    await ask(user, GREY, 3)
    return await ask(user, RED, 4)


async def ask(user: TestUser, colour: tuple[int, int, int], seed: int) -> dict:
    await user.send_photo(jpeg_bytes(colour, noise=seed))
    return await user.reply()


class StepGate:
    """The backup's step hook: holds the backup after its database step until the test lets it go on.

    So photos are answered and confirmed between the database snapshot and the file copy, the
    window where a careless backup loses files or writes rows without them, whatever the timing.
    """

    def __init__(self) -> None:
        self.database_done = threading.Event()
        self.go_on = threading.Event()
        self.steps: list[str] = []

    def __call__(self, step: str) -> None:
        self.steps.append(step)
        if step == "database":
            self.database_done.set()
            assert self.go_on.wait(WAIT), "the test never let the backup go on"


@dataclass
class Sender:
    """Sends red photos and confirms each answer until stopped: a user of the bot during the backup."""

    user: TestUser
    gate: StepGate
    stop: asyncio.Event
    after_snapshot: asyncio.Event
    answered: int = 0
    late_ids: list[int] | None = None  # predictions asked for after the database snapshot

    async def run(self, first_seed: int) -> None:
        self.late_ids = []
        seed = first_seed
        while not self.stop.is_set() and seed < first_seed + 100:
            late = self.gate.database_done.is_set()
            answer = await ask(self.user, RED, seed)
            await self.user.confirm(answer)
            seed, self.answered = seed + 1, self.answered + 1
            if late:
                self.late_ids.append(prediction_id_of(answer))
                if len(self.late_ids) >= 2:
                    self.after_snapshot.set()


async def backup_while_serving(user: TestUser, settings: Settings, target: Path) -> tuple[BackupReport, Sender]:
    """Run the backup in a thread while ``user`` keeps sending photos; returns its report and the sender."""
    gate = StepGate()
    sender = Sender(user, gate, asyncio.Event(), asyncio.Event())
    sending = asyncio.create_task(sender.run(first_seed=100))
    try:
        while sender.answered < 1:  # a photo answered before the backup starts: the sender is in its stride
            await asyncio.wait([sending], timeout=0.05)
            assert not sending.done(), sending.exception()
        job = asyncio.create_task(asyncio.to_thread(backup, settings, target, on_step=gate))
        assert await asyncio.to_thread(gate.database_done.wait, WAIT), "the backup never finished its database step"
        await asyncio.wait_for(sender.after_snapshot.wait(), WAIT)
        gate.go_on.set()
        report = await asyncio.wait_for(job, WAIT)
    finally:
        gate.go_on.set()
        sender.stop.set()
        await sending
    assert gate.steps == ["database", "images", "models", "pending", "manifest"]
    return report, sender


async def test_backup_while_serving_then_restore_into_an_empty_target(
    playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path,
    database_url: str, empty_database: Callable[..., str], model_dir: Path,
) -> None:
    settings = bot_settings(tmp_path, database_url)
    user = TestUser(playground_http, user_id=2001)
    async with running_bot(playground, settings, colour_model(3)) as bot:
        registry = ModelRegistry(bot.sessions, settings.models_path)
        version = registry.register(model_dir, data_snapshot={"n": 60}, config={"source": "test"}).version
        open_answer = await first_conversation(user)
        before = kept(bot.sessions, settings)
        report, sender = await backup_while_serving(user, settings, tmp_path / "backup")
        after = kept(bot.sessions, settings)

    assert sender.answered >= 3 and len(after.predictions) > len(before.predictions)
    assert version in before.model_versions and any(f.startswith(f"models/{version}/") for f in before.files)
    assert report.rows["predictions"] >= len(before.predictions) and not report.warnings, report.summary()

    target = bot_settings(tmp_path / "restored", empty_database())
    restored_report = await asyncio.to_thread(restore, target, tmp_path / "backup")
    engine = init_db(target.db_url)
    sessions = session_factory(engine)
    try:
        restored = kept(sessions, target)
        pending = pending_paths(sessions)
        rows = {model.__tablename__: _count(sessions, model) for model in (Prediction, Feedback, Image, ModelVersion)}
    finally:
        engine.dispose()

    # Everything kept before the backup is there, as it was: rows, image files and model files by sha1.
    assert_contains(restored.predictions, before.predictions, "predictions")
    assert_contains(restored.feedback, before.feedback, "feedback rows")
    assert_contains(restored.images, before.images, "images rows")
    assert restored.model_versions == before.model_versions
    assert_contains(restored.files, before.files, "files")
    for sha1, (path, *_rest) in restored.images.items():  # every images row finds its photo, byte for byte
        assert sha1_of(target.data_dir / path) == sha1
    # One snapshot: the rows are those the manifest counted, none of the photos answered after it.
    assert rows == {table: report.rows[table] for table in rows}
    assert not set(sender.late_ids or []) & set(restored.predictions)
    assert (restored_report.revision_before, restored_report.revision_after) == (HEAD, HEAD)
    assert restored_report.files["images"] >= len([f for f in before.files if f.startswith("images/")])
    # The photos awaiting feedback now live in the new data dir, and a restored bot takes a ✅ on one.
    open_id = prediction_id_of(open_answer)
    assert Path(pending[open_id]).parent == target.data_dir / "pending" and Path(pending[open_id]).is_file()
    async with running_bot(playground, target, colour_model(3)):
        assert "Confirmed: Air Jordan 11" in (await user.confirm(open_answer))["text"]
    filed = target.images_path / "air_jordan_11" / f"{before.predictions[open_id][1]}.jpg"
    assert filed.is_file() and sha1_of(filed) == before.predictions[open_id][1]


def _count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


# --- refusals and upgrades, on a small data dir without a bot ----------------------------------
def fake_model_dir(root: Path) -> Path:
    """A model directory as far as the registry looks (model.json) plus a weights file."""
    root.mkdir(parents=True)
    (root / "model.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "classes": ["air_jordan_1"]}))
    (root / "head.pt").write_bytes(os.urandom(2048))
    return root


def populate(settings: Settings, engine: Any) -> None:
    """A user, a prediction with its pending photo, a confirmation, the filed image and a model version."""
    sessions = session_factory(engine)
    data = jpeg_bytes(RED, noise=7)
    sha1 = hashlib.sha1(data).hexdigest()
    pending = settings.data_dir / "pending" / f"{sha1}.jpg"
    filed = settings.images_path / "air_jordan_11" / f"{sha1}.jpg"
    for path in (pending, filed):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with sessions.begin() as session:
        session.add(User(id=7, username="seven"))
        session.flush()
        prediction = Prediction(user_id=7, chat_id=7, message_id=1, image_sha1=sha1, pending_path=str(pending),
                                top=[{"label": "air_jordan_11", "score": 0.9}], verdict="sneaker")
        session.add(prediction)
        session.flush()
        session.add(Feedback(prediction_id=prediction.id, user_id=7, verdict="correct", label="air_jordan_11"))
        session.add(Image(sha1=sha1, path=f"images/air_jordan_11/{sha1}.jpg", label="air_jordan_11", source="user"))
    ModelRegistry(sessions, settings.models_path).register(fake_model_dir(settings.data_dir.parent / "m"),
                                                           data_snapshot={})


@pytest.fixture
def source(tmp_path: Path, database_url: str) -> Settings:
    """A small data dir and database at head, with one of everything."""
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url)
    settings.ensure_dirs()
    engine = init_db(settings.db_url)
    try:
        populate(settings, engine)
    finally:
        engine.dispose()
    return settings


def target_is_untouched(target: Settings) -> bool:
    """No file in the target data dir's trees and no table in its database."""
    files = [p for p in target.data_dir.rglob("*") if p.is_file() and p.name != Path(target.db_url).name]
    engine = make_engine(target.db_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).all()
            else:
                tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).all()
    finally:
        engine.dispose()
    return not files and not tables


def test_a_backup_without_its_manifest_is_refused(
    source: Settings, tmp_path: Path, empty_database: Callable[..., str]
) -> None:
    backup(source, tmp_path / "backup")
    (tmp_path / "backup" / MANIFEST).unlink()
    target = Settings(data_dir=tmp_path / "target", database_url=empty_database())
    with pytest.raises(NotABackup, match="has no manifest.json: it is not a backup, or one that did not finish"):
        restore(target, tmp_path / "backup")
    assert target_is_untouched(target)


@pytest.mark.parametrize("damage", ["changed", "missing", "not in the manifest"])
def test_a_backup_whose_files_do_not_match_its_manifest_is_refused(
    source: Settings, tmp_path: Path, empty_database: Callable[..., str], damage: str
) -> None:
    backup(source, tmp_path / "backup")
    image = next((tmp_path / "backup" / "images").rglob("*.jpg"))
    if damage == "changed":
        data = bytearray(image.read_bytes())
        data[len(data) // 2] ^= 0xFF
        image.write_bytes(bytes(data))
    elif damage == "missing":
        image.unlink()
    else:
        (image.parent / "stray.jpg").write_bytes(b"not from the backup")
    target = Settings(data_dir=tmp_path / "target", database_url=empty_database())
    with pytest.raises(NotABackup, match=f"does not match its manifest.*{damage}: images/air_jordan_11/"):
        restore(target, tmp_path / "backup")
    assert target_is_untouched(target)


def test_a_target_that_holds_data_is_refused_unless_forced(
    source: Settings, tmp_path: Path, empty_database: Callable[..., str]
) -> None:
    backup(source, tmp_path / "backup")
    target = Settings(data_dir=tmp_path / "target", database_url=empty_database())
    restore(target, tmp_path / "backup")

    with pytest.raises(TargetNotEmpty, match=r"target/images holds files .* has tables\. .*--force"):
        restore(target, tmp_path / "backup")
    other_dir = Settings(data_dir=tmp_path / "elsewhere", database_url=target.db_url)  # empty dir, full database
    with pytest.raises(TargetNotEmpty, match="has tables"):
        restore(other_dir, tmp_path / "backup")
    report = restore(target, tmp_path / "backup", force=True)
    assert report.rows["predictions"] == 1 and report.rows["model_versions"] == 1 and not report.warnings


def test_a_backup_directory_must_be_new_or_empty(source: Settings, tmp_path: Path) -> None:
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "old.txt").write_text("an earlier backup")
    with pytest.raises(BackupError, match="is not an empty directory"):
        backup(source, tmp_path / "backup")


def test_work_files_are_left_out(source: Settings, tmp_path: Path) -> None:
    for junk in (source.models_path / ".work" / "half.onnx", source.models_path / ".incoming-9" / "model.json",
                 source.data_dir / "pending" / "abc.123.tmp"):
        junk.parent.mkdir(parents=True, exist_ok=True)
        junk.write_bytes(b"half written")
    report = backup(source, tmp_path / "backup")
    listed = json.loads((tmp_path / "backup" / MANIFEST).read_text())["files"]
    assert not [name for name in listed if ".work" in name or ".incoming" in name or name.endswith(".tmp")]
    assert report.files == {"images": 1, "models": 2, "pending": 1}


def test_a_backup_of_an_older_schema_is_upgraded_on_restore(
    tmp_path: Path, database_url: str, empty_database: Callable[..., str]
) -> None:
    old = Settings(data_dir=tmp_path / "var", database_url=database_url)
    engine = make_engine(database_url)
    command.upgrade(alembic_config(engine), "0003")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, first_seen, is_admin) VALUES (42, CURRENT_TIMESTAMP, false)"))
        schema = None if conn.dialect.name == "sqlite" else conn.execute(text("SELECT current_schema()")).scalar()
    engine.dispose()
    report = backup(old, tmp_path / "backup")
    assert report.alembic_revision == "0003"

    # PostgreSQL: this time into a schema named like the source's, in a fresh database.
    target = Settings(data_dir=tmp_path / "target", database_url=empty_database(schema))
    restored = restore(target, tmp_path / "backup")

    assert (restored.revision_before, restored.revision_after) == ("0003", HEAD)
    engine = make_engine(target.db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM users")).scalars().all() == [42]
    engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_refuses_a_schema_name_taken_in_the_target_database(
    source: Settings, tmp_path: Path, database_url: str
) -> None:
    backup(source, tmp_path / "backup")
    schema = f"r_{uuid.uuid4().hex[:10]}"
    base = database_url.split("?")[0]
    with _admin(base) as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        target = Settings(data_dir=tmp_path / "target", database_url=f"{base}?options=-csearch_path%3D{schema}")
        with pytest.raises(TargetNotEmpty, match="already exists in the target database"):
            restore(target, tmp_path / "backup")
    finally:
        with _admin(base) as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_the_postgres_password_stays_off_the_command_line() -> None:
    conninfo, env = libpq_connection(
        "postgresql+psycopg://bot:s3cr%27et@db.example:5433/sneakers?options=-csearch_path%3Dbots&sslmode=require")
    assert "s3cr" not in conninfo and env["PGPASSWORD"] == "s3cr'et"
    assert conninfo == ("host='db.example' port='5433' user='bot' dbname='sneakers' "
                        "options='-csearch_path=bots' sslmode='require'")


def test_the_cli_backs_up_restores_and_refuses(
    source: Settings, tmp_path: Path, empty_database: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(source.data_dir))
    monkeypatch.setenv("SNEAKERBOT_DATABASE_URL", source.db_url)
    assert cli_main(["backup", str(tmp_path / "backup")]) == 0
    out = capsys.readouterr().out
    assert "Backup written to" in out and "1 predictions, 1 feedback, 1 images, 1 model versions" in out

    monkeypatch.setenv("SNEAKERBOT_DATA_DIR", str(tmp_path / "target"))
    monkeypatch.setenv("SNEAKERBOT_DATABASE_URL", empty_database())
    assert cli_main(["restore", str(tmp_path / "backup")]) == 0
    out = capsys.readouterr().out
    assert "Restored" in out and "1 pending photo paths moved here" in out and ":sneakerbot@" not in out
    assert cli_main(["restore", str(tmp_path / "backup")]) == 1
    assert "restore refused: a restore goes into an empty data dir" in capsys.readouterr().err
    assert cli_main(["restore", "--force", str(tmp_path / "backup")]) == 0
