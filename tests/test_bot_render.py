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
