"""Button data stays within Telegram's 64 bytes and parses back; foreign data is refused."""

from __future__ import annotations

from bot import render

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
