"""The conversation through the real HTTP path: test user -> playground -> python-telegram-bot -> services -> DB.

Runs on SQLite and on PostgreSQL. The model here is the colour test double (see
``tests/bot_harness.py``); ``test_bot_real_model.py`` runs the same path with the real Predictor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from bot import render
from bot.playground import PlaygroundServer
from bot.store.models import Feedback, Prediction, Suggestion, User
from bot.store.models import Image as ImageRow

from bot_harness import (
    BLUE,
    GREY,
    RED,
    BotUnderTest,
    TestUser,
    bot_settings,
    button,
    button_texts,
    colour_model,
    encoded,
    jpeg_bytes,
    png_bytes,
    running_bot,
    wait_until,
)


@pytest.fixture
async def bot(playground: PlaygroundServer, tmp_path: Path, database_url: str) -> AsyncIterator[BotUnderTest]:
    async with running_bot(playground, bot_settings(tmp_path, database_url), colour_model(3)) as running:
        yield running


@pytest.fixture
def user(playground_http: httpx.AsyncClient) -> TestUser:
    return TestUser(playground_http, user_id=1001)


def count(bot: BotUnderTest, model: type) -> int:
    with bot.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def feedback_of(bot: BotUnderTest, prediction_id: int) -> list[tuple[str, str | None]]:
    with bot.sessions() as session:
        rows = session.scalars(select(Feedback).where(Feedback.prediction_id == prediction_id).order_by(Feedback.id))
        return [(row.verdict, row.label) for row in rows]


def prediction_id_of(message: dict) -> int:
    parsed = render.parse(message["reply_markup"]["inline_keyboard"][0][0]["callback_data"])
    assert parsed is not None
    return parsed.prediction_id


async def test_start_help_and_commands(bot: BotUnderTest, user: TestUser) -> None:
    await user.send_text("/start")
    reply = await user.reply()
    assert "sneaker" in reply["text"] and "What I keep" in reply["text"]
    await user.send_text("/help")
    reply = await user.reply()
    assert "Albums" in reply["text"] and f"{bot.settings.retention_days} days" in reply["text"]
    assert {c["command"] for c in bot.server.state.commands} == {"start", "help"}


async def test_a_confident_answer_replies_with_the_top_three_buttons_and_a_search_link(
    bot: BotUnderTest, user: TestUser
) -> None:
    photo = await user.send_photo(jpeg_bytes(RED, noise=1))
    action = await user.next_event("chat_action")
    assert action["action"] == "typing"
    answer = await user.reply()
    assert answer["reply_to_message"]["message_id"] == photo["message_id"]
    assert "Air Jordan 11 — 87%" in answer["text"] and "Air Jordan 12 — 6%" in answer["text"]
    assert button_texts(answer) == ["✅ Correct", "❌ Wrong", "🔎 Find Air Jordan 11"]
    assert button(answer, "Find")["url"] == "https://shop.example/search?q=Air+Jordan+11"

    def stored() -> Prediction:
        with bot.sessions() as session:
            return session.get(Prediction, prediction_id_of(answer))

    # The reply's id is stored once the reply is sent: wait for that write, not for a while.
    await wait_until(lambda: stored().reply_message_id is not None, what="the reply's id stored")
    prediction = stored()
    assert prediction.reply_message_id == answer["message_id"]
    assert prediction.verdict == "sneaker" and prediction.model_version == 3


async def test_correct_stores_the_feedback_and_files_the_photo_for_training(bot: BotUnderTest, user: TestUser) -> None:
    await user.send_photo(jpeg_bytes(RED, noise=1))
    answer = await user.reply()
    first = prediction_id_of(answer)

    # ✅ Correct: no alert, the buttons replaced by "Change answer", the photo filed under its label.
    await user.press(answer, "Correct")
    assert (await user.alert())["show_alert"] is False
    edited = await user.edit()
    assert "Confirmed: Air Jordan 11" in edited["text"]
    assert button_texts(edited) == ["✏️ Change answer"]
    assert feedback_of(bot, first) == [("correct", "air_jordan_11")]
    with bot.sessions() as session:
        prediction = session.get(Prediction, first)
        image = session.scalars(select(ImageRow).where(ImageRow.sha1 == prediction.image_sha1)).one()
        assert (image.label, image.source, image.status, image.user_id) == ("air_jordan_11", "user", "train", 1001)
    filed = bot.settings.data_dir / image.path
    assert filed == bot.settings.data_dir / "images" / "air_jordan_11" / f"{prediction.image_sha1}.jpg"
    assert Image.open(filed).size == (320, 240)


async def test_wrong_opens_a_paged_list_and_a_pick_is_stored(bot: BotUnderTest, user: TestUser) -> None:
    # An unsure answer says so and still shows guesses; ❌ Wrong opens the paged list.
    await user.send_photo(jpeg_bytes(BLUE, noise=2))
    answer = await user.reply()
    assert "not sure" in answer["text"] and "Air Jordan 5 — 41%" in answer["text"]
    second = prediction_id_of(answer)
    await user.press(answer, "Wrong")
    listing = await user.edit()
    assert listing["text"] == render.CORRECTION_TEXT
    assert button_texts(listing)[:8] == [f"Air Jordan {n}" for n in range(1, 9)]
    assert button_texts(listing)[8:] == ["1/3", "▶", "🤷 Not listed"]
    assert all(len(b["callback_data"].encode()) <= 64 for row in listing["reply_markup"]["inline_keyboard"]
               for b in row)

    await user.press(listing, "▶")
    page2 = await user.edit()
    assert button_texts(page2)[:8] == [f"Air Jordan {n}" for n in range(9, 17)]
    assert button_texts(page2)[8:11] == ["◀", "2/3", "▶"]
    assert feedback_of(bot, second) == []  # browsing stores nothing

    await user.press(page2, "Air Jordan 9")
    thanks = await user.edit()
    assert "it is Air Jordan 9" in thanks["text"]
    assert feedback_of(bot, second) == [("wrong", "air_jordan_9")]


async def test_a_changed_answer_not_listed_takes_the_typed_name_as_a_suggestion(
    bot: BotUnderTest, user: TestUser
) -> None:
    await user.send_photo(jpeg_bytes(BLUE, noise=2))
    answer = await user.reply()
    second = prediction_id_of(answer)
    thanks = await user.correct(answer, "Air Jordan 3")
    assert feedback_of(bot, second) == [("wrong", "air_jordan_3")]

    # Change the answer: "Not listed", then the typed name becomes a suggestion; the last answer counts.
    await user.press(thanks, "Change answer")
    listing = await user.edit()
    await user.press(listing, "Not listed")
    asked = await user.edit()
    assert asked["text"] == render.ASK_NAME_TEXT
    await user.send_text("Air Jordan 40 Retro")
    reply = await user.reply()
    assert "Air Jordan 40 Retro" in reply["text"]
    assert feedback_of(bot, second)[-1] == ("not_listed", None)
    with bot.sessions() as session:
        suggestion = session.scalars(select(Suggestion)).one()
        assert (suggestion.text, suggestion.prediction_id) == ("Air Jordan 40 Retro", second)
        assert suggestion.status == "pending"
        sha1 = session.get(Prediction, second).image_sha1
        assert session.scalars(select(ImageRow).where(ImageRow.sha1 == sha1)).one().status == "review"
        assert session.get(User, 1001).awaiting_suggestion_for is None

    # Text after that is not a suggestion any more.
    await user.send_text("hello")
    assert (await user.reply())["text"] == render.OTHER_TEXT
    assert count(bot, Suggestion) == 1


async def test_not_a_sneaker_and_files(bot: BotUnderTest, user: TestUser) -> None:
    await user.send_photo(jpeg_bytes(GREY))
    answer = await user.reply()
    assert answer["text"] == render.NOT_SNEAKER_TEXT
    assert button_texts(answer) == ["👟 It is a sneaker"]
    await user.press(answer, "It is a sneaker")
    listing = await user.edit()
    assert "🤷 Not listed" in button_texts(listing)

    files = [(png_bytes(RED), "shoe.png", "image/png"), (encoded(RED, "WEBP"), "shoe.webp", "image/webp"),
             (encoded(RED, "HEIF"), "IMG_0001.HEIC", "application/octet-stream")]
    for data, name, mime in files:
        document = await user.send_document(data, name, mime)
        answer = await user.reply()
        assert answer["reply_to_message"]["message_id"] == document["message_id"]
        assert "Air Jordan 11 — 87%" in answer["text"], name
    assert count(bot, Prediction) == 4


async def test_junk_gets_short_replies_and_stores_nothing(bot: BotUnderTest, user: TestUser) -> None:
    whole = jpeg_bytes(RED, noise=3)
    cases = [
        (lambda: user.send_document(b"just some notes", "notes.txt", "text/plain"), render.NOT_IMAGE_FILE_TEXT),
        (lambda: user.send_document(whole[:300], "header.jpg", "image/jpeg"), render.rejection_text("corrupt")),
        (lambda: user.send_document(whole[: len(whole) // 2], "half.jpg", "image/jpeg"),
         render.rejection_text("corrupt")),
        (lambda: user.send_document(b"GIF89a not really", "fake.png", "image/png"),
         render.rejection_text("not_an_image")),
        (lambda: user.send_document(png_bytes(RED, (20, 20)), "tiny.png", "image/png"),
         render.rejection_text("too_small")),
        (lambda: user.send_kind("sticker"), render.OTHER_TEXT),
        (lambda: user.send_kind("video"), render.OTHER_TEXT),
        (lambda: user.send_kind("voice"), render.OTHER_TEXT),
        (lambda: user.send_kind("location"), render.OTHER_TEXT),
        (lambda: user.send_text("/frobnicate"), render.UNKNOWN_COMMAND_TEXT),
    ]
    for send, expected in cases:
        await send()
        assert (await user.reply())["text"] == expected
    assert count(bot, Prediction) == 0 and count(bot, User) == 0
    assert not (bot.settings.data_dir / "pending").exists()


async def test_decompression_bomb_is_refused(playground: PlaygroundServer, tmp_path: Path, database_url: str,
                                             user: TestUser) -> None:
    settings = bot_settings(tmp_path, database_url, max_image_pixels=1_000_000)
    async with running_bot(playground, settings, colour_model()) as running:
        await user.send_document(png_bytes(RED, (2000, 1000)), "huge.png", "image/png")
        assert (await user.reply())["text"] == render.rejection_text("too_many_pixels")
        assert count(running, Prediction) == 0


async def test_album_gets_one_answer_per_photo(bot: BotUnderTest, user: TestUser) -> None:
    sent = await user.send_photos([jpeg_bytes(RED, noise=n) for n in range(3)])
    assert len({m["media_group_id"] for m in sent}) == 1
    replies = [await user.reply() for _ in sent]
    assert sorted(r["reply_to_message"]["message_id"] for r in replies) == sorted(m["message_id"] for m in sent)
    with bot.sessions() as session:  # what was stored, in the message if this ever fails
        stored = [(p.message_id, p.verdict) for p in session.scalars(select(Prediction))]
    assert sorted(m for m, _ in stored) == sorted(m["message_id"] for m in sent), (stored, replies)


async def test_forged_and_foreign_presses_change_nothing(bot: BotUnderTest, user: TestUser) -> None:
    await user.send_photo(jpeg_bytes(RED, noise=7))
    answer = await user.reply()
    pid = prediction_id_of(answer)
    forged = ["garbage", "c:0", f"c:{pid + 1000}", f"l:{pid}:air_jordan_99", f"q:{pid}", "c:1:2:3" + "x" * 70]
    expected = [render.ALERTS["unknown"]] * 3 + [render.ALERTS["unknown_label"], render.ALERTS["unknown"],
                                                 render.ALERTS["unknown"]]
    for data, alert in zip(forged, expected, strict=True):
        await user.press_data(answer["message_id"], data)
        event = await user.alert()
        assert (event["text"], event["show_alert"]) == (alert, True), data

    # Another user sends this user's prediction id from their own message: polite alert, nothing stored.
    other = TestUser(user.client, user_id=2002)
    await other.send_photo(jpeg_bytes(RED, noise=8))
    their_answer = await other.reply()
    for data in (f"c:{pid}", f"l:{pid}:air_jordan_3", f"w:{pid}", f"n:{pid}"):
        await other.press_data(their_answer["message_id"], data)
        event = await other.alert()
        assert (event["text"], event["show_alert"]) == (render.ALERTS["not_yours"], True), data
    assert feedback_of(bot, pid) == []

    # The owner's own press still works afterwards, and its edit is the first thing the bot did in
    # the owner's chat since the answer: the forged presses changed nothing there.
    edited = await user.confirm(answer)
    assert edited["message_id"] == answer["message_id"] and "Thanks" in edited["text"]
    assert [e for e in user.backlog if e["type"] in ("message", "edit")] == []
    assert feedback_of(bot, pid) == [("correct", "air_jordan_11")]


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_each_bot_api_transport_carries_a_whole_exchange(
    transport: str, playground: PlaygroundServer, tmp_path: Path, database_url: str, user: TestUser
) -> None:
    """Both HTTP backends (``SNEAKERBOT_TELEGRAM_HTTP``): upload-free calls, a file download, a reply, a button."""
    settings = bot_settings(tmp_path, database_url, telegram_http=transport)
    async with running_bot(playground, settings, colour_model()) as running:
        await user.send_photo(jpeg_bytes(RED, noise=11))
        answer = await user.reply()
        assert "Air Jordan 11" in answer["text"]
        edited = await user.confirm(answer)
        assert "Air Jordan 11" in edited["text"]
        assert feedback_of(running, prediction_id_of(answer)) == [("correct", "air_jordan_11")]
