"""The open-set verdicts through the real HTTP path: a sneaker the bot does not know, and a shoe that is not one.

The model is the colour test double of ``tests/bot_harness.py``, as in every conversation test:
green is a sneaker it does not know (``unknown_sneaker``, Air Jordan 8 to 10 the closest known
models), yellow a shoe that is not a sneaker (``not_sneaker`` with detail ``other_footwear``).
The bot sees them exactly as it sees ``ml.predictor.Prediction``: a verdict, top guesses, a detail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from bot import render
from bot.playground import PlaygroundServer
from bot.services.identify import Guess
from bot.services.learning import LearningService, MemoryRules, RefinedPrediction
from bot.services.models import ServedModel
from bot.store.models import Feedback, Prediction, Suggestion, User
from bot.store.models import Image as ImageRow

from bot_harness import (
    GREEN,
    GREY,
    YELLOW,
    BotUnderTest,
    ColourIdentifier,
    ColourPrediction,
    TestUser,
    bot_settings,
    button_texts,
    colour_model,
    jpeg_bytes,
    running_bot,
    wait_until,
)

ADMIN = 4242
UNKNOWN_TEXT = (
    "🆕 That's a sneaker, but not a model I know yet.\n\n"
    "The closest models I know (not a match):\n"
    "• Air Jordan 8\n• Air Jordan 9\n• Air Jordan 10\n\n"
    "Do you know which model it is? Tell me its name and I'll pass it on to the admins. "
    "If it is one of the models I know, pick it from my list."
)
OTHER_FOOTWEAR_TEXT = (
    "👞 That's a shoe, but not a sneaker as far as I can tell, and I only know sneakers.\n\n"
    "If it is a sneaker, tap below and tell me which one."
)


@pytest.fixture
async def bot(playground: PlaygroundServer, tmp_path: Path, database_url: str) -> AsyncIterator[BotUnderTest]:
    settings = bot_settings(tmp_path, database_url, admin_ids=frozenset({ADMIN}))
    async with running_bot(playground, settings, colour_model(3)) as running:
        yield running


@pytest.fixture
def user(playground_http: httpx.AsyncClient) -> TestUser:
    return TestUser(playground_http, user_id=1001)


def prediction_of(bot: BotUnderTest, answer: dict) -> Prediction:
    parsed = render.parse(answer["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    assert parsed is not None
    with bot.sessions() as session:
        prediction = session.get(Prediction, parsed.prediction_id)
        assert prediction is not None
        return prediction


def feedback_of(bot: BotUnderTest, prediction_id: int) -> list[tuple[str, str | None]]:
    with bot.sessions() as session:
        rows = session.scalars(select(Feedback).where(Feedback.prediction_id == prediction_id).order_by(Feedback.id))
        return [(row.verdict, row.label) for row in rows]


def image_of(bot: BotUnderTest, sha1: str) -> ImageRow | None:
    with bot.sessions() as session:
        return session.scalars(select(ImageRow).where(ImageRow.sha1 == sha1)).one_or_none()


def predictions_counted(bot: BotUnderTest, verdict: str) -> float:
    return bot.runtime.metrics.registry.get_sample_value("sneakerbot_predictions_total", {"verdict": verdict}) or 0.0


async def test_an_unknown_sneaker_is_said_honestly_and_its_name_becomes_a_suggestion(
    bot: BotUnderTest, user: TestUser
) -> None:
    await user.send_photo(jpeg_bytes(GREEN, noise=1))
    answer = await user.reply()
    assert answer["text"] == UNKNOWN_TEXT
    assert "%" not in answer["text"]  # the closest models are no guesses: no confidence is shown for them
    assert button_texts(answer) == ["✍️ Tell me its name", "📋 It is one of yours"]
    prediction = prediction_of(bot, answer)
    assert (prediction.verdict, prediction.detail) == ("unknown_sneaker", None)
    assert [t["label"] for t in prediction.top] == ["air_jordan_8", "air_jordan_9", "air_jordan_10"]
    assert predictions_counted(bot, "unknown_sneaker") == 1

    # "Tell me its name" is the "Not listed" flow: asked for the name, which becomes a suggestion for the admins.
    await user.press(answer, "Tell me its name")
    asked = await user.edit()
    assert asked["text"] == render.ASK_NAME_TEXT and button_texts(asked) == ["✏️ Change answer"]
    assert feedback_of(bot, prediction.id) == [("not_listed", None)]
    await user.send_text("Nike Air Max Dn")
    assert (await user.reply())["text"] == render.suggestion_thanks("Nike Air Max Dn")
    with bot.sessions() as session:
        suggestion = session.scalars(select(Suggestion)).one()
        assert (suggestion.text, suggestion.prediction_id, suggestion.user_id, suggestion.status) == (
            "Nike Air Max Dn", prediction.id, 1001, "pending")
        assert session.get(User, 1001).awaiting_suggestion_for is None
    assert image_of(bot, prediction.image_sha1) is None  # no label: not training data


async def test_it_is_one_of_yours_opens_the_models_and_a_pick_is_a_stored_correction(
    bot: BotUnderTest, user: TestUser, playground_http: httpx.AsyncClient
) -> None:
    await user.send_photo(jpeg_bytes(GREEN, noise=2))
    answer = await user.reply()
    prediction = prediction_of(bot, answer)

    # No ✅ was offered: a forged confirmation would file the photo under the closest model. Refused.
    await user.press_data(answer["message_id"], render.encode(render.Action.CORRECT, prediction.id))
    alert = await user.alert()
    assert (alert["text"], alert["show_alert"]) == (render.ALERTS["unknown"], True)
    assert feedback_of(bot, prediction.id) == []

    await user.press(answer, "It is one of yours")
    listing = await user.edit()
    assert listing["message_id"] == answer["message_id"] and listing["text"] == render.CORRECTION_TEXT
    assert button_texts(listing) == [*(f"Air Jordan {n}" for n in range(1, 9)), "1/3", "▶", "🤷 Not listed"]
    await user.press(listing, "Air Jordan 4")
    thanks = await user.edit()
    assert thanks["text"] == render.thanks_text("Air Jordan 4", confirmed=False)
    assert button_texts(thanks) == ["✏️ Change answer"]
    assert feedback_of(bot, prediction.id) == [("wrong", "air_jordan_4")]
    image = image_of(bot, prediction.image_sha1)
    assert image is not None
    assert (image.label, image.source, image.status, image.user_id) == ("air_jordan_4", "user", "train", 1001)
    assert (bot.settings.data_dir / image.path).is_file()

    # /stats counts it as a miss of the verdict, not as a hit or miss of the closest model shown.
    admin = TestUser(playground_http, user_id=ADMIN)
    await admin.send_text("/stats")
    summary = (await admin.reply())["text"]
    assert "1 answers, accuracy 0.0%" in summary
    assert "unknown_sneaker → air_jordan_4: 1" in summary
    assert "Photos: 1 — sneaker 0, unsure 0, not_sneaker 0, unknown_sneaker 1" in summary


async def test_a_shoe_that_is_not_a_sneaker_is_said_so_and_can_still_be_corrected(
    bot: BotUnderTest, user: TestUser
) -> None:
    await user.send_photo(jpeg_bytes(YELLOW, noise=3))
    answer = await user.reply()
    assert answer["text"] == OTHER_FOOTWEAR_TEXT
    assert button_texts(answer) == ["👟 It is a sneaker"]
    prediction = prediction_of(bot, answer)
    assert (prediction.verdict, prediction.detail) == ("not_sneaker", "other_footwear")

    await user.send_photo(jpeg_bytes(GREY, noise=4))  # not a shoe at all: the reply of before
    plain = await user.reply()
    assert plain["text"] == render.NOT_SNEAKER_TEXT and button_texts(plain) == ["👟 It is a sneaker"]
    assert prediction_of(bot, plain).detail is None
    metrics = bot.runtime.metrics.registry
    assert predictions_counted(bot, "not_sneaker") == 2
    assert metrics.get_sample_value("sneakerbot_prediction_details_total", {"detail": "other_footwear"}) == 1

    thanks = await user.correct(answer, "Air Jordan 2")
    assert thanks["text"] == render.thanks_text("Air Jordan 2", confirmed=False)
    assert feedback_of(bot, prediction.id) == [("wrong", "air_jordan_2")]
    image = image_of(bot, prediction.image_sha1)
    assert image is not None and (image.label, image.status) == ("air_jordan_2", "train")


async def test_an_answer_sent_again_from_its_row_keeps_the_other_footwear_wording(
    bot: BotUnderTest, user: TestUser
) -> None:
    """The bot stored the answer and stopped before sending it: Telegram's repeat is answered from the row."""
    photo = await user.send_photo(jpeg_bytes(YELLOW, noise=5))
    first = await user.reply()
    await wait_until(lambda: prediction_of(bot, first).reply_message_id is not None, what="the reply's id stored")
    with bot.sessions.begin() as session:
        session.execute(update(Prediction).values(reply_message_id=None))
    again = bot.server.state.get_message(photo["chat"]["id"], photo["message_id"])
    await bot.server.state.push_update("message", again)
    resent = await user.reply()
    assert resent["text"] == OTHER_FOOTWEAR_TEXT and resent["reply_to_message"]["message_id"] == photo["message_id"]
    assert button_texts(resent) == ["👟 It is a sneaker"]


