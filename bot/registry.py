"""The model registry: numbered model versions, safe promotion, rollback, hot reload.

Every trained model becomes a numbered version: its directory is copied to
``<models_path>/<version>/`` (atomically: a bot never sees half a model) and a
``model_versions`` row records its metrics, data snapshot, config and status.
A candidate is promoted only if it is not worse than the current model on the same
fixed held-out test images; otherwise it is kept as ``rejected`` with the reason.

The row with ``is_current`` is the model every bot answers with. Bot processes poll
``current_version()`` (one indexed query) every few seconds and swap their
Predictor when it changes (``ModelWatcher``), so a promotion or a rollback made by a
worker in another process, or on another machine sharing the database and the
models path, reaches them without a restart.

Statuses: ``candidate`` (just registered), ``promoted`` (is or was current),
``rejected`` (lost the comparison, with ``reason``), ``retired`` (was current,
replaced by a newer promotion).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.store.models import ModelVersion, utcnow

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"


class RegistryError(Exception):
    """Base of the registry's errors."""


class UnknownVersion(RegistryError):
    """No model version with that number."""


class BadModelDir(RegistryError):
    """A directory that is not a model directory (no readable model.json)."""


@dataclass(frozen=True)
class HeldOutImage:
    """One image of the fixed held-out test set."""

    path: Path
    label: str
    sha1: str


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on a list of test images."""

    top1: float
    top3: float
    n: int
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top3": self.top3, "n": self.n, "per_label": self.per_label}


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
    """The outcome of comparing a candidate with the current model."""

    version: int
    promoted: bool
    reason: str
    candidate: EvalResult
    current: EvalResult | None
    current_version: int | None


def read_model_json(model_dir: Path) -> dict:
    """The parsed ``model.json`` of a model directory, or ``BadModelDir``."""
    try:
        return json.loads((Path(model_dir) / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadModelDir(f"{model_dir} is not a model directory: {exc}") from exc


def model_labels(model_dir: Path) -> list[str]:
    """The class labels a model directory knows, from its model.json."""
    classes = read_model_json(model_dir).get("classes", [])
    return [c["label"] if isinstance(c, dict) else str(c) for c in classes]


def backbone_name(meta: dict) -> str:
    """The backbone name in a parsed model.json."""
    backbone = meta.get("backbone", "unknown")
    return backbone.get("name", "unknown") if isinstance(backbone, dict) else str(backbone)


class ModelRegistry:
    """Model versions in the database, their files under ``models_path``."""

    def __init__(
        self, sessions: sessionmaker[Session], models_path: Path, *, tolerance: float = 0.0
    ) -> None:
        self._sessions = sessions
        self.models_path = Path(models_path)
        self.tolerance = tolerance

    # --- reading ------------------------------------------------------------
    def current_version(self) -> int | None:
        """The version every bot should answer with; cheap enough to poll every few seconds."""
        with self._sessions() as session:
            return session.scalar(select(ModelVersion.version).where(ModelVersion.is_current.is_(True)))

    def current(self) -> VersionInfo | None:
        """The current version's row, or None when the registry is empty."""
        with self._sessions() as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.is_current.is_(True)))
            return self._info(row) if row else None

    def get(self, version: int) -> VersionInfo:
        """One version's row, or ``UnknownVersion``."""
        with self._sessions() as session:
            row = session.get(ModelVersion, version)
            if row is None:
                raise UnknownVersion(f"no model version {version}")
            return self._info(row)

    def versions(self) -> list[VersionInfo]:
        """All versions, newest first."""
        with self._sessions() as session:
            rows = session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc()))
            return [self._info(row) for row in rows]

    def resolve(self, stored_path: str) -> Path:
        """A stored path made absolute (relative paths are under ``models_path``)."""
        path = Path(stored_path)
        return path if path.is_absolute() else self.models_path / path

    # --- writing ------------------------------------------------------------
    def install_starter(self, starter_dir: Path) -> VersionInfo | None:
        """Install the starter model as version 1 if the registry is empty; else do nothing.

        Raises ``BadModelDir`` when ``starter_dir`` holds no model.
        """
        with self._sessions() as session:
            if session.scalar(select(func.count()).select_from(ModelVersion)):
                return None
        try:
            info = self.register(starter_dir, data_snapshot={}, config={"source": "starter"})
        except IntegrityError:  # another process installed it at the same moment
            return None
        self._set_current(info.version, status="promoted", reason="starter model")
        log.info("installed the starter model from %s as version %d", starter_dir, info.version)
        return self.get(info.version)

    def register(self, model_dir: Path, *, data_snapshot: dict, config: dict | None = None) -> VersionInfo:
        """Copy ``model_dir`` into the registry as a new ``candidate`` version."""
        meta = read_model_json(model_dir)
        version = self._next_version()
        target = self._copy_in(Path(model_dir), version)
        with self._sessions.begin() as session:
            session.add(
                ModelVersion(
                    version=version,
                    path=str(version),
                    status="candidate",
                    is_current=False,
                    backbone=backbone_name(meta),
                    metrics={"model": meta.get("metrics", {})},
                    config={**(config or {}), "model": meta.get("config", {})},
                    data_snapshot=data_snapshot,
                )
            )
        log.info("registered model version %d at %s", version, target)
        return self.get(version)

    def decide(self, version: int, test_set: Sequence[HeldOutImage], evaluate: Evaluator) -> Decision:
        """Evaluate the candidate and the current model on the same test images; promote or reject.

        Only test images whose label the current model knows are compared (a class the
        candidate adds cannot be held against the current model); the candidate is
        promoted when its top-1 there is at least the current one's minus ``tolerance``.
        """
        candidate = self.get(version)
        current = self.current()
        if current is None:
            result = evaluate(candidate.path, test_set)
            self._record_eval(version, result, None, None)
            self._set_current(version, status="promoted", reason="no current model")
            return Decision(version, True, "no current model", result, None, None)
        known = set(model_labels(current.path))
        common = [image for image in test_set if image.label in known]
        if not common:
            reason = "no test images for the current model's classes: cannot compare"
            empty = EvalResult(0.0, 0.0, 0)
            self._record_eval(version, empty, None, current.version)
            self._reject(version, reason)
            return Decision(version, False, reason, empty, None, current.version)
        cand_result = evaluate(candidate.path, common)
        cur_result = evaluate(current.path, common)
        self._record_eval(version, cand_result, cur_result, current.version)
        promoted = cand_result.top1 >= cur_result.top1 - self.tolerance
        verb = "not worse than" if promoted else "worse than"
        reason = (
            f"top-1 {cand_result.top1:.3f} vs {cur_result.top1:.3f} of version {current.version} "
            f"on the same {len(common)} test images: {verb} the current model"
        )
        if promoted:
            self._set_current(version, status="promoted", reason=reason)
        else:
            self._reject(version, reason)
        log.info("model version %d %s: %s", version, "promoted" if promoted else "rejected", reason)
        return Decision(version, promoted, reason, cand_result, cur_result, current.version)

    def rollback(self, version: int) -> VersionInfo:
        """Make ``version`` current again (any version whose files are still there)."""
        info = self.get(version)
        if not (info.path / MODEL_FILE).is_file():
            raise BadModelDir(f"the files of version {version} are gone: {info.path}")
        self._set_current(version, status="promoted", reason=f"rollback to version {version}")
        log.warning("rolled back to model version %d", version)
        return self.get(version)

    # --- internals ----------------------------------------------------------
    def _next_version(self) -> int:
        with self._sessions() as session:
            highest = session.scalar(select(func.max(ModelVersion.version))) or 0
        on_disk = [int(p.name) for p in self.models_path.glob("[0-9]*") if p.name.isdigit()]
        return max([highest, *on_disk]) + 1

    def _copy_in(self, source: Path, version: int) -> Path:
        """Copy to a hidden temp dir, then rename: readers see all of a model or none."""
        self.models_path.mkdir(parents=True, exist_ok=True)
        target = self.models_path / str(version)
        staging = self.models_path / f".incoming-{version}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(target)
        return target

    def _set_current(self, version: int, *, status: str, reason: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.is_current.is_(True), ModelVersion.version != version)
                .values(is_current=False, status="retired")
            )
            row = session.get(ModelVersion, version)
            row.is_current = True
            row.status = status
            row.reason = reason
            row.promoted_at = utcnow()

    def _reject(self, version: int, reason: str) -> None:
        with self._sessions.begin() as session:
            row = session.get(ModelVersion, version)
            row.status = "rejected"
            row.reason = reason

    def _record_eval(
        self, version: int, candidate: EvalResult, current: EvalResult | None, against: int | None
    ) -> None:
        with self._sessions.begin() as session:
            row = session.get(ModelVersion, version)
            row.metrics = {
                **(row.metrics or {}),
                "test": candidate.as_dict(),
                "current_test": current.as_dict() if current else None,
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


def predictor_evaluator(model_dir: Path, images: Sequence[HeldOutImage]) -> EvalResult:
    """Score a model directory with the ONNX Predictor: top-1, top-3, recall per label."""
    from ml.images import open_image  # heavy imports stay out of the bot's import path
    from ml.predictor import Predictor

    predictor = Predictor.load(model_dir)
    hits1 = hits3 = 0
    per_label: dict[str, list[int]] = {}
    batch_size = 32
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        predictions = predictor.predict([open_image(image.path) for image in batch], k=3)
        for image, prediction in zip(batch, predictions, strict=True):
            labels = [guess.label for guess in prediction.top]
            top1 = bool(labels) and labels[0] == image.label
            hits1 += top1
            hits3 += image.label in labels
            per_label.setdefault(image.label, [0, 0])
            per_label[image.label][0] += top1
            per_label[image.label][1] += 1
    n = len(images)
    return EvalResult(
        top1=hits1 / n if n else 0.0,
        top3=hits3 / n if n else 0.0,
        n=n,
        per_label={label: {"recall": h / t, "n": t} for label, (h, t) in per_label.items()},
    )

