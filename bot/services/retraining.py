"""Retraining: gather the data, train a candidate, let the registry promote or reject it.

Training data is every ``images`` row with status ``train`` (users, scraper, datasets)
plus the dataset the current model was built from. Splits are fixed once chosen and
derived from the content hash, so they never move between retrains: photos from users
go to train/val only, never into the held-out test set; scraped and dataset images may
land in test (10%). Candidate and current model are compared on the same test images.

Runs in the worker (``bot.jobs.retrain``), never on the bot's event loop.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.registry import (
    Decision,
    Evaluator,
    ModelRegistry,
    HeldOutImage,
    VersionInfo,
    backbone_name,
    predictor_evaluator,
    read_model_json,
)
from bot.store.models import Feedback, Image, ModelVersion

log = logging.getLogger(__name__)

USER_SOURCE = "user"
CORRECTION = "wrong"


class RetrainError(Exception):
    """A retrain could not run (no current model, too little data)."""


@dataclass(frozen=True)
class TrainingImage:
    """One labelled image with its fixed split."""

    path: Path
    label: str
    sha1: str
    split: str  # train | val | test
    source: str


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retrain did: skipped (with why), or the registry's decision."""

    skipped: str | None
    decision: Decision | None = None
    previous: VersionInfo | None = None

    def summary(self) -> str:
        """One line for logs, ``job_runs`` and the admin."""
        if self.decision is None:
            return f"skipped: {self.skipped}"
        verb = "promoted" if self.decision.promoted else "rejected"
        return f"version {self.decision.version} {verb}: {self.decision.reason}"


def split_for(sha1: str, source: str) -> str:
    """The fixed split of an image from its content hash; user photos never go to test."""
    bucket = int(sha1[:8], 16) % 100
    if source == USER_SOURCE:
        return "val" if bucket < 10 else "train"
    if bucket < 10:
        return "test"
    return "val" if bucket < 20 else "train"


def assign_splits(sessions: sessionmaker[Session]) -> int:
    """Give every image without a split its fixed one; returns how many were assigned."""
    with sessions.begin() as session:
        rows = list(session.scalars(select(Image).where(Image.split.is_(None))))
        for row in rows:
            row.split = split_for(row.sha1, row.source)
        return len(rows)


def database_images(sessions: sessionmaker[Session], data_dir: Path) -> list[TrainingImage]:
    """Training images from the database whose files exist (paths are data-dir relative)."""
    with sessions() as session:
        rows = session.execute(
            select(Image.path, Image.label, Image.sha1, Image.split, Image.source).where(
                Image.status == "train"
            )
        ).all()
    images = []
    for path, label, sha1, split, source in rows:
        full = Path(path) if Path(path).is_absolute() else data_dir / path
        if full.is_file():
            images.append(TrainingImage(full, label, sha1, split or split_for(sha1, source), source))
    return images


def base_dataset_images(model_dir: Path) -> list[TrainingImage]:
    """The dataset a model was trained from, split exactly as it was (empty if not on this machine).

    ``model.json`` carries the resolved training config (data dir, seed, fractions,
    exclusions); ``ml.train.prepare_data`` reproduces the same split from it.
    """
    from ml.train import prepare_data

    config = train_config_of(model_dir)
    if config is None or not Path(config.data_dir).is_dir():
        log.info("the base dataset of %s is not on this machine: database images only", model_dir)
        return []
    frame, _classes, _snapshot = prepare_data(config)
    return [
        TrainingImage(Path(row.path), row.label, row.sha1, row.split, "dataset")
        for row in frame.itertuples(index=False)
    ]


