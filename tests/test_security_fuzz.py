"""Property-based fuzzing of what strangers control: image bytes, button data, admin command words.

- Image decoders (``ml.images.open_image``, the bot's ``PhotoDecoder``, the scraper's
  ``decode_image``): any bytes give an RGB image or one of their own errors, never a
  library's exception, and never take long. Inputs are mutated and truncated real JPEG, PNG,
  GIF, WebP, BMP, TIFF and HEIF files, random bytes behind real magic numbers, and headers
  that declare huge dimensions.
- Button data (``bot.render.parse``, ``bot.render_admin.parse_suggestion_data``): any string
  parses to None or to a value whose encoding is exactly that string (so forged data can
  never mean something a real button does not say), and every real button parses back.
- Admin commands (``/scrape``, ``/addclass``, ``/rollback`` and the labels behind them): any
  text gives ``UsageError``/``AdminError`` (which the handlers answer) or a valid request.
- Decompression bombs: a header declaring 30000 x 30000 (or just over the app's 40 M pixel
  cap) is refused by every place that opens images, before any pixel is decoded.
- Logging: no bot token survives ``bot.logging_setup``'s filter, and ``sneakerbot``'s own
  logging configuration writes none (a subprocess runs ``bot.cli.main``).

Hypothesis runs ~200 examples per property, with no example database on disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import struct
import time
import zlib
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot import render, render_admin
from bot.handlers.admin import UsageError, parse_addclass_args, parse_rollback_args, parse_scrape_args
from bot.services import admin as admin_service
from bot.services.admin import (
    DEFAULT_SCRAPE,
    MAX_SCRAPE,
    AdminError,
    AdminService,
    BadLabel,
    check_label,
    label_from_text,
)
from bot.services.decoding import PhotoDecoder
from ml.errors import BadImage
from ml.images import open_image
from scraper.catalogue import is_valid_label
from scraper.errors import ImageError
from scraper.images import decode_image

from scraper_support import encode, picture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow narrates broken files
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW_DECODE_S = 10.0  # far above any honest decode of these small files: a "hang" guard, not a benchmark
LABEL_FULL = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True)
class ClassInfo:
    """What the keyboards need of a class (``bot.services.models.ClassInfoLike``)."""

    label: str
    display_name: str


# --- image bytes ------------------------------------------------------------------
def _seed_images() -> dict[str, bytes]:
    photo = picture("astronaut").resize((96, 80))
    seeds = {
        "jpeg": encode(photo, "JPEG", quality=85),
        "jpeg-progressive": encode(photo, "JPEG", quality=70, progressive=True),
        "png": encode(photo, "PNG"),
        "png-rgba": encode(photo.convert("RGBA"), "PNG"),
        "png-palette": encode(photo.convert("P"), "PNG"),
        "png-16bit": encode(photo.convert("L").convert("I;16"), "PNG"),
        "gif": encode(photo, "GIF"),
        "webp": encode(photo, "WEBP", quality=80),
        "bmp": encode(photo, "BMP"),
        "tiff": encode(photo, "TIFF"),
        "tiff-cmyk": encode(photo.convert("CMYK"), "TIFF"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so exif_transpose runs
    seeds["jpeg-exif"] = encode(photo, "JPEG", exif=exif.tobytes())
    try:
        seeds["heif"] = encode(photo, "HEIF", quality=60)
    except (KeyError, OSError, ValueError):  # pillow-heif without an encoder: the others still run
        pass
    return seeds


SEEDS = _seed_images()
MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00",
          b"MM\x00*", b"\x00\x00\x00\x18ftypheic", b"\x00\x00\x00\x1cftypavif"]


def png_declaring(width: int, height: int, mode: int = 2, body: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (colour type ``mode``), with ``body`` as pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 marker is rewritten to declare ``width`` x ``height``."""
    data = bytearray(SEEDS["jpeg"])
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A real GIF whose logical screen and first frame declare ``width`` x ``height``."""
    data = bytearray(SEEDS["gif"])
    struct.pack_into("<HH", data, 6, width, height)
    at = data.index(b"\x2c")  # the first image descriptor
    struct.pack_into("<HH", data, at + 5, width, height)
    return bytes(data)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real image file with bytes flipped, inserted, deleted, or the tail cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        # Headers matter most: most positions are drawn from the first 512 bytes.
        span = len(data) if draw(st.booleans()) and len(data) else min(len(data), 512)
        if span == 0:
            break
        at = draw(st.integers(0, span - 1))
        if op == "set":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


huge_dimension = st.integers(1, 2**31 - 1)
hostile_images = st.one_of(
    mutated_images(),
    st.binary(max_size=4096),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=2048)),
    st.builds(png_declaring, huge_dimension, huge_dimension, st.sampled_from([0, 2, 3, 4, 6]),
              st.binary(max_size=256)),
    st.builds(jpeg_declaring, st.integers(1, 65535), st.integers(1, 65535)),
    st.builds(gif_declaring, st.integers(1, 65535), st.integers(1, 65535)),
)


def _check_decoder(decode, errors: type[Exception] | tuple[type[Exception], ...], data: bytes, min_side: int) -> None:
    started = time.monotonic()
    try:
        image = decode(data)
    except errors:
        pass
    else:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert min(image.size) >= min_side
        assert image.width * image.height <= 40_000_000
    assert time.monotonic() - started < SLOW_DECODE_S, f"decoding {len(data)} bytes took too long"


@FUZZ
@given(hostile_images)
@example(b"")
@example(png_declaring(30_000, 30_000))
@example(png_declaring(2**31 - 1, 1))
@example(png_declaring(0, 0))
def test_open_image_gives_rgb_or_bad_image(data: bytes) -> None:
    _check_decoder(open_image, BadImage, data, min_side=64)


@FUZZ
@given(hostile_images)
@example(jpeg_declaring(30_000, 30_000))
def test_the_bots_photo_decoder_gives_rgb_or_bad_image(data: bytes) -> None:
    """``PhotoDecoder`` first tries a reduced JPEG decode of its own, then ``open_image``."""
    _check_decoder(lambda b: PhotoDecoder()(b, 224), BadImage, data, min_side=64)


@FUZZ
@given(hostile_images)
@example(gif_declaring(65535, 65535))
def test_scraper_decode_gives_rgb_or_image_error(data: bytes) -> None:
    _check_decoder(lambda b: decode_image(b, min_side=64), ImageError, data, min_side=64)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes(name: str) -> None:
    """The fuzzing starts from files that do decode (so the mutations test more than the magic bytes)."""
    assert open_image(SEEDS[name]).mode == "RGB"
    assert decode_image(SEEDS[name], min_side=64).mode == "RGB"


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_truncated_files_decode_or_are_bad_images(name: str, cut: float) -> None:
    data = SEEDS[name][: int(len(SEEDS[name]) * cut)]
    _check_decoder(open_image, BadImage, data, min_side=64)
    _check_decoder(lambda b: decode_image(b, min_side=64), ImageError, data, min_side=64)


# --- button data ------------------------------------------------------------------
PIDS = st.integers(1, render.MAX_ID)
NO_ARG_ACTIONS = [render.Action.CORRECT, render.Action.WRONG, render.Action.SNEAKER, render.Action.NOT_LISTED,
                  render.Action.NOOP]
labels = st.from_regex(r"[a-z0-9][a-z0-9_]{0,63}", fullmatch=True)
# Digits in every script ("²", "١", "٣"), signs, spaces, separators: what str.isdigit and int() disagree on.
number_like = st.one_of(
    st.integers(-5, 2**64).map(str),
    st.text(st.characters(categories=["Nd", "No", "Zs"]) | st.sampled_from("0123456789+-_ :#"), max_size=25),
)
forged_callback = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, p: f"{a}:{p}", st.sampled_from(sorted(render.ACTIONS)) | st.text(max_size=3), number_like),
    st.builds(lambda a, p, arg: f"{a}:{p}:{arg}", st.sampled_from(sorted(render.ACTIONS)), number_like,
              number_like | st.text(max_size=40)),
)


@FUZZ
@given(forged_callback)
@example("c:²")
@example("c:١")
@example("p:5:²")
@example("c:5:")
@example("c:9223372036854775808")
def test_any_button_data_parses_to_none_or_to_exactly_what_it_encodes(data: str) -> None:
    parsed = render.parse(data)
    if parsed is None:
        return
    assert parsed.action in render.ACTIONS and 1 <= parsed.prediction_id <= render.MAX_ID
    assert render.encode(parsed.action, parsed.prediction_id, parsed.arg) == data
    if parsed.action == render.Action.PAGE:
        assert int(parsed.arg) >= 0  # what the feedback handler does with it
    if parsed.action == render.Action.LABEL:
        assert parsed.arg


@FUZZ
@given(st.sampled_from(NO_ARG_ACTIONS), PIDS)
def test_buttons_without_argument_round_trip(action: str, pid: int) -> None:
    assert render.parse(render.encode(action, pid)) == render.Callback(action, pid, None)


@FUZZ
@given(PIDS, st.integers(0, 10**6))
def test_page_buttons_round_trip(pid: int, page: int) -> None:
    data = render.encode(render.Action.PAGE, pid, page)
    assume(len(data.encode()) <= render.MAX_CALLBACK_BYTES)
    assert render.parse(data) == render.Callback(render.Action.PAGE, pid, str(page))


@FUZZ
@given(PIDS, st.lists(labels, min_size=1, max_size=20, unique=True), st.data())
def test_real_keyboards_parse_back_to_what_they_mean(pid: int, class_labels: list[str], data: st.DataObject) -> None:
    """Every button of a real correction keyboard parses, and a label button names its label."""
    classes = sorted((ClassInfo(label, label.upper()) for label in class_labels), key=lambda c: c.label)
    page = data.draw(st.integers(0, render.page_count(classes) - 1))
    keyboard = render.correction_keyboard(pid, classes, page)
    chunk = classes[page * render.PAGE_SIZE:(page + 1) * render.PAGE_SIZE]
    picked = []
    for row in keyboard.inline_keyboard:
        for button in row:
            parsed = render.parse(button.callback_data)
            assert parsed is not None and parsed.prediction_id == pid, button.callback_data
            assert render.encode(parsed.action, parsed.prediction_id, parsed.arg) == button.callback_data
            if parsed.action == render.Action.LABEL:
                picked.append(render.resolve_label(parsed.arg, classes))
    assert picked == [c.label for c in chunk]
    change = render.change_keyboard(pid).inline_keyboard[0][0].callback_data
    assert render.parse(change) == render.Callback(render.Action.WRONG, pid, None)


@FUZZ
@given(st.lists(labels, min_size=1, max_size=5, unique=True), st.text(max_size=70))
@example(["air_jordan_1"], "../air_jordan_1")
@example(["air_jordan_1"], "air_jordan_1\x00")
def test_a_forged_label_argument_names_a_known_class_only_by_its_own_encoding(known: list[str], forged: str) -> None:
    classes = [ClassInfo(label, label) for label in known]
    resolved = render.resolve_label(forged, classes)
    assert resolved is None or (
        resolved in known and forged in (resolved, "#" + hashlib.sha1(resolved.encode()).hexdigest()[:12])
    )


forged_suggestion = st.one_of(
    st.text(max_size=60),
    st.builds(lambda verb, n: f"adm:sg:{verb}:{n}", st.text(max_size=3) | st.sampled_from(["a", "r", "", "ar", "ra"]),
              number_like),
    st.builds(lambda parts: ":".join(parts), st.lists(st.text(max_size=6), max_size=6)),
)


@FUZZ
@given(forged_suggestion)
@example("adm:sg::5")  # the substring test ``"" in "ar"`` let this through as a rejection
@example("adm:sg:ar:5")
@example("adm:sg:a:²")
@example("adm:sg:a:٣")
@example("adm:sg:a:05")
@example("adm:sg:a:" + "9" * 5000)
def test_any_suggestion_data_parses_to_none_or_to_exactly_what_it_encodes(data: str) -> None:
    parsed = render_admin.parse_suggestion_data(data)
    if parsed is None:
        return
    accept, suggestion_id = parsed
    assert isinstance(accept, bool) and 1 <= suggestion_id <= 2**63 - 1
    assert data == f"{render_admin.SUGGESTION_PREFIX}:{'a' if accept else 'r'}:{suggestion_id}"


@FUZZ
@given(st.integers(1, 2**63 - 1))
def test_suggestion_buttons_round_trip(suggestion_id: int) -> None:
    keyboard = render_admin.suggestion_keyboard(suggestion_id)
    accept, reject = keyboard.inline_keyboard[0]
    assert render_admin.parse_suggestion_data(accept.callback_data) == (True, suggestion_id)
    assert render_admin.parse_suggestion_data(reject.callback_data) == (False, suggestion_id)


def test_known_suggestion_forgeries_are_refused() -> None:
    for data in ("adm:sg::5", "adm:sg:ar:5", "adm:sg:ra:5", "adm:sg:a:", "adm:sg:a:05", "adm:sg:a:²", "adm:sg:a:-1",
                 "adm:sg:a:5:x", "adm:sg:x:5", "adm:sgx:a:5", None, ""):
        assert render_admin.parse_suggestion_data(data) is None, data


# --- admin command arguments ----------------------------------------------------------
command_text = st.one_of(
    st.text(max_size=120),
    st.builds(lambda words: " ".join(words),
              st.lists(st.one_of(labels, number_like, st.text(max_size=12),
                                 st.sampled_from(["../x", "_review", "/etc"])),
                       max_size=4)),
)


def _words(text: str) -> list[str]:
    """The arguments as python-telegram-bot hands them to a command (``context.args``)."""
    return text.split()


def _service() -> AdminService:
    # request_scrape needs no database: it validates, then hands the job to ``enqueue`` (patched here).
    return AdminService(None, None, admin_ids=frozenset({1}), retrain_min_corrections=1)  # type: ignore[arg-type]


@FUZZ
@given(command_text)
@example("air_jordan_1 ²")
@example("air_jordan_1 ١٢")
@example("air_jordan_1 99999999999999999999999")
@example("_review 5")
@example("../../etc 5")
def test_scrape_arguments_give_a_usage_reply_an_admin_error_or_a_valid_request(text: str) -> None:
    queued: list[dict] = []
    with mock.patch.object(admin_service, "enqueue", lambda _engine, _func, **kw: queued.append(kw)):
        try:
            label, count = parse_scrape_args(_words(text))
            _service().request_scrape(label, count, chat_id=1)
        except UsageError as exc:
            assert str(exc).startswith("Usage: /scrape")
            return
        except AdminError as exc:
            assert str(exc)
            return
    assert len(queued) == 1
    assert LABEL_FULL.fullmatch(queued[0]["label"]) and 1 <= queued[0]["max_items"] <= MAX_SCRAPE


def test_scrape_count_defaults() -> None:
    assert parse_scrape_args(["air_jordan_1"]) == ("air_jordan_1", DEFAULT_SCRAPE)
    assert parse_scrape_args(["air_jordan_1", "7"]) == ("air_jordan_1", 7)


@FUZZ
@given(command_text)
@example("²")
@example("٣")
@example("9" * 4000)
def test_rollback_arguments_give_a_usage_reply_or_a_version(text: str) -> None:
    try:
        version = parse_rollback_args(_words(text))
    except UsageError as exc:
        assert str(exc) == "Usage: /rollback <version>"
        return
    assert 0 <= version < 2**63 and str(version) == text.strip().lstrip("0").rjust(1, "0")


@FUZZ
@given(command_text)
def test_addclass_arguments_give_a_usage_reply_a_bad_label_or_a_valid_class(text: str) -> None:
    try:
        label, name = parse_addclass_args(_words(text))
        check_label(label)
    except UsageError as exc:
        assert str(exc).startswith("Usage: /addclass")
        return
    except BadLabel:
        return
    assert LABEL_FULL.fullmatch(label) and name.strip()


@FUZZ
@given(st.text(max_size=250))
@example("../../etc/passwd")
@example("\u202eAir Max 90")
@example("\x00")
@example("İstanbul")
def test_a_suggested_name_becomes_a_safe_label_or_bad_label(text: str) -> None:
    """What "accept" does with a "Not listed" name: a label both label rules accept, or ``BadLabel``."""
    try:
        label = label_from_text(text)
    except BadLabel:
        return
    assert re.fullmatch(r"[a-z0-9][a-z0-9_]{0,63}", label)
    assert check_label(label) == label and is_valid_label(label)


# --- decompression bombs at every place an image is opened --------------------------------------
BOMB_SIDE = 30_000  # 900 million pixels, 2.7 GB as RGB: over Pillow's own hard limit (2 x 89.5 M)
OVER_CAP_SIDE = 7_000  # 49 million: under Pillow's limit, over the app's 40 M (``max_image_pixels``)


def bomb(kind: str, side: int) -> bytes:
    return png_declaring(side, side, mode=0) if kind == "png" else jpeg_declaring(side, side)


@pytest.fixture
def loads() -> list[tuple[int, int]]:
    """The sizes of the images whose pixels Pillow decoded (``ImageFile.load``) during the test."""
    from PIL import ImageFile

    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self):
        seen.append(self.size)
        return original(self)

    with mock.patch.object(ImageFile.ImageFile, "load", spy):
        yield seen


def _ml_bytes(data: bytes, _tmp: object) -> object:
    return open_image(data)


def _ml_path(data: bytes, tmp: object) -> object:
    path = tmp / "bomb.img"  # type: ignore[operator]
    path.write_bytes(data)
    return open_image(path)


def _bot_decoder(data: bytes, _tmp: object) -> object:
    return PhotoDecoder()(data, 224)


def _scraper_decode(data: bytes, _tmp: object) -> object:
    return decode_image(data, min_side=64)


def _scraper_clean(data: bytes, _tmp: object) -> object:
    from scraper.images import clean_image

    return clean_image(data, min_side=64)


ENTRY_POINTS = {
    "ml.images.open_image(bytes)": (_ml_bytes, BadImage),
    "ml.images.open_image(path)": (_ml_path, BadImage),
    "bot PhotoDecoder": (_bot_decoder, BadImage),
    "scraper.images.decode_image": (_scraper_decode, ImageError),
    "scraper.images.clean_image": (_scraper_clean, ImageError),
}


@pytest.mark.parametrize("side", [BOMB_SIDE, OVER_CAP_SIDE])
@pytest.mark.parametrize("kind", ["png", "jpeg"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_the_app_decoders_refuse_a_bomb_without_decoding_it(entry: str, kind: str, side: int, loads: list,
                                                             tmp_path: object) -> None:
    from ml.errors import ImageTooLarge
    from scraper.errors import ImageTooManyPixels

    decode, errors = ENTRY_POINTS[entry]
    with pytest.raises(errors) as refused:
        decode(bomb(kind, side), tmp_path)
    assert isinstance(refused.value, (ImageTooLarge, ImageTooManyPixels)), repr(refused.value)
    assert loads == []  # refused from the header: no pixel was allocated or decoded


def test_the_playground_refuses_a_bomb_without_decoding_it(loads: list) -> None:
    """The local Bot API's photo upload relies on Pillow's own limit (see the report for the 89-179 M window)."""
    from bot.playground.state import BotApiError
    from bot.playground.userapi import photo_sizes

    for kind in ("png", "jpeg"):
        with pytest.raises(BotApiError, match="IMAGE_PROCESS_FAILED"):
            photo_sizes(bomb(kind, BOMB_SIDE))
    assert loads == []


def test_the_plots_refuse_a_bomb_without_decoding_it(loads: list, tmp_path: object) -> None:
    """``ml.plots.plot_examples`` opens dataset photos by path; Pillow's hard limit stops a bomb there."""
    pytest.importorskip("matplotlib")
    from ml.plots import plot_examples

    path = tmp_path / "bomb.png"  # type: ignore[operator]
    path.write_bytes(bomb("png", BOMB_SIDE))
    out = tmp_path / "plot.png"  # type: ignore[operator]
    with pytest.raises(Image.DecompressionBombError):
        plot_examples([str(path)], ["a"], ["a"], [0.9], out)
    assert loads == [] and not out.exists()