class RememberingColourIdentifier(ColourIdentifier):
    """The colour double with an embedding per photo (its mean colour), so the instant-learning memory works."""

    def predict(self, images: Sequence[Image.Image], k: int = 3) -> list[ColourPrediction]:
        out = []
        for image, prediction in zip(images, super().predict(images, k), strict=True):
            mean = np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(axis=0)
            out.append(ColourPrediction(prediction.top, prediction.verdict, prediction.footwear_score,
                                        mean / np.linalg.norm(mean), prediction.detail))
        return out


async def test_a_users_correction_of_an_unknown_sneaker_changes_no_one_elses_answer(
    playground: PlaygroundServer, playground_http: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    settings = bot_settings(tmp_path, database_url)
    photo = jpeg_bytes(GREEN, noise=6)
    ann, bob = TestUser(playground_http, user_id=1001), TestUser(playground_http, user_id=1002)
    async with running_bot(playground, settings, ServedModel(1, RememberingColourIdentifier())):
        await ann.send_photo(photo)
        await ann.correct(await ann.reply(), "Air Jordan 4")

        # Ann said what this very photo is: her memory answers her with it.
        await ann.send_photo(photo)
        again = await ann.reply()
        assert again["text"].startswith("👟 That looks like:\n1. Air Jordan 4 — ")
        assert button_texts(again)[:2] == ["✅ Correct", "❌ Wrong"]

        # Bob sends the same photo: one user's private answer is no confident answer for anyone else.
        await bob.send_photo(photo)
        theirs = await bob.reply()
        assert theirs["text"] == UNKNOWN_TEXT
        assert button_texts(theirs) == ["✍️ Tell me its name", "📋 It is one of yours"]


# --- the memory's refinement, on its own -------------------------------------------------
def learning(sessions: sessionmaker[Session]) -> LearningService:
    return LearningService(sessions, MemoryRules(admin_ids=frozenset({ADMIN}), match_threshold=0.9),
                           embed=lambda path: None, current_backbone=lambda: "colour",
                           display_name=lambda label: label.replace("_", " ").title())


def photo_vector(seed: int, dim: int = 16) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def model_says(verdict: str, embedding: np.ndarray, detail: str | None = None) -> RefinedPrediction:
    top = [Guess("air_jordan_8", "Air Jordan 8", 0.5), Guess("air_jordan_9", "Air Jordan 9", 0.3)]
    return RefinedPrediction(top, verdict, 0.7, embedding, detail=detail)


def test_the_memory_keeps_the_models_verdict_and_detail_unless_its_label_wins(
    db_sessions: sessionmaker[Session],
) -> None:
    service = learning(db_sessions)
    photo = photo_vector(1)
    service.remember("a" * 40, ADMIN, "air_jordan_4", "colour", photo, is_admin=True)

    # A near-identical photo an admin labelled: the remembered label wins, a confident answer for everyone.
    won = service.refine(7, "b" * 40, model_says("not_sneaker", photo, "other_footwear"))
    assert (won.top[0].label, won.verdict, won.detail) == ("air_jordan_4", "sneaker", None)

    # A merely similar one (cosine 0.93): nudged, but the model's verdict and its detail stand.
    other = photo_vector(2) - float(photo_vector(2) @ photo) * photo
    similar = 0.93 * photo + np.sqrt(1 - 0.93**2) * other / np.linalg.norm(other)
    nudged = service.refine(7, "c" * 40, model_says("not_sneaker", similar, "other_footwear"))
    assert nudged.memory_label == "air_jordan_4"
    assert (nudged.verdict, nudged.detail) == ("not_sneaker", "other_footwear")
    kept = service.refine(7, "d" * 40, model_says("unknown_sneaker", similar))
    assert (kept.verdict, kept.detail) == ("unknown_sneaker", None)