def train_config_of(model_dir: Path):  # noqa: ANN201 - ml.train.TrainConfig | None
    """The training config stored in a model directory, as an ``ml.train.TrainConfig``."""
    from dataclasses import fields

    from ml.train import TrainConfig

    from bot.settings import REPO_ROOT

    stored = read_model_json(model_dir).get("config") or {}
    names = {f.name for f in fields(TrainConfig)}
    values = {key: value for key, value in stored.items() if key in names}
    if "data_dir" not in values:
        return None
    data_dir = Path(values["data_dir"])
    if not data_dir.is_absolute() and not data_dir.is_dir():
        values["data_dir"] = str(REPO_ROOT / data_dir)  # the starter is built from the repository root
    return TrainConfig(**{"out_dir": str(model_dir), **values, "progress": False})


def merge(base: list[TrainingImage], extra: list[TrainingImage]) -> list[TrainingImage]:
    """Images by content hash; a database row (newest label) wins over the base dataset."""
    by_sha1 = {image.sha1: image for image in base}
    for image in extra:
        previous = by_sha1.get(image.sha1)
        # A base-dataset test image stays in test even if it shows up again from elsewhere.
        split = "test" if previous is not None and previous.split == "test" else image.split
        if previous is not None and previous.split != "test" and image.split == "test":
            split = previous.split
        by_sha1[image.sha1] = TrainingImage(image.path, image.label, image.sha1, split, image.source)
    return list(by_sha1.values())


def snapshot(images: list[TrainingImage]) -> dict:
    """The data a model was built from: images per class and split, and every sha1."""
    return {
        "n": len(images),
        "classes": dict(sorted(Counter(image.label for image in images).items())),
        "splits": dict(Counter(image.split for image in images)),
        "sha1": sorted(image.sha1 for image in images),
    }


def count_new_corrections(sessions: sessionmaker[Session]) -> int:
    """Corrections no retrain has used yet."""
    with sessions() as session:
        return session.scalar(
            select(func.count())
            .select_from(Feedback)
            .where(Feedback.verdict == CORRECTION, Feedback.consumed_by_version.is_(None))
        ) or 0


def last_snapshot_sha1s(sessions: sessionmaker[Session]) -> set[str]:
    """The sha1s of the newest version's data (promoted or not)."""
    with sessions() as session:
        row = session.scalar(select(ModelVersion).order_by(ModelVersion.version.desc()).limit(1))
        return set((row.data_snapshot or {}).get("sha1", [])) if row else set()


def consume_feedback(sessions: sessionmaker[Session], version: int) -> int:
    """Mark all unused feedback as used by ``version`` (so it is not counted as new again)."""
    with sessions.begin() as session:
        result = session.execute(
            update(Feedback).where(Feedback.consumed_by_version.is_(None)).values(consumed_by_version=version)
        )
        return result.rowcount or 0


def train_head(base_model_dir: Path, images: list[TrainingImage], out: Path, *, epochs: int,
               cache_dir: Path, threads: int = 1) -> Path:
    """Train a head with the ML package on ``images`` (their splits as given) into ``out``.

    Uses ``ml``'s own head-mode steps (cached embeddings, linear head, a finalised model
    directory with metrics, thresholds, ONNX and plots), configured like the base model.
    A fine-tuned base keeps its backbone: only the head is retrained on its features,
    and the candidate ships that backbone too.
    """
    import pandas as pd
    import torch

    from ml.finalize import finalize_model
    from ml.head_training import fit_head_from_embeddings
    from ml.train import TrainConfig

    base = train_config_of(base_model_dir)
    meta = read_model_json(base_model_dir)
    values = {**(vars(base) if base else {"data_dir": ""}), "backbone": backbone_name(meta), "out_dir": str(out),
              "mode": "head", "epochs": epochs, "threads": threads, "progress": False, "exclude_file": None}
    torch.set_num_threads(threads)
    torch.manual_seed(int(values.get("seed", 0)))
    if base and base.cache_dir and Path(base.cache_dir).is_absolute() and Path(base.cache_dir).is_dir():
        cache_dir = Path(base.cache_dir)  # the base model's own cache: its images are embedded already
    backbone, cache = base_backbone(base_model_dir, meta, Path(cache_dir), pretrained=values.get("pretrained", True))
    config = TrainConfig(**{**values, "cache_dir": str(cache)}).resolved(backbone)
    prep = backbone.preprocessing.with_size(config.image_size)
    frame = pd.DataFrame(
        [{"path": str(i.path), "label": i.label, "sha1": i.sha1, "split": i.split, "source": i.source}
         for i in images]
    )
    classes = sorted(frame["label"].unique())
    head, history = fit_head_from_embeddings(config, backbone, prep, frame, classes)
    snapshot = {"images": len(frame), "classes": len(classes),
                "splits": {k: int(v) for k, v in frame["split"].value_counts().items()}}
    if meta.get("backbone", {}).get("finetuned"):
        # finalize_model ships the backbone weights only for fine-tuned models.
        config.mode = "finetune"
        config.extra = {**config.extra, "retrain": "head only, on the base model's fine-tuned backbone"}
    return finalize_model(config, backbone, head, classes, frame, prep, history, snapshot)


