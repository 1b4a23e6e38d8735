"""The main path with the real model: the shipped starter model through ``ml.predictor.Predictor``.

On first start the bot installs ``models/starter`` as version 1 of the registry and serves
it. The expected answer is what the same Predictor says about the same photo, so the test
checks that the bot shows exactly the model's guesses and verdict. Threshold overrides from
the settings force each verdict branch, whatever the model thinks of a generated photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from bot import render
from bot.playground import PlaygroundServer
from bot.settings import STARTER_MODEL_DIR
from bot.store.models import Feedback, ModelVersion, Prediction
from bot.store.models import Image as ImageRow

from bot_harness import RED, TestUser, bot_settings, button_texts, jpeg_bytes, running_bot


@pytest.fixture(scope="module")
def model_dir() -> Path:
    assert (STARTER_MODEL_DIR / "model.json").is_file(), f"the starter model is missing from {STARTER_MODEL_DIR}"
    return STARTER_MODEL_DIR


# Threshold overrides (settings ``sneaker_threshold``/``unsure_threshold``) that force each branch:
# a footwear score is never above 1, and never below 0.
VERDICT_SETTINGS = {
    "not_sneaker": {"sneaker_threshold": 1.01},
    "sneaker": {"sneaker_threshold": 0.0, "unsure_threshold": 0.0},
}


@pytest.mark.parametrize("verdict", list(VERDICT_SETTINGS))
async def test_real_model_answer_and_feedback(playground: PlaygroundServer, playground_http: httpx.AsyncClient,
                                              tmp_path: Path, database_url: str, model_dir: Path, verdict: str) -> None:
    from ml.predictor import Predictor

    overrides = VERDICT_SETTINGS[verdict]
    thresholds = {"footwear": overrides.get("sneaker_threshold"), "unsure": overrides.get("unsure_threshold")}
    data = jpeg_bytes(RED, (320, 240), noise=4711)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    expected = Predictor.load(model_dir, thresholds=thresholds).predict([image], k=3)[0]
    assert expected.verdict == verdict
    settings = bot_settings(tmp_path, database_url, starter_model_dir=model_dir, **overrides)
    async with running_bot(playground, settings, None) as bot:
        with bot.sessions() as session:
            version = session.scalars(select(ModelVersion)).one()
            assert (version.version, version.is_current, version.status) == (1, True, "promoted")
        user = TestUser(playground_http, user_id=1234)
        await user.send_photo(data)
        answer = await user.reply()
        if expected.verdict == "not_sneaker":
            assert answer["text"] == render.NOT_SNEAKER_TEXT
            await user.press(answer, "It is a sneaker")
            listing = await user.edit()
            chosen = expected.top[0]
            while chosen.display_name not in button_texts(listing):  # page through the models
                await user.press(listing, "▶")
                listing = await user.edit()
            await user.press(listing, chosen.display_name)
            stored = ("wrong", chosen.label)
        else:
            for rank, guess in enumerate(expected.top, 1):
                assert f"{rank}. {guess.display_name} — {render.percent(guess.score)}" in answer["text"]
            assert button_texts(answer)[:2] == ["✅ Correct", "❌ Wrong"]
            await user.press(answer, "Correct")
            stored = ("correct", expected.top[0].label)
        await user.edit()
        with bot.sessions() as session:
            prediction = session.scalars(select(Prediction)).one()
            assert prediction.model_version == 1 and prediction.verdict == expected.verdict
            assert [t["label"] for t in prediction.top] == [g.label for g in expected.top]
            assert [(f.verdict, f.label) for f in session.scalars(select(Feedback))] == [stored]
            assert session.scalars(select(ImageRow)).one().label == stored[1]
