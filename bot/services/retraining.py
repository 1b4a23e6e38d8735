"""Retraining: gather the data, train a candidate, let the registry promote or reject it.

Training data is every ``images`` row with status ``train`` (users, scraper, datasets)
plus what the current model carries: the features of the photos it was built from
(``ml.carried``), so a retrain needs no dataset on this machine and never loses a class.
Splits are drawn by the ML package's one split (``ml.data.split_dataset``: stratified per
label, each photo placed by a seeded hash of its sha1) and stored once chosen, so they never
move between retrains: photos from users go to train/val only, never into the held-out test
set; scraped and dataset images may land in test (10%). Candidate and current model are
compared on the same test photos: the ones the current model carries plus the database's.

Runs in the worker (``bot.jobs.retrain``), never on the bot's event loop.

A retrain that fails (an error, a full disk) leaves nothing behind: the candidate is built in
``<models_path>/.work/`` and removed with it, a version registered but not yet decided is
marked ``failed`` (files removed, never served) and the feedback it had consumed counts as new
again. A worker killed mid-run leaves the same things; ``recover_interrupted_retrains`` clears
them when the worker starts again, so the next run starts clean.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bot.registry import (
    Decision,
    Evaluator,
    HeldOutImage,
    ModelRegistry,
    VersionInfo,
    features_evaluator,
)
from bot.store.repositories import FeedbackRepository, ImageRepository, ModelVersionRepository, SneakerClassRepository

log = logging.getLogger(__name__)

USER_SOURCE = "user"
SPLIT_SEED = 0
VAL_FRACTION = 0.10
TEST_FRACTION = 0.10  # of scraped and dataset photos; users' photos never go to test
STAGES = {"embedding": "embedding photos", "training": "training the head",
          "comparing": "comparing with the current model"}


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

    def as_payload(self) -> dict[str, Any]:
        """The outcome as plain JSON values, for the outbox (``bot.render_admin.retrain_result`` words it)."""
        decision = self.decision
        if decision is None:
            return {"skipped": self.skipped}
        per_label = decision.new_classes.per_label if decision.new_classes is not None else None
        return {
            "skipped": None,
            "version": decision.version,
            "promoted": decision.promoted,
            "reason": decision.reason,
            "candidate": _figures(decision.candidate),
            "current": _figures(decision.current) if decision.current is not None else None,
            "current_version": decision.current_version,
            "new_classes": {label: {"recall": float(row["recall"]), "n": int(row["n"])}
                            for label, row in per_label.items()} if per_label is not None else None,
        }


def _figures(result: Any) -> dict[str, float]:
    return {"top1": float(result.top1), "top3": float(result.top3), "n": int(result.n)}


def draw_splits(rows: list[tuple[Any, str, str, str]]) -> dict[Any, str]:
    """``{key: split}`` for ``(key, sha1, label, source)`` rows, by ``ml.data.split_dataset``.

    Users' photos and the others are drawn apart: users' photos with no test share (a user's
    photo is never held out, so the test set stays made of photos nobody chose to send),
    the others with ``TEST_FRACTION``. Pass every image, split or not: a photo's place then
    depends on its hash among all the photos of its label, not on which came in together.
    """
    if not rows:
        return {}
    import pandas as pd

    from ml.data import split_dataset  # imported here: the bot process never draws splits

    frame = pd.DataFrame(rows, columns=["key", "sha1", "label", "source"])
    splits: dict[Any, str] = {}
    for is_user, part in frame.groupby(frame["source"] == USER_SOURCE):
        drawn = split_dataset(part, seed=SPLIT_SEED, val=VAL_FRACTION, test=0.0 if is_user else TEST_FRACTION)
        splits.update(zip(drawn["key"], drawn["split"], strict=True))
    return splits


def assign_splits(sessions: sessionmaker[Session]) -> int:
    """Give every image without a split its split (kept from then on); returns how many were assigned."""
    with sessions.begin() as session:
        images = ImageRepository(session)
        rows = images.split_keys()
        if all(split is not None for *_, split in rows):
            return 0
        drawn = draw_splits([(image_id, sha1, label, source) for image_id, sha1, label, source, _ in rows])
        new = {image_id: drawn[image_id] for image_id, *_, split in rows if split is None}
        images.set_splits(new)
        return len(new)


def database_images(sessions: sessionmaker[Session], data_dir: Path) -> list[TrainingImage]:
    """Training images from the database whose files exist (paths are data-dir relative); call
    ``assign_splits`` first (an image without a split is left out)."""
    with sessions() as session:
        rows = ImageRepository(session).training_files()
    images = []
    for path, label, sha1, split, source in rows:
        full = Path(path) if Path(path).is_absolute() else data_dir / path
        if split is not None and full.is_file():
            images.append(TrainingImage(full, label, sha1, split, source))
    return images


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
        return FeedbackRepository(session).count_unused_corrections()


def last_snapshot_sha1s(sessions: sessionmaker[Session]) -> set[str]:
    """The sha1s of the newest decided version's data (promoted or not; a ``failed`` run decided nothing)."""
    with sessions() as session:
        row = ModelVersionRepository(session).newest_decided()
        return set((row.data_snapshot or {}).get("sha1", [])) if row else set()


