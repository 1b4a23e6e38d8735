"""The model registry: numbered model versions, safe promotion, rollback, hot reload.

Every trained model becomes a numbered version: its directory is copied to
``<models_path>/<version>/`` (atomically: a bot never sees half a model) and a
``model_versions`` row records its metrics, data snapshot, config and status.
A candidate is promoted only if it knows every class of the current model, loses no more
than ``class_tolerance`` of top-1 on any of them and is not worse overall (``tolerance``),
all on the same fixed held-out test images; otherwise it is kept as ``rejected`` with the
reason. Classes the candidate adds are measured on their own test photos and reported.

The row with ``is_current`` is the model every bot answers with. Bot processes poll
``current_version()`` (one indexed query) every few seconds and swap their
Predictor when it changes (``bot.learning_loop.LearningLoop``), so a promotion or a
rollback made by a worker in another process, or on another machine sharing the database
and the models path, reaches them without a restart.

Statuses: ``candidate`` (just registered), ``promoted`` (is or was current),
``rejected`` (lost the comparison, with ``reason``), ``retired`` (was current,
replaced by a newer promotion), ``failed`` (its run stopped before the gate decided: an
error, a full disk, a killed worker; its files are removed and it can never be served).

Crashes and a full disk: a version's files are written under a hidden staging name and
renamed, then its row is committed, so a numbered directory is always complete and a row
always finds its files. A failed copy removes its staging directory (``StorageFull`` when
the disk is full). What a killed worker leaves (hidden ``.incoming-*`` and ``.work/``
entries, ``candidate`` rows) is cleared when the worker starts again
(``sweep_unfinished``, ``fail_unfinished``); version numbers are never reused.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.settings import Settings
from bot.store.models import ModelVersion, utcnow
from bot.store.repositories import ModelVersionRepository
from ml import model_json  # model.json's one owner (no torch)
from ml.errors import ModelDirError

log = logging.getLogger(__name__)

MODEL_FILE = model_json.MODEL_JSON


class RegistryError(Exception):
    """Base of the registry's errors."""


class UnknownVersion(RegistryError):
    """No model version with that number."""


class BadModelDir(RegistryError):
    """A directory that is not a model directory (no readable model.json)."""


class StorageFull(RegistryError):
    """The disk holding the models path is full; nothing half-copied was kept."""


class NeverServed(RegistryError):
    """A version that never passed the promotion gate (``candidate``, ``failed``) cannot be made current."""


