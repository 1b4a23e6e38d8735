"""No label, class name or suggested name can put a file outside the images directory.

Labels become paths in three places, each exercised here through its real function:

- the scraper pipeline: ``<images_dir>/<label>/<sha1>.jpg`` and ``<images_dir>/_review/<label>/...``
  (``scraper.pipeline.Pipeline.run``, label checked by ``scraper.catalogue.is_valid_label``), and
  the database sink that records those paths (``bot.store.image_sink.DbImageSink``);
- user feedback: ``<data_dir>/images/<label>/<sha1>.jpg`` (``bot.services.feedback.FeedbackService``),
  reached from button data (``bot.render.parse`` + ``resolve_label``): only labels the model knows;
- admin commands and accepted "Not listed" names: ``check_label`` / ``label_from_text`` in
  ``bot.services.admin``, then the class catalogue and a scrape job.

The hostile names: ``..`` and ``../x``, absolute paths, backslashes, NUL bytes, newlines, very
long names, right-to-left override and other invisible Unicode, full-width letters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from bot import render
from bot.services import admin as admin_module
from bot.services.admin import AdminError, AdminService, BadLabel, check_label, label_from_text
from bot.services.errors import UnknownLabel
from bot.services.feedback import FeedbackService
from bot.store.image_sink import DbImageSink
from bot.store.models import Base, Image, Prediction, SneakerClass, Suggestion, User
from scraper.catalogue import is_valid_label
from scraper.fetch import FetchSettings
from scraper.pipeline import REVIEW_DIR, Pipeline, ScrapeConfig
from scraper.sinks import MemorySink
from scraper.sources.base import ImageItem, SearchResult

from scraper_support import LocalServer, colour_only, encode, picture, running_server

HOSTILE_LABELS = [
    "..", ".", "../x", "../../etc/passwd", "x/../../y", "images/../../x", "/etc/passwd", "/tmp/x", "a/b",
    "a\\b", "..\\x", "C:\\x", "~", "~root", "%2e%2e%2fx", "a\x00b", "\x00", "x\x00/../../y", "a" * 65, "a" * 4096,
    "abc\u202edcba", "\u202e", "air_jordan_1\u202e", "\u2066x\u2069", "air_jordan_1\u200b", "", " ", "air jordan",
    "Air_Jordan_1", "ａｂｃ", "a\nb", "\nabc", "abc\r",
]  # not "abc\n": a trailing newline passes both rules today, see test_a_trailing_newline_is_no_label
KNOWN = ("air_jordan_1", "air_jordan_11")
SAFE_LABEL = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class ClassInfo:
    """A class as the keyboards and ``resolve_label`` see it."""

    label: str
    display_name: str


def inside(path: Path, root: Path) -> bool:
    """``path`` (resolved, symlinks followed) is ``root`` or below it."""
    return path.resolve().is_relative_to(root.resolve())


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker]:
    engine = create_engine(f"sqlite:///{tmp_path / 'paths.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


# --- the label rules ------------------------------------------------------------------
@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_hostile_labels_are_refused_by_both_label_rules(label: str) -> None:
    with pytest.raises(BadLabel):
        check_label(label)
    assert not is_valid_label(label)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=80))
@example("abc\n")
@example("_review")
def test_any_label_a_rule_accepts_is_one_folder_directly_under_the_images_dir(label: str) -> None:
    images_dir = Path("/srv/sneakerbot/var/images")
    for accepts in (_admin_accepts, is_valid_label):
        if accepts(label):
            assert "/" not in label and "\\" not in label and "\x00" not in label and label not in (".", "..")
            target = images_dir / label / "0123.jpg"
            assert target.parent.parent == images_dir and len(target.parts) == len(images_dir.parts) + 2


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=250))
@example("../../etc/passwd")
@example("/etc/passwd")
@example("\u202eAir Max 90")
@example("a" * 250)
def test_a_suggested_name_becomes_a_label_both_rules_accept_or_bad_label(text: str) -> None:
    """What accepting a "Not listed" suggestion does with the typed name."""
    try:
        label = label_from_text(text)
    except BadLabel:
        return
    assert SAFE_LABEL.fullmatch(label) and check_label(label) == label and is_valid_label(label)


@pytest.mark.parametrize("label", ["_review", "_", "__", "_x"])
def test_admin_and_scraper_agree_on_labels(label: str) -> None:
    assert _admin_accepts(label) == is_valid_label(label)


@pytest.mark.parametrize("label", ["abc\n", "air_jordan_1\n"])
def test_a_trailing_newline_is_no_label(label: str) -> None:
    assert not _admin_accepts(label) and not is_valid_label(label)


def _admin_accepts(label: str) -> bool:
    try:
        check_label(label)
    except BadLabel:
        return False
    return True


# --- the scraper: pipeline and database sink -----------------------------------------------
class StaticSource:
    """A search source that returns fixed URLs (no search engine involved)."""

    name = "static"

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls

    def search(self, query: str, max_items: int) -> SearchResult:
        return SearchResult([ImageItem(url) for url in self.urls[:max_items]])

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[LocalServer]:
    with running_server() as srv:
        srv.add("/colour.jpg", encode(picture("astronaut").resize((160, 160)), "JPEG"), "image/jpeg")
        srv.add("/grey.png", encode(picture("camera").resize((160, 160)), "PNG"), "image/png")
        yield srv


def scrape_config(images_dir: Path) -> ScrapeConfig:
    return ScrapeConfig(images_dir=images_dir, sources=("static",), concurrency=2, min_side=32,
                        fetch=FetchSettings(allow_private=True, timeout_s=5.0, retries=0, host_delay_s=0.0))


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_the_pipeline_refuses_a_hostile_label_before_searching(label: str, tmp_path: Path) -> None:
    images_dir = tmp_path / "data" / "images"
    searched: list[str] = []

    def factory(name, settings):
        searched.append(name)
        return StaticSource([])

    sink = MemorySink()
    with pytest.raises(ValueError, match="invalid label"):
        Pipeline(scrape_config(images_dir), sink, source_factory=factory).run(label, ["q"], 5)
    assert searched == [] and sink.images == [] and sink.runs == []
    assert files_under(tmp_path) == set()


def test_a_scrape_files_every_image_under_its_label_in_the_images_dir(
    image_server: LocalServer, sessions: sessionmaker, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    images_dir = data_dir / "images"
    sink = DbImageSink(sessions, data_dir=data_dir, images_dir=images_dir)
    source = StaticSource([image_server.url("/colour.jpg"), image_server.url("/grey.png")])
    report = Pipeline(scrape_config(images_dir), sink, classifier=colour_only,
                      source_factory=lambda name, settings: source).run("air_jordan_1", ["q"], 5)
    assert report.stored == 1 and report.rejected == 1, report.to_dict()
    stored = files_under(tmp_path)
    assert {p.parts[:-1] for p in stored if p.suffix == ".jpg"} == {
        ("data", "images", "air_jordan_1"), ("data", "images", REVIEW_DIR, "air_jordan_1")}
    with sessions() as session:
        paths = list(session.scalars(select(Image.path)))
    assert len(paths) == 2
    for path in paths:
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
        assert inside(data_dir / path, images_dir) and (data_dir / path).is_file()


# --- user feedback -------------------------------------------------------------------------
@pytest.fixture
def feedback(sessions: sessionmaker, tmp_path: Path) -> tuple[FeedbackService, int]:
    data_dir = tmp_path / "data"
    pending = data_dir / "pending" / "photo.jpg"
    pending.parent.mkdir(parents=True)
    pending.write_bytes(encode(picture("astronaut").resize((96, 96)), "JPEG"))
    with sessions.begin() as session:
        session.add(User(id=7))
        prediction = Prediction(user_id=7, chat_id=7, image_sha1="ab" * 20, pending_path=str(pending),
                                top=[{"label": KNOWN[0], "score": 0.9}], verdict="sneaker")
        session.add(prediction)
        session.flush()
        prediction_id = prediction.id
    service = FeedbackService(sessions, data_dir=data_dir, retention_days=7, known_label=KNOWN.__contains__,
                              admin_ids=frozenset())
    return service, prediction_id


def test_a_correction_to_a_hostile_label_is_refused_and_writes_nothing(
    feedback: tuple[FeedbackService, int], tmp_path: Path
) -> None:
    service, prediction_id = feedback
    before = files_under(tmp_path)
    classes = [ClassInfo(label, label) for label in KNOWN]
    for label in HOSTILE_LABELS:
        with pytest.raises(UnknownLabel):
            service.correct(prediction_id, 7, label)
        # The same name forged into button data: it parses (or not), but names no class.
        callback = render.parse(f"{render.Action.LABEL}:{prediction_id}:{label}")
        assert callback is None or render.resolve_label(callback.arg, classes) is None
    assert files_under(tmp_path) == before


def test_confirmed_and_corrected_photos_are_filed_inside_the_images_dir(
    feedback: tuple[FeedbackService, int], sessions: sessionmaker, tmp_path: Path
) -> None:
    service, prediction_id = feedback
    images_dir = tmp_path / "data" / "images"
    assert service.confirm(prediction_id, 7) == KNOWN[0]
    assert service.correct(prediction_id, 7, KNOWN[1]) == KNOWN[1]
    assert files_under(images_dir) == {Path(KNOWN[1], "ab" * 20 + ".jpg")}
    with sessions() as session:
        (image,) = session.scalars(select(Image))
    assert image.label == KNOWN[1] and inside(tmp_path / "data" / image.path, images_dir)


# --- admin: "Not listed" names accepted as classes, /addclass, /scrape --------------------------
def test_accepted_suggestions_become_safe_classes_or_are_refused(sessions: sessionmaker, tmp_path: Path) -> None:
    texts = ["../../etc/passwd", "/etc/passwd", "Air Max 90", "\u202eAir Max 90", "a\x00b/../c", "..", "\u202e",
             "x" * 200, "ＡＩＲ ＭＡＸ", "C:\\Windows\\x", "_review"]
    with sessions.begin() as session:
        session.add(User(id=7))
        rows = [Suggestion(user_id=7, text=text) for text in texts]
        session.add_all(rows)
        session.flush()
        ids = [row.id for row in rows]
    queued: list[dict] = []
    service = AdminService(sessions, None, admin_ids=frozenset({1}), retrain_min_corrections=1)  # type: ignore[arg-type]
    accepted, refused = [], []
    with mock.patch.object(admin_module, "enqueue", lambda _engine, _func, **kw: queued.append(kw)):
        for suggestion_id in ids:
            try:
                accepted.append(service.decide_suggestion(suggestion_id, True, chat_id=1)[1])
            except AdminError:
                refused.append(suggestion_id)
        for label in HOSTILE_LABELS:
            with pytest.raises(AdminError):
                service.add_class(label, "Some name", chat_id=1)
            with pytest.raises(AdminError):
                service.request_scrape(label, 5, chat_id=1)
    with sessions() as session:
        catalogue = set(session.scalars(select(SneakerClass.label)))
    assert catalogue == set(accepted) and {q["label"] for q in queued} == set(accepted)
    assert "etc_passwd" in accepted and "air_max_90" in accepted and refused  # "..", "\u202e" have no letters
    images_dir = tmp_path / "data" / "images"
    for label in accepted:
        assert SAFE_LABEL.fullmatch(label) and is_valid_label(label)
        assert (images_dir / label).resolve().parent == images_dir.resolve()