def consume_feedback(sessions: sessionmaker[Session], version: int) -> int:
    """Mark all unused feedback as used by ``version`` (so it is not counted as new again)."""
    with sessions.begin() as session:
        return FeedbackRepository(session).consume_unused(version)


def release_feedback(sessions: sessionmaker[Session], versions: list[int]) -> int:
    """Feedback consumed by versions that were never decided counts as new again; returns how much."""
    if not versions:
        return 0
    with sessions.begin() as session:
        return FeedbackRepository(session).release(versions)


def stage_line(stage: str, done: int, total: int) -> str:
    """A retrain's progress in one line, for ``/status`` and the admins' messages:
    "retrain: embedding photos 1,200 / 6,129"."""
    what = STAGES.get(stage, stage)
    if stage == "comparing":
        return f"retrain: {what}"
    if done == 0:
        return f"retrain: {stage} {total:,} {'photos' if stage == 'embedding' else 'steps'}"
    return f"retrain: {what} {done:,} / {total:,}"


INTERRUPTED = "interrupted: the worker stopped before the promotion gate decided; never served"


@dataclass(frozen=True)
class Recovery:
    """What a worker found of a retrain that a stop interrupted, and cleared."""

    failed_versions: list[int] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    released_feedback: int = 0

    def __bool__(self) -> bool:
        return bool(self.failed_versions or self.removed)

    def summary(self) -> str:
        """One line for the log and the admins."""
        parts = []
        if self.failed_versions:
            parts.append(f"version {', '.join(map(str, self.failed_versions))} marked failed (never served)")
        if self.removed:
            parts.append(f"{len(self.removed)} half-written model dir(s) removed")
        if self.released_feedback:
            parts.append(f"{self.released_feedback} corrections count as new again")
        return "; ".join(parts) or "nothing to clear"


def recover_interrupted_retrains(sessions: sessionmaker[Session], registry: ModelRegistry) -> Recovery:
    """Clear what a stopped worker left of a retrain; call when the worker starts, before any job.

    ``candidate`` rows become ``failed`` (their files removed, their feedback released), and the
    hidden ``.work/`` and ``.incoming-*`` entries go. The served model is never touched.
    """
    failed = registry.fail_unfinished(INTERRUPTED)
    released = release_feedback(sessions, failed)
    recovery = Recovery(failed, registry.sweep_unfinished(), released)
    if recovery:
        log.warning("an interrupted retrain was cleared: %s", recovery.summary())
    return recovery


def display_names(sessions: sessionmaker[Session]) -> dict[str, str]:
    """The catalogue's names (``/addclass``): a new class is named as the admin named it."""
    with sessions() as session:
        return SneakerClassRepository(session).display_names()