#: Errors of a write that found no room: a full disk, or a quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
WORK_DIR, STAGING_PREFIX = ".work", ".incoming-"
NEVER_SERVED = ("candidate", "failed")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, says the disk (or a quota) is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        text = str(exc)
        if "No space left on device" in text or "database or disk is full" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class HeldOutImage:
    """One image of the fixed held-out test set; ``path`` is None for a photo a model carries only as features."""

    path: Path | None
    label: str
    sha1: str


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on a list of test images."""

    top1: float
    top3: float
    n: int
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    hits: dict[str, tuple[str, bool]] = field(default_factory=dict)  # sha1 -> (label, top-1 right)

    def as_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top3": self.top3, "n": self.n, "per_label": self.per_label}

    def restricted(self, labels: set[str]) -> EvalResult:
        """The same figures over the photos of ``labels`` only (from ``per_label``)."""
        rows = {label: row for label, row in self.per_label.items() if label in labels}
        n = sum(int(row["n"]) for row in rows.values())  # a count, in a row of floats
        top1 = sum(row["recall"] * row["n"] for row in rows.values()) / n if n else 0.0
        top3 = sum(row.get("top3", row["recall"]) * row["n"] for row in rows.values()) / n if n else 0.0
        hits = {sha: hit for sha, hit in self.hits.items() if hit[0] in labels}
        return EvalResult(top1, top3, n, rows, hits)


#: Scores a model directory on test images; the default runs the ONNX Predictor.
Evaluator = Callable[[Path, Sequence[HeldOutImage]], EvalResult]


@dataclass(frozen=True)
class VersionInfo:
    """A registry row as plain values, safe to hand to other threads."""

    version: int
    path: Path
    status: str
    is_current: bool
    backbone: str
    metrics: dict
    config: dict
    data_snapshot: dict
    reason: str | None
    created_at: Any
    promoted_at: Any


@dataclass(frozen=True)
class Decision:
    """The outcome of comparing a candidate with the current model.

    ``candidate`` and ``current`` are measured on the same photos: those of the current
    model's classes. ``new_classes`` holds the candidate's figures on the classes it adds.
    """

    version: int
    promoted: bool
    reason: str
    candidate: EvalResult
    current: EvalResult | None
    current_version: int | None
    new_classes: EvalResult | None = None


def read_model_json(model_dir: Path) -> dict:
    """The parsed ``model.json`` of a model directory (``ml.model_json.read_model_json``), or ``BadModelDir``."""
    try:
        return model_json.read_model_json(model_dir)
    except (ModelDirError, OSError, ValueError) as exc:
        raise BadModelDir(f"{model_dir} is not a model directory: {exc}") from exc


def model_labels(model_dir: Path) -> list[str]:
    """The class labels a model directory knows, from its model.json."""
    return model_json.labels_of(read_model_json(model_dir))


backbone_name = model_json.backbone_name  # the backbone name in a parsed model.json


class VersionTaken(RuntimeError):
    """Another process made the same version number first (replicas installing the starter together)."""


def registry_for(settings: Settings, sessions: sessionmaker[Session]) -> ModelRegistry:
    """The model registry as the settings configure it (the one way the bot and the worker build it)."""
    return ModelRegistry(sessions, settings.models_path, tolerance=settings.promotion_tolerance,
                         class_tolerance=settings.promotion_class_tolerance,
                         new_class_tolerance=settings.promotion_new_class_tolerance)


class ModelRegistry:
    """Model versions in the database, their files under ``models_path``."""

    def __init__(
        self, sessions: sessionmaker[Session], models_path: Path, *, tolerance: float = 0.0,
        class_tolerance: float = 0.05, new_class_tolerance: float = 0.01,
    ) -> None:
        self._sessions = sessions
        self.models_path = Path(models_path)
        self.tolerance = tolerance
        self.class_tolerance = class_tolerance
        self.new_class_tolerance = new_class_tolerance

    # --- reading ------------------------------------------------------------
    def current_version(self) -> int | None:
        """The version every bot should answer with; cheap enough to poll every few seconds."""
        with self._sessions() as session:
            return ModelVersionRepository(session).current_version()

    def current(self) -> VersionInfo | None:
        """The current version's row, or None when the registry is empty."""
        with self._sessions() as session:
            row = ModelVersionRepository(session).current()
            return self._info(row) if row else None

    def get(self, version: int) -> VersionInfo:
        """One version's row, or ``UnknownVersion``."""
        with self._sessions() as session:
            row = ModelVersionRepository(session).get(version)
            if row is None:
                raise UnknownVersion(f"no model version {version}")
            return self._info(row)

    def versions(self) -> list[VersionInfo]:
        """All versions, newest first."""
        with self._sessions() as session:
            return [self._info(row) for row in ModelVersionRepository(session).newest_first()]

    def resolve(self, stored_path: str) -> Path:
        """A stored path made absolute (relative paths are under ``models_path``)."""
        path = Path(stored_path)
        return path if path.is_absolute() else self.models_path / path

    # --- writing ------------------------------------------------------------
    def install_starter(self, starter_dir: Path) -> VersionInfo | None:
        """Install the starter model (version 1 in an empty registry) when no version is current; else do nothing.

        It is committed as the current version at once, never as a candidate. Raises ``BadModelDir`` when
        ``starter_dir`` holds no model.
        """
        if self.current_version() is not None:
            return None  # a registry whose only rows never served (``failed``) still gets its starter
        try:
            info = self.register(starter_dir, data_snapshot={}, config={"source": "starter"},
                                 promote_reason="starter model")
        except (IntegrityError, VersionTaken):  # another process installed it at the same moment
            return None
        log.info("installed the starter model from %s as version %d", starter_dir, info.version)
        return info

    def register(self, model_dir: Path, *, data_snapshot: dict, config: dict | None = None,
                 promote_reason: str | None = None) -> VersionInfo:
        """Copy ``model_dir`` into the registry as a new ``candidate`` version.

        The files go in first (complete, or not at all: ``StorageFull`` on a full disk), then
        the row is committed, so a row always finds its files. With ``promote_reason`` the row
        is committed as the current, promoted version in the same transaction (the starter
        model: no moment where it is a candidate).
        """
        meta = read_model_json(model_dir)
        version = self._next_version()
        target = self._copy_in(Path(model_dir), version)
        with self._sessions.begin() as session:
            rows = ModelVersionRepository(session)
            if promote_reason is not None:
                rows.retire_current(keep=version)
            rows.add(
                ModelVersion(
                    version=version,
                    path=str(version),
                    status="candidate" if promote_reason is None else "promoted",
                    is_current=promote_reason is not None,
                    backbone=backbone_name(meta),
                    metrics={"model": meta.get("metrics", {})},
                    config={**(config or {}), "model": meta.get("config", {})},
                    data_snapshot=data_snapshot,
                    reason=promote_reason,
                    promoted_at=utcnow() if promote_reason is not None else None,
                )
            )
        log.info("registered model version %d at %s", version, target)
        return self.get(version)

    def decide(self, version: int, test_set: Sequence[HeldOutImage], evaluate: Evaluator) -> Decision:
        """Evaluate the candidate and the current model on the same test images; promote or reject.

        The gate, in order: the candidate must know every class of the current model; on the
        test photos of those classes it may lose at most ``class_tolerance`` of top-1 on any one
        class unless chance explains the loss (``class_losses``), and at most ``tolerance``
        overall, or ``new_class_tolerance`` when it adds classes (a photo of an old class has
        one more wrong answer to fall for: adding one starter class back costs the others
        0.7 points, ``bench.addclass``). The test photos of classes the candidate adds are
        measured and reported, never held against the current model.
        """
        candidate = self.get(version)
        if candidate.status != "candidate":
            raise RegistryError(f"version {version} is {candidate.status}, not a candidate: nothing to decide")
        current = self.current()
        if current is None:
            result = evaluate(candidate.path, test_set)
            self._record_eval(version, result, None, None)
            self._set_current(version, status="promoted", reason="no current model")
            return Decision(version, True, "no current model", result, None, None)
        known = model_labels(current.path)
        offered = set(model_labels(candidate.path))
        dropped = [label for label in known if label not in offered]
        common = [image for image in test_set if image.label in set(known)]
        added = [image for image in test_set if image.label in offered - set(known)]
        if dropped or not common:
            reason = (f"it does not know {', '.join(dropped)} any more: a new model never forgets a class"
                      if dropped else "no test images for the current model's classes: cannot compare")
            return self._refuse(version, current.version, reason)
        everything = evaluate(candidate.path, [*common, *added])
        cand_result, new_result = everything.restricted(set(known)), everything.restricted(offered - set(known))
        cur_result = evaluate(current.path, common)
        self._record_eval(version, cand_result, cur_result, current.version, new_result)
        tolerance = max(self.tolerance, self.new_class_tolerance) if offered - set(known) else self.tolerance
        promoted, reason = self._verdict(cand_result, cur_result, current.version, len(common), tolerance)
        if promoted:
            self._set_current(version, status="promoted", reason=reason)
        else:
            self._reject(version, reason)
        log.info("model version %d %s: %s", version, "promoted" if promoted else "rejected", reason)
        return Decision(version, promoted, reason, cand_result, cur_result, current.version,
                        new_result if new_result.n else None)

    def _verdict(self, candidate: EvalResult, current: EvalResult, current_version: int,
                 n: int, tolerance: float) -> tuple[bool, str]:
        """(promoted, why): rejected for a class that lost too much or for the overall top-1."""
        losses = class_losses(candidate, current, self.class_tolerance)
        if losses:
            return False, "it loses too much on " + "; ".join(losses) + " (same test photos as the current model)"
        promoted = candidate.top1 >= current.top1 - tolerance - 1e-9
        verb = "not worse than" if promoted else "worse than"
        return promoted, (f"top-1 {candidate.top1:.3f} vs {current.top1:.3f} of version {current_version} "
                          f"on the same {n} test images: {verb} the current model")

    def _refuse(self, version: int, current_version: int, reason: str) -> Decision:
        empty = EvalResult(0.0, 0.0, 0)
        self._record_eval(version, empty, None, current_version)
        self._reject(version, reason)
        log.info("model version %d rejected: %s", version, reason)
        return Decision(version, False, reason, empty, None, current_version)

    def rollback(self, version: int) -> VersionInfo:
        """Make ``version`` current again (any version whose files are still there)."""
        info = self.get(version)
        if info.status in NEVER_SERVED:
            raise NeverServed(f"version {version} never passed the promotion gate ({info.status}"
                              f"{': ' + info.reason if info.reason else ''}): it cannot be served")
        if not (info.path / MODEL_FILE).is_file():
            raise BadModelDir(f"the files of version {version} are gone: {info.path}")
        self._set_current(version, status="promoted", reason=f"rollback to version {version}")
        log.warning("rolled back to model version %d", version)
        return self.get(version)

    # --- failures and crashes -----------------------------------------------
    def fail(self, version: int, reason: str) -> None:
        """A candidate whose run stopped before the gate decided: ``failed``, its files removed.

        It never becomes current (``rollback`` refuses it) and its number is not reused.
        """
        with self._sessions.begin() as session:
            row = ModelVersionRepository(session).get(version)
            if row is None or row.status != "candidate":
                return
            row.status, row.reason = "failed", reason[:2000]
            path = self.resolve(row.path)
        _remove_tree(path)
        log.warning("model version %d failed: %s", version, reason)

    def fail_unfinished(self, reason: str) -> list[int]:
        """Mark every ``candidate`` row ``failed`` (a stopped worker's); returns their versions.

        Only when no retrain runs: the worker calls it when it starts (one worker per
        database and models path, as ``close_interrupted_runs`` assumes too).
        """
        with self._sessions() as session:
            versions = ModelVersionRepository(session).versions_with_status("candidate")
        for version in versions:
            self.fail(version, reason)
        return versions

    def sweep_unfinished(self) -> list[Path]:
        """Remove what a stopped worker half-made: ``.work/*`` and ``.incoming-*``; returns what was removed.

        Readers never look at these hidden names; they only take room. The staging dirs are
        left alone while no version is current: a bot installing the starter model may be
        copying it in right now.
        """
        removed = []
        work = self.models_path / WORK_DIR
        entries = sorted(work.iterdir()) if work.is_dir() else []
        if self.current_version() is not None and self.models_path.is_dir():
            entries += sorted(self.models_path.glob(f"{STAGING_PREFIX}*"))
        for entry in entries:
            _remove_tree(entry)
            removed.append(entry)
        if removed:
            log.warning("removed what a stopped worker left half-made: %s", ", ".join(str(p) for p in removed))
        return removed

    # --- internals ----------------------------------------------------------
    def _next_version(self) -> int:
        with self._sessions() as session:
            highest = ModelVersionRepository(session).highest_version()
        on_disk = [int(p.name) for p in self.models_path.glob("[0-9]*") if p.name.isdigit()]
        return max([highest, *on_disk]) + 1

    def _copy_in(self, source: Path, version: int) -> Path:
        """Copy to a hidden temp dir, then rename: readers see all of a model or none.

        On any failure the staging dir is removed; a full disk raises ``StorageFull``.
        """
        self.models_path.mkdir(parents=True, exist_ok=True)
        target = self.models_path / str(version)
        # Its own staging dir: replicas starting together may all install the starter as version 1.
        staging = self.models_path / f"{STAGING_PREFIX}{version}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            _copy_tree(source, staging)
            if target.exists():
                raise VersionTaken(f"version {version} was made by another process meanwhile")
            staging.rename(target)  # fails when another process renamed its copy there first
        except BaseException as exc:
            _remove_tree(staging)
            if isinstance(exc, OSError) and target.exists():
                raise VersionTaken(f"version {version} was made by another process meanwhile") from exc
            if is_disk_full(exc):
                raise StorageFull(
                    f"the disk is full: no room in {self.models_path} to copy in version {version} "
                    f"({_tree_size(source) / 1e6:.1f} MB); the partial copy was removed ({exc})") from exc
            raise
        _fsync_dir(self.models_path)
        return target

    def _set_current(self, version: int, *, status: str, reason: str) -> None:
        with self._sessions.begin() as session:
            rows = ModelVersionRepository(session)
            rows.retire_current(keep=version)
            row = _version_row(rows, version)
            row.is_current = True
            row.status = status
            row.reason = reason
            row.promoted_at = utcnow()

    def _reject(self, version: int, reason: str) -> None:
        with self._sessions.begin() as session:
            row = _version_row(ModelVersionRepository(session), version)
            row.status = "rejected"
            row.reason = reason

    def _record_eval(
        self, version: int, candidate: EvalResult, current: EvalResult | None, against: int | None,
        new_classes: EvalResult | None = None,
    ) -> None:
        with self._sessions.begin() as session:
            row = _version_row(ModelVersionRepository(session), version)
            row.metrics = {
                **(row.metrics or {}),
                "test": candidate.as_dict(),
                "current_test": current.as_dict() if current else None,
                "new_classes_test": new_classes.as_dict() if new_classes and new_classes.n else None,
                "compared_with": against,
            }

    def _info(self, row: ModelVersion) -> VersionInfo:
        return VersionInfo(
            version=row.version,
            path=self.resolve(row.path),
            status=row.status,
            is_current=row.is_current,
            backbone=row.backbone,
            metrics=dict(row.metrics or {}),
            config=dict(row.config or {}),
            data_snapshot=dict(row.data_snapshot or {}),
            reason=row.reason,
            created_at=row.created_at,
            promoted_at=row.promoted_at,
        )