def base_backbone(model_dir: Path, meta: dict, cache_dir: Path, *, pretrained: bool):  # noqa: ANN201
    """The base model's backbone and the embedding cache its features belong in.

    Pretrained backbones share the cache (keyed by name and preprocessing); a fine-tuned
    one gets a cache of its own, keyed by its weights, so features never mix.
    """
    if meta.get("backbone", {}).get("finetuned"):
        from ml.artifacts import load_net, weights_fingerprint

        tag = weights_fingerprint(model_dir, meta)[:16]
        return load_net(model_dir, meta).backbone, cache_dir / f"finetuned-{tag}"
    from ml.backbones import create_backbone

    return create_backbone(backbone_name(meta), pretrained=pretrained), cache_dir


class Retrainer:
    """Builds candidates from the current model's backbone and the collected data."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        *,
        data_dir: Path,
        cache_dir: Path,
        epochs: int,
        evaluate: Evaluator = predictor_evaluator,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.epochs = epochs
        self.evaluate = evaluate

    def collect(self, current: VersionInfo) -> list[TrainingImage]:
        """Base dataset of the current model plus the database's training images."""
        assign_splits(self.sessions)
        return merge(base_dataset_images(current.path), database_images(self.sessions, self.data_dir))

    def retrain(self, *, only_if_new_data: bool, reason: str) -> RetrainOutcome:
        """Train a candidate on everything we have, then promote or reject it."""
        current = self.registry.current()
        if current is None:
            return RetrainOutcome(skipped="no current model to start from")
        images = self.collect(current)
        if only_if_new_data and {i.sha1 for i in images} <= last_snapshot_sha1s(self.sessions):
            return RetrainOutcome(skipped="no new training data since the last model", previous=current)
        test = [HeldOutImage(image.path, image.label, image.sha1) for image in images if image.split == "test"]
        if len({image.label for image in images if image.split == "train"}) < 2:
            return RetrainOutcome(skipped="fewer than two classes with training images", previous=current)
        with tempfile.TemporaryDirectory(prefix="retrain-", dir=self._work_dir()) as work:
            out = Path(work) / "model"
            out = self._train(current, images, out)
            candidate = self.registry.register(
                out,
                data_snapshot=snapshot(images),
                config={"reason": reason, "parent_version": current.version, "epochs": self.epochs},
            )
        consume_feedback(self.sessions, candidate.version)
        decision = self.registry.decide(candidate.version, test, self.evaluate)
        return RetrainOutcome(skipped=None, decision=decision, previous=current)

    def _train(self, current: VersionInfo, images: list[TrainingImage], out: Path) -> Path:
        """Head mode on cached embeddings, the current model's backbone and settings, fixed splits."""
        return train_head(current.path, images, out, epochs=self.epochs, cache_dir=self.cache_dir)

    def _work_dir(self) -> Path:
        work = self.registry.models_path / ".work"
        work.mkdir(parents=True, exist_ok=True)
        return work