def held_out(current: VersionInfo, images: list[TrainingImage]) -> list[HeldOutImage]:
    """The gate's test photos: those the current model carries for test, plus the database's test photos.

    A database photo's label wins over a carried one (a user's correction of a scraped label).
    """
    from ml.artifacts import read_model_json
    from ml.carried import Carried

    carried = Carried.load(current.path, read_model_json(current.path))
    test: dict[str, HeldOutImage] = {}
    if carried is not None:
        rows = carried.select(split="test", view="center").frame
        test = {sha: HeldOutImage(None, label, sha) for sha, label in zip(rows["sha1"], rows["label"], strict=True)}
    for image in images:
        if image.split == "test" or image.sha1 in test:
            test[image.sha1] = HeldOutImage(image.path, image.label, image.sha1)
    return list(test.values())


class Retrainer:
    """Builds candidates from the current model (its backbone and what it carries) and the database's photos."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        *,
        data_dir: Path,
        cache_dir: Path,
        steps: int,
        base_dataset_dir: Path | None = None,
        evaluate: Evaluator | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.registry = registry
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.steps = steps
        self.base_dataset_dir = base_dataset_dir
        self.evaluate = evaluate or features_evaluator(self.cache_dir)
        self.progress = progress

    def retrain(self, *, only_if_new_data: bool, reason: str) -> RetrainOutcome:
        """Train a candidate on everything we have, then promote or reject it."""
        current = self.registry.current()
        if current is None:
            return RetrainOutcome(skipped="no current model to start from")
        assign_splits(self.sessions)
        images = database_images(self.sessions, self.data_dir)
        if only_if_new_data and {i.sha1 for i in images} <= last_snapshot_sha1s(self.sessions):
            return RetrainOutcome(skipped="no new training data since the last model", previous=current)
        # The candidate is built in a hidden work dir that goes with any failure (a full disk included).
        with tempfile.TemporaryDirectory(prefix="retrain-", dir=self._work_dir()) as work:
            out = self._train(current, images, Path(work) / "model")
            candidate = self.registry.register(
                out,
                data_snapshot=snapshot(images),
                config={"reason": reason, "parent_version": current.version, "steps": self.steps},
            )
        try:
            consume_feedback(self.sessions, candidate.version)
            if self.progress:
                self.progress("comparing", 0, 1)
            decision = self.registry.decide(candidate.version, held_out(current, images), self.evaluate)
        except BaseException as exc:
            self._abandon(candidate.version, exc)
            raise
        return RetrainOutcome(skipped=None, decision=decision, previous=current)

    def _abandon(self, version: int, exc: BaseException) -> None:
        """A registered candidate the gate could not decide: ``failed``, never served, its feedback new again."""
        try:
            self.registry.fail(version, f"failed before the promotion gate decided: {exc}")
            release_feedback(self.sessions, [version])
        except Exception:  # the original error is the one to report; the worker's restart retries this
            log.exception("could not mark version %d failed", version)

    def _train(self, current: VersionInfo, images: list[TrainingImage], out: Path) -> Path:
        """A head retrain (``ml.retrain``) on the current model's carried features plus the database's photos."""
        import pandas as pd

        from ml.retrain import RetrainSettings, retrain_head

        frame = pd.DataFrame([{"path": str(i.path), "label": i.label, "sha1": i.sha1, "split": i.split}
                              for i in images], columns=["path", "label", "sha1", "split"])
        settings = RetrainSettings(steps=self.steps, cache_dir=self.cache_dir, base_dataset_dir=self.base_dataset_dir)
        return retrain_head(current.path, frame, out, settings=settings, display_names=display_names(self.sessions),
                            progress=self.progress)

    def _work_dir(self) -> Path:
        work = self.registry.models_path / ".work"
        work.mkdir(parents=True, exist_ok=True)
        return work
