"""The whole learning loop through the local Bot API server, with a real (tiny) model and worker.

Test users talk to the playground over HTTP; the bot is python-telegram-bot polling it;
the worker is ``sneakerbot worker`` in a separate process, sharing only the database and
the data directory with the bot (settings from the environment), as in production. The model is trained by the ML
package on generated photos (three colours = three classes) in a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from bot.playground import PlaygroundServer
from bot.registry import read_model_json
from bot.settings import get_settings
from bot.store.models import Image as ImageRow
from bot.store.models import ModelVersion, Prediction

from bot_harness import BotUnderTest, TestUser, bot_settings, running_bot
from loop_support import COLOURS, YELLOW, photo, shared_model, worker_process

ADMIN = 4242
CORRECTIONS = 6
WAIT_S = 180  # upper bound for the worker's retrain to show up; nothing asserts on speed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1: a head trained on 3 colour classes x 20 photos."""
    return shared_model(tmp_path_factory)


def display_names(model_dir: Path) -> dict[str, str]:
    classes = read_model_json(model_dir)["classes"]
    return {c["label"]: c.get("display_name", c["label"]) for c in classes}


def weakest_label_for_yellow(model_dir: Path) -> str:
    """The label the base model is least inclined to give yellow photos: what users will teach it."""
    from ml.predictor import Predictor

    predictor = Predictor.load(model_dir)
    totals = dict.fromkeys(COLOURS, 0.0)
    for prediction in predictor.predict([Image.open(io.BytesIO(photo(YELLOW, 900 + i))) for i in range(6)], k=3):
        for guess in prediction.top:
            totals[guess.label] += guess.score
    return min(totals, key=totals.get)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_model: Path) -> Path:
    """The settings the bot and the worker share, through the environment."""
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "var"
    for key, value in {
        "SNEAKERBOT_DATA_DIR": str(data_dir),
        "SNEAKERBOT_DATABASE_URL": f"sqlite:///{data_dir / 'bot.db'}",
        "SNEAKERBOT_STARTER_MODEL_DIR": str(base_model),
        "SNEAKERBOT_ADMIN_IDS": str(ADMIN),
        "SNEAKERBOT_RETRAIN_MIN_CORRECTIONS": str(CORRECTIONS),
        "SNEAKERBOT_RETRAIN_CHECK_SECONDS": "1",
        "SNEAKERBOT_RETRAIN_STEPS": "200",
        "SNEAKERBOT_MODEL_POLL_SECONDS": "0.5",
        "SNEAKERBOT_INFERENCE_THREADS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    return data_dir


@pytest.fixture
async def bot(env: Path, playground: PlaygroundServer, tmp_path: Path) -> AsyncIterator[BotUnderTest]:
    settings = bot_settings(tmp_path, get_settings().db_url, admin_ids=frozenset({ADMIN}), model_poll_seconds=0.5)
    async with running_bot(playground, settings, None) as running:  # the real model: the registry's version 1
        yield running


@pytest.fixture
def worker(bot: BotUnderTest, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """``sneakerbot worker`` in its own process, as in production (settings from the environment)."""
    with worker_process(tmp_path / "worker.log") as process:
        yield process


async def ask(bot: BotUnderTest, user: TestUser, data: bytes) -> tuple[dict, Prediction]:
    """Send a photo; the bot's answer and the stored prediction behind it."""
    await user.send_photo(data)
    answer = await user.reply()
    with bot.sessions() as session:
        row = session.scalars(
            select(Prediction).where(Prediction.reply_message_id == answer["message_id"],
                                     Prediction.chat_id == user.user_id)
        ).one_or_none()
        if row is None:  # the reply id is attached just after sending
            row = session.scalars(select(Prediction).where(Prediction.chat_id == user.user_id)
                                  .order_by(Prediction.id.desc())).first()
    return answer, row


async def wait_until(predicate, what: str) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def current_version(bot: BotUnderTest) -> int | None:
    with bot.sessions() as session:
        return session.scalar(select(ModelVersion.version).where(ModelVersion.is_current.is_(True)))


async def answered_by(bot: BotUnderTest, user: TestUser, version: int, seed: int) -> Prediction:
    """Send fresh photos until one is answered by ``version`` (the swap is polled, not pushed)."""
    for attempt in range(100):
        _, row = await ask(bot, user, photo(COLOURS["air_jordan_1"], seed + attempt))
        if row.model_version == version:
            return row
        await asyncio.sleep(0.3)
    raise AssertionError(f"the bot never answered with version {version}")


async def test_corrections_retrain_promote_hot_swap_and_rollback(
    bot: BotUnderTest, worker: subprocess.Popen, playground_http: httpx.AsyncClient, base_model: Path
) -> None:
    names = display_names(base_model)
    target = weakest_label_for_yellow(base_model)
    teacher, other, admin = (TestUser(playground_http, user_id) for user_id in (1001, 2002, ADMIN))
    fresh = [photo(YELLOW, 5000 + i) for i in range(4)]  # never corrected: only a new model can learn them

    before = [(await ask(bot, other, data))[1] for data in fresh]
    assert {row.model_version for row in before} == {1}
    assert sum(row.top[0]["label"] == target for row in before) <= 1

    # Users correct N predictions of yellow photos to the label the model gives them least.
    for i in range(CORRECTIONS):
        answer, _ = await ask(bot, teacher, photo(YELLOW, 100 + i))
        thanks = await teacher.correct(answer, names[target])
        assert names[target] in thanks["text"]

    # The worker's retrain_check sees N corrections, trains, and the registry promotes version 2.
    await wait_until(lambda: current_version(bot) == 2, "version 2 to be promoted")
    with bot.sessions() as session:
        v2 = session.get(ModelVersion, 2)
        assert v2.status == "promoted" and v2.metrics["compared_with"] == 1
        assert v2.metrics["test"]["top1"] >= v2.metrics["current_test"]["top1"]
        user_images = session.scalars(select(ImageRow).where(ImageRow.source == "user")).all()
        assert len(user_images) == CORRECTIONS and {i.split for i in user_images} <= {"train", "val"}
        assert set(v2.data_snapshot["sha1"]) >= {i.sha1 for i in user_images}

    # The running bot answers with version 2 without a restart, and has learned the lesson.
    await answered_by(bot, other, 2, seed=7000)
    after = [(await ask(bot, other, data))[1] for data in fresh]
    assert {row.model_version for row in after} == {2}
    assert sum(row.top[0]["label"] == target for row in after) >= 3

    await admin.send_text("/status")
    status = (await admin.reply())["text"]
    assert "Model: version 2 (efficientnet_lite0), test top-1 " in status
    assert f"0 corrections since the last retrain (retrain at {CORRECTIONS})" in status
    assert "retrain_check: last" in status and "version 2 promoted" in status

    # Rollback: back to version 1, again without a restart.
    await admin.send_text("/rollback 1")
    assert "version 1" in (await admin.reply())["text"]
    assert current_version(bot) == 1
    await answered_by(bot, other, 1, seed=8000)


async def test_a_worse_candidate_is_not_promoted(
    bot: BotUnderTest, worker: subprocess.Popen, playground_http: httpx.AsyncClient, env: Path
) -> None:
    admin = TestUser(playground_http, ADMIN)
    # Someone taught the bot that red sneakers are Air Jordan 4 (blue), many times over.
    with bot.sessions.begin() as session:
        for i in range(30):
            data = photo(COLOURS["air_jordan_1"], 20_000 + i)
            sha1 = hashlib.sha1(data).hexdigest()
            path = Path("images") / "air_jordan_4" / f"{sha1}.jpg"
            (env / path).parent.mkdir(parents=True, exist_ok=True)
            (env / path).write_bytes(data)
            session.add(ImageRow(sha1=sha1, path=str(path), label="air_jordan_4", source="user", status="train",
                                 user_id=666))

    await admin.send_text("/retrain")
    assert "queued" in (await admin.reply())["text"]
    report, progress = await admin.message_starting("✅", "❌", "Retrain", timeout=WAIT_S)
    text = report["text"]
    assert "not promoted v2" in text and "worse than the current model" in text
    assert progress[0] == "retrain: embedding 30 photos" and "retrain: comparing with the current model" in progress

    with bot.sessions() as session:
        v2 = session.get(ModelVersion, 2)
        assert v2.status == "rejected" and "worse than the current model" in v2.reason
        assert v2.metrics["test"]["top1"] < v2.metrics["current_test"]["top1"]
    assert current_version(bot) == 1
    _, row = await ask(bot, admin, photo(COLOURS["air_jordan_3"], 31))
    assert row.model_version == 1


async def test_a_corrected_photo_is_answered_right_next_time(
    bot: BotUnderTest, playground_http: httpx.AsyncClient, base_model: Path
) -> None:
    names = display_names(base_model)
    user, other, admin = (TestUser(playground_http, user_id) for user_id in (1001, 2002, ADMIN))
    red = photo(COLOURS["air_jordan_1"], 42)

    answer, row = await ask(bot, user, red)
    first = row.top[0]["label"]
    wrong = next(label for label in COLOURS if label != first)
    await user.correct(answer, names[wrong])

    # The same photo again: answered with the correction at once, for this user only.
    again, row = await ask(bot, user, red)
    assert row.top[0]["label"] == wrong and row.verdict == "sneaker"
    assert names[wrong] in again["text"]
    _, row = await ask(bot, other, red)
    assert row.top[0]["label"] == first

    # An admin's correction counts for everyone at once.
    blue = photo(COLOURS["air_jordan_4"], 43)
    answer, row = await ask(bot, admin, blue)
    fixed = next(label for label in COLOURS if label != row.top[0]["label"])
    await admin.correct(answer, names[fixed])
    _, row = await ask(bot, other, blue)
    assert row.top[0]["label"] == fixed