def _version_row(rows: ModelVersionRepository, version: int) -> ModelVersion:
    """The row of a version this registry recorded, or ``UnknownVersion``."""
    row = rows.get(version)
    if row is None:
        raise UnknownVersion(f"no model version {version}")
    return row


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a directory's files (with their times) and make them durable before the rename."""
    for dirpath, _dirnames, filenames in os.walk(source):
        folder = target / Path(dirpath).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            copied = shutil.copy2(Path(dirpath) / name, folder / name)
            with open(copied, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Remove a directory (or file) if it is there; removing never needs free space."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


SIGNIFICANCE = 0.05


def class_losses(candidate: EvalResult, current: EvalResult, tolerance: float) -> list[str]:
    """The classes on which the candidate lost more than ``tolerance`` of top-1, by more than chance.

    "By more than chance": on the same photos, the ones the candidate gets wrong that the
    current model got right (lost) against the reverse (gained); a sign test (exact,
    one-sided) must put the loss under ``SIGNIFICANCE``. Why: a class has 20-60 test photos,
    so 2-3 photos are 5-10 points, and a model that adds a class one of them was confused
    with may move a few photos each way. Without per-photo results, more than one photo's
    worth of loss counts.
    """
    losses = []
    for label, before in sorted(current.per_label.items()):
        after = candidate.per_label.get(label, {"recall": 0.0, "n": before["n"]})
        if before["recall"] - after["recall"] <= tolerance + 1e-9:
            continue
        lost, gained = _discordant(candidate, current, label)
        if lost is None:
            if before["recall"] - after["recall"] <= 1.0 / max(before["n"], 1) + 1e-9:
                continue
        elif sign_test(lost, gained) >= SIGNIFICANCE:
            continue
        detail = "" if lost is None else f", {lost} lost and {gained} gained"
        losses.append(f"{label} {100 * before['recall']:.0f}% → {100 * after['recall']:.0f}% "
                      f"on its {before['n']} test photos{detail}")
    return losses


def _discordant(candidate: EvalResult, current: EvalResult, label: str) -> tuple[int | None, int]:
    """(photos of ``label`` right before and wrong now, the reverse); (None, 0) without per-photo results."""
    shas = [sha for sha, (lab, _) in current.hits.items() if lab == label]
    if not shas or any(sha not in candidate.hits for sha in shas):
        return None, 0
    lost = sum(current.hits[s][1] and not candidate.hits[s][1] for s in shas)
    gained = sum(candidate.hits[s][1] and not current.hits[s][1] for s in shas)
    return lost, gained


def sign_test(lost: int, gained: int) -> float:
    """P(at least ``lost`` of the ``lost + gained`` changed photos went the bad way, if each way were a coin flip)."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if n else 1.0


def scores_result(images: Sequence[HeldOutImage], ranked: Sequence[Sequence[str]]) -> EvalResult:
    """Top-1, top-3, per-label recall (and top-3) and per-photo hits from each photo's ranked guesses."""
    per_label: dict[str, list[int]] = {}
    hits: dict[str, tuple[str, bool]] = {}
    for image, guesses in zip(images, ranked, strict=True):
        row = per_label.setdefault(image.label, [0, 0, 0])
        right = bool(guesses) and guesses[0] == image.label
        row[0] += right
        row[1] += image.label in list(guesses)[:3]
        row[2] += 1
        hits[image.sha1] = (image.label, right)
    n = len(images)
    return EvalResult(
        top1=sum(r[0] for r in per_label.values()) / n if n else 0.0,
        top3=sum(r[1] for r in per_label.values()) / n if n else 0.0,
        n=n,
        per_label={label: {"recall": h1 / t, "top3": h3 / t, "n": t} for label, (h1, h3, t) in per_label.items()},
        hits=hits,
    )


def features_evaluator(cache_dir: Path) -> Evaluator:
    """Scores a model on held-out photos from the features it carries (or the files, through the cache).

    Why not the ONNX Predictor: a head retrain keeps the backbone, so the features of the
    carried test photos are exactly what the served graph computes; and a deployment has
    only those features, not the photos.
    """

    def evaluate(model_dir: Path, images: Sequence[HeldOutImage]) -> EvalResult:
        import numpy as np
        import pandas as pd

        from ml.retrain import score_rows

        rows = pd.DataFrame({"sha1": [i.sha1 for i in images], "label": [i.label for i in images],
                             "path": [str(i.path) if i.path else "" for i in images]})
        probs, classes = score_rows(model_dir, rows, cache_dir)
        ranked = [[classes[j] for j in order] for order in np.argsort(-probs, axis=1)[:, :3]]
        return scores_result(images, ranked)

    return evaluate


def _file_of(image: HeldOutImage) -> Path:
    """The image's file; a photo carried only as features cannot be decoded (``features_evaluator`` scores those)."""
    if image.path is None:
        raise TypeError(f"held-out image {image.sha1} has no file, only features: the predictor cannot score it")
    return image.path


def predictor_evaluator(model_dir: Path, images: Sequence[HeldOutImage]) -> EvalResult:
    """Score a model directory with the ONNX Predictor: top-1, top-3, recall per label."""
    from ml.images import open_image  # heavy imports stay out of the bot's import path
    from ml.predictor import Predictor

    predictor = Predictor.load(model_dir)
    ranked: list[list[str]] = []
    for start in range(0, len(images), 32):
        batch = images[start : start + 32]
        predictions = predictor.predict([open_image(_file_of(image)) for image in batch], k=3)
        ranked += [[guess.label for guess in prediction.top] for prediction in predictions]
    return scores_result(images, ranked)
