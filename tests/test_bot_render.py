"""Button data stays within Telegram's 64 bytes and parses back; foreign data is refused; the replies to
each verdict say what the model found and offer the buttons that fit it."""

from __future__ import annotations

from telegram import InlineKeyboardMarkup

from bot import render, render_admin
from bot.services.identify import Guess, IdentifyResult

from bot_harness import ClassInfo


def test_callback_data_round_trip_and_refusals() -> None:
    assert render.parse(render.encode(render.Action.PAGE, 123456789, 2)) == render.Callback("p", 123456789, "2")
    for data in (None, "", "c", "c:", "c:0", "c:01", "c:-1", "z:5", "c:5" + "x" * 64, "c:abc"):
        assert render.parse(data) is None, data


def test_long_labels_travel_as_a_hash_and_resolve_back() -> None:
    long_label = "air_jordan_" + "x" * 60
    classes = [ClassInfo("air_jordan_1", "Air Jordan 1"), ClassInfo(long_label, "A very long one")]
    keyboard = render.correction_keyboard(2**40, classes, page=0)
    datas = [b.callback_data for row in keyboard.inline_keyboard for b in row]
    assert all(len(d.encode()) <= 64 for d in datas)
    picks = [render.parse(d) for d in datas if d.startswith("l:")]
    assert [render.resolve_label(p.arg, classes) for p in picks] == ["air_jordan_1", long_label]
    assert picks[1].arg.startswith("#")
    assert render.resolve_label("#000000000000", classes) is None


def test_forged_data_with_an_empty_or_extra_argument_is_refused() -> None:
    """An empty argument is not an argument: "p:3:" would otherwise page to int("")."""
    for data in ("p:3:", "p:3", "l:3:", "c:3:", "w:3:", "n:3:x", "x:3:1", "p:3:²", "p:3:01", "p:3:-1", "s:3::"):
        assert render.parse(data) is None, data


def test_actions_are_their_letters() -> None:
    """StrEnum members are the strings in the data: what old buttons carry still parses."""
    parsed = render.parse("n:7")
    assert parsed is not None and parsed.action is render.Action.NOT_LISTED and parsed.action == "n"
    assert render.encode(render.Action.PAGE, 7, 1) == "p:7:1"
    assert render.ACTIONS == {"c", "w", "s", "p", "l", "n", "x"}


def _result(verdict: str, detail: str | None = None, guesses: int = 3) -> IdentifyResult:
    top = [Guess(f"air_jordan_{n}", f"Air Jordan {n}", 0.3 - n / 100) for n in range(8, 8 + guesses)]
    return IdentifyResult(render.MAX_ID, verdict, top, 3, 10.0, detail=detail)


def _buttons(keyboard: InlineKeyboardMarkup) -> list[tuple[str, str | None]]:
    return [(b.text, b.callback_data) for row in keyboard.inline_keyboard for b in row]


def test_an_unknown_sneaker_names_the_closest_models_as_such_and_offers_a_name_or_a_pick() -> None:
    result = _result("unknown_sneaker")
    text = render.answer_text(result)
    assert text.startswith("🆕 That's a sneaker, but not a model I know yet.")
    assert "The closest models I know (not a match):\n• Air Jordan 8\n• Air Jordan 9\n• Air Jordan 10" in text
    assert "%" not in text and "Is the first one right?" not in text
    buttons = _buttons(render.answer_keyboard(result, "https://shop.example/?q={query}"))
    assert [text for text, _ in buttons] == ["✍️ Tell me its name", "📋 It is one of yours"]  # no ✅, no search link
    # The biggest id still fits in Telegram's 64 bytes, and each button parses back to the flow it reuses.
    parsed = [render.parse(data) for _, data in buttons]
    assert all(data is not None and len(data.encode()) <= render.MAX_CALLBACK_BYTES for _, data in buttons)
    assert parsed == [render.Callback(render.Action.NOT_LISTED, render.MAX_ID),
                      render.Callback(render.Action.WRONG, render.MAX_ID)]
    assert "closest" not in render.answer_text(_result("unknown_sneaker", guesses=0))


def test_other_footwear_is_a_shoe_but_not_a_sneaker_and_keeps_its_sneaker_button() -> None:
    footwear, plain = _result("not_sneaker", "other_footwear"), _result("not_sneaker")
    assert render.answer_text(footwear) == render.OTHER_FOOTWEAR_TEXT
    assert "a shoe, but not a sneaker" in render.OTHER_FOOTWEAR_TEXT
    assert render.answer_text(plain) == render.NOT_SNEAKER_TEXT
    for result in (footwear, plain):
        assert _buttons(render.answer_keyboard(result, "{query}")) == [
            ("👟 It is a sneaker", render.encode(render.Action.SNEAKER, render.MAX_ID))]
    # A detail never changes an answer that names a model.
    assert render.answer_text(_result("sneaker", "other_footwear")).startswith(render.VERDICT_HEADERS["sneaker"])


def test_forged_data_for_the_new_buttons_is_refused() -> None:
    """The new buttons add no action and no argument: what parse refused before it still refuses."""
    for data in (f"n:{render.MAX_ID + 1}", f"w:{render.MAX_ID + 1}", "n:0", "w:7:x", "n:7:", "u:7", "f:7",
                 "n:" + "9" * 70):
        assert render.parse(data) is None, data


def test_stats_show_photos_per_verdict_and_a_verdict_that_named_no_model_as_the_prediction() -> None:
    from bot.services.admin import StatsView, answered_as, verdict_counts

    top = [{"label": "air_jordan_8", "score": 0.3}]
    assert answered_as(top, "unsure") == "air_jordan_8"
    assert answered_as(top, "unknown_sneaker") == "unknown_sneaker"
    assert answered_as(top, "not_sneaker") == "not_sneaker"
    verdicts, details = verdict_counts({("sneaker", None): 5, ("not_sneaker", "other_footwear"): 2,
                                        ("not_sneaker", None): 1, ("unknown_sneaker", None): 3})
    view = StatsView(days=7, total=1, accuracy=0.0, per_class=[("air_jordan_4", 0, 1)],
                     confused=[("unknown_sneaker", "air_jordan_4", 1)], pairs=[("air_jordan_4", "unknown_sneaker")],
                     verdicts=verdicts, details=details)
    assert render_admin.stats(view).splitlines() == [
        "Feedback of the last 7 days: 1 answers, accuracy 0.0%",
        "Photos: 11 — sneaker 5, unsure 0, not_sneaker 3, unknown_sneaker 3; details: other_footwear 2",
        "• air_jordan_4: 0/1 (0.0%)",
        "Most confused (predicted → actually):",
        "• unknown_sneaker → air_jordan_4: 1",
    ]