def test_pillows_own_limit_is_not_switched_off() -> None:
    """Every ``Image.open`` without an explicit check relies on it (``None`` would disable it)."""
    import importlib

    for module in ("bot.playground.userapi", "ml.plots", "scraper.images", "ml.images", "bot.services.decoding"):
        importlib.import_module(module)  # importing the app's image modules must not change it
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 89_478_485


# --- the bot token never reaches a log line ---------------------------------------------------
tokens = st.builds(lambda bot_id, secret: f"{bot_id}:{secret}", st.integers(10_000, 10**10),
                   st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                           min_size=30, max_size=46))


def _log_through_filter(redactor: logging.Filter, message: str, *args: object, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    logger = logging.getLogger("sneakerbot.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error(message, *args, exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def _raised(text: str) -> BaseException:
    try:
        try:
            raise ConnectionError(f"cannot connect: {text}")
        except ConnectionError as inner:
            raise RuntimeError(f"polling failed for {text}") from inner
    except RuntimeError as exc:
        return exc


@FUZZ
@given(tokens, st.text(max_size=40), st.text(max_size=40), st.booleans())
@example("123456789:AAHfake-token_with_35_characters_xx", "", "", False)
def test_no_token_survives_the_filter(token: str, before: str, after: str, configured: bool) -> None:
    from bot.logging_setup import TokenRedactingFilter

    redactor = TokenRedactingFilter([token] if configured else [])
    url = f"https://api.telegram.org/bot{token}/getUpdates"
    # Without the configured token only the patterns apply: the token must stand apart from its neighbours.
    left, right = (before, after) if configured else (before.rstrip("0123456789") + " ", " " + after)
    outputs = [
        _log_through_filter(redactor, "HTTP Request: POST %s \"HTTP/1.1 200 OK\"", url),
        _log_through_filter(redactor, f"{left}{token}{right}"),
        _log_through_filter(redactor, "%s%s%s", left, token, right),
        _log_through_filter(redactor, "update failed", exc=_raised(url)),
        _log_through_filter(redactor, "%s failed", url, exc=_raised(f"{left}{token}{right}")),
    ]
    secret = token.split(":", 1)[1]
    for output in outputs:
        assert token not in output and (secret not in output or secret in before + after), output
    assert "bot<redacted>/getUpdates" in outputs[0] and "RuntimeError" in outputs[3] and "ConnectionError" in outputs[3]


def test_records_without_a_token_are_left_alone() -> None:
    from bot.logging_setup import TokenRedactingFilter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "stored %s at %s", ("abc", "12:30"), None)
    assert TokenRedactingFilter(["123456789:AAHfake-token_with_35_characters_xx"]).filter(record)
    assert record.msg == "stored %s at %s" and record.args == ("abc", "12:30")


REDACTION_SCRIPT = r'''
import logging, sys, types
import httpx
import telegram.error
import bot.cli as cli

def run(args, settings):
    token = settings.telegram_bot_token.get_secret_value()
    url = f"https://api.telegram.org/bot{token}/getUpdates"
    logging.getLogger("httpx").warning('HTTP Request: POST %s "HTTP/1.1 409 Conflict"', url)
    logging.getLogger("bot.app").info("starting with token %s", token)
    logging.getLogger("bot.app").info("another bot: https://api.telegram.org/bot987654321:ZZother-secret_0123456789abcdefghij/getMe")
    try:
        try:
            raise httpx.ConnectError(f"All connection attempts failed for {url}", request=httpx.Request("POST", url))
        except httpx.ConnectError as exc:
            raise telegram.error.NetworkError(f"httpx.ConnectError: {exc} ({url})") from exc
    except telegram.error.NetworkError as exc:
        logging.getLogger("telegram.ext.Updater").error("Exception happened while polling for updates.", exc_info=exc)
    try:
        raise RuntimeError(f"Unauthorized: {token} was rejected")
    except RuntimeError:
        logging.getLogger("bot.handlers.fallback").exception("error while handling an update")
    print("done", file=sys.stderr)
    return 0

command = types.ModuleType("logdemo")
command.register = lambda sub: sub.add_parser("logdemo").set_defaults(func=run)
cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, command)
sys.exit(cli.main(["logdemo"]))
'''


def test_the_app_logging_never_writes_the_token(tmp_path: object) -> None:
    """``sneakerbot`` configures logging in ``bot.cli.main``: run it with a command that logs the token."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    token = "7012345678:AAH3fake_Token-for-the-redaction-test1"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SNEAKERBOT_", "TELEGRAM_"))}
    env.update(TELEGRAM_BOT_TOKEN=token, SNEAKERBOT_DATA_DIR=str(tmp_path),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", REDACTION_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "done" in result.stderr, output
    secret = token.split(":", 1)[1]
    assert token not in output and secret not in output, output
    assert "ZZother-secret" not in output, output
    assert output.count("bot<redacted>/getUpdates") >= 3, output  # the httpx line and both exception texts
    assert "starting with token <redacted>" in output and "Unauthorized: <redacted> was rejected" in output
    assert "Traceback" in output and "NetworkError" in output and "ConnectError" in output
