"""Training: ``head`` (frozen backbone, cached embeddings) and ``finetune`` (partial or full).

With ``negatives`` (``ml.negatives``), both modes train two more head outputs after the
classes (``ml.verdicts.OPEN_SET_OUTPUTS``): the negatives' train photos are their targets, their
val photos join val (early stopping, calibration), and the held-out groups are only measured.

A flat script in the torchvision-references style: ``train_one_epoch``, ``evaluate_loader``,
``run_training(config)``. Fine-tuning checkpoints every epoch (``checkpoints/last.pt``, and
``best.pt`` on a new best val accuracy) and resumes from ``last.pt``, because a run on a
2-core CPU takes an hour and must survive an interruption. After fitting, the best weights
are finalised into a self-describing model directory (``ml.finalize``); a resume of a run
whose epochs are all done only finalises.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ml.atomic import atomic_path
from ml.backbones import Backbone, create_backbone
from ml.config import DEFAULT_TRAINABLE, MODES, TrainConfig  # noqa: F401 - the public names of a run
from ml.data import (
    AUDIT_SPLIT,
    ImageFrameDataset,
    apply_exclusions,
    class_weights,
    index_dataset,
    restrict,
    split_dataset,
)
from ml.errors import DatasetError
from ml.model import Classifier
from ml.negatives import Negatives, index_negatives
from ml.teacher import TEMPERATURE, Teacher, distillation_loss, student_view
from ml.transforms import augmentation, eval_transform
from ml.verdicts import OPEN_SET_OUTPUTS

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- data


def prepare_data(cfg: TrainConfig) -> tuple[pd.DataFrame, list[str], dict]:
    """Index, split, then set the label audit's photos aside (split "audit"). Returns frame, classes, snapshot."""
    index = index_dataset(cfg.data_dir, progress=cfg.progress)
    frame = index.frame
    if cfg.classes:
        missing = sorted(set(cfg.classes) - set(frame["label"]))
        if missing:
            raise DatasetError(f"{cfg.data_dir}: no images for the classes {', '.join(missing)}")
        frame = restrict(frame, cfg.classes)
    if frame["label"].nunique() < 2:
        raise DatasetError(f"{cfg.data_dir}: need at least two class folders with images")
    frame = split_dataset(frame, seed=cfg.seed, val=cfg.val_fraction, test=cfg.test_fraction)
    excluded: dict[str, int] = {}
    if cfg.exclude_file:
        frame, excluded = apply_exclusions(frame, Path(cfg.exclude_file))
    classes = sorted(frame.loc[frame["split"] != AUDIT_SPLIT, "label"].unique())
    snapshot = {
        **index.summary(),
        "splits": {k: int(v) for k, v in frame["split"].value_counts().items()},
        "excluded_by_audit": excluded,
        "seed": cfg.seed,
    }
    return frame, classes, snapshot


def prepare_negatives(cfg: TrainConfig, frame: pd.DataFrame) -> Negatives | None:
    """The run's negatives (``cfg.negatives``), split by ``ml.negatives``' rule; None without them.

    A photo that is also filed under a class is left out: it is a positive.
    """
    if not cfg.negatives:
        return None
    negatives = index_negatives(cfg.negatives, cfg.holdout_groups, progress=cfg.progress).without(set(frame["sha1"]))
    log.info("negatives %s: %s", cfg.negatives, dict(negatives.frame["split"].value_counts()))
    return negatives


def output_names(classes: list[str], negatives: Negatives | None) -> list[str]:
    """The head's rows: the classes, then the open-set outputs when the run has negatives."""
    return [*classes, *(OPEN_SET_OUTPUTS if negatives is not None else ())]


def with_negatives(frame: pd.DataFrame, negatives: Negatives | None, split: str) -> pd.DataFrame:
    """The class photos of ``split`` and, in a run with negatives, that split's negatives (columns path, label)."""
    part = frame[frame["split"] == split]
    if negatives is None:
        return part
    return pd.concat([part[["path", "label"]], negatives.part(split)[["path", "label"]]], ignore_index=True)


def pick_device(requested: str | None) -> torch.device:
    """CUDA when present, CPU otherwise (or what the config asks)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------- fine-tuning


class FinetuneModel(nn.Module):
    """Backbone + classifier for training; the footwear branch is only added at finalise time."""

    def __init__(self, backbone: Backbone, head: Classifier) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def imagenet_distillation(student: torch.Tensor, teacher: torch.Tensor,
                          temperature: float = TEMPERATURE) -> torch.Tensor:
    """How far the fine-tuned layers' ImageNet answer is from the frozen layers' one.

    Two terms: KL(teacher || student) over all 1000 classes, softened and scaled by T^2
    (Hinton et al.), and the same KL over two bins, footwear or not, at T = 1.

    Why: as in "learning without forgetting", keeping the pretrained answer regularises the
    fine-tune on a few thousand noisy photos (measured at 224 px: val top-3 91.0 % against
    90.3 % without it). It does not make the fine-tuned layers a footwear gate: on photos that
    are not sneakers they still drift (``bench.gate``), so the frozen branch stays in the graph.
    """
    return distillation_loss(student, teacher, temperature) + _footwear_kl(student, teacher)


def _footwear_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL over (footwear, not footwear) at T = 1, in log space so tiny masses stay exact."""
    from ml.model import IMAGENET_FOOTWEAR

    idx = torch.tensor(sorted(IMAGENET_FOOTWEAR), device=student.device)

    def two_bins(logits: torch.Tensor) -> torch.Tensor:
        logp = nn.functional.log_softmax(logits, dim=1)
        shoe = torch.logsumexp(logp.index_select(1, idx), dim=1)
        rest = torch.log1p(-shoe.exp().clamp(max=1 - 1e-6))
        return torch.stack([shoe, rest], dim=1)

    return nn.functional.kl_div(two_bins(student), two_bins(teacher), log_target=True, reduction="batchmean")


@dataclass
class StepLoss:
    """The training loss of one batch: cross-entropy on the folder labels, plus the distillation terms asked for.

    ``size`` is the model's input size: with a teacher the loader yields views at the teacher's
    size, and the model sees them resized.
    """

    criterion: nn.Module
    size: int
    distill_imagenet: float = 0.0
    teacher: Teacher | None = None
    teacher_weight: float = 1.0

    def __call__(self, model: FinetuneModel, images: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(head logits, loss). A teacher knows the classes only: it is matched on the class logits."""
        view = student_view(images, self.size)
        if self.distill_imagenet:
            feats, student, frozen = model.backbone.distill_outputs(view)
            logits = model.head(feats)
            loss = self.criterion(logits, targets) + self.distill_imagenet * imagenet_distillation(student, frozen)
        else:
            logits = model(view)
            loss = self.criterion(logits, targets)
        if self.teacher is not None:
            known = logits[:, : self.teacher.order.numel()]
            loss = loss + self.teacher_weight * distillation_loss(known, self.teacher.logits(images))
        return logits, loss


def build_finetune_model(cfg: TrainConfig, outputs: list[str]) -> FinetuneModel:
    """The backbone with its frozen stages and a fresh head, one row per output (the classes, then any
    open-set outputs), or the weights of ``cfg.init_from``."""
    backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained and not _is_scratch(cfg.backbone))
    if not backbone.from_scratch:
        backbone.prepare_finetune(cfg.trainable_stages)
    model = FinetuneModel(backbone, Classifier(backbone.feature_dim, len(outputs), cfg.dropout))
    if cfg.init_from:
        warm_start(model, Path(cfg.init_from), outputs)
    return model


def warm_start(model: FinetuneModel, model_dir: Path, outputs: list[str]) -> None:
    """Copy a trained model's backbone and head rows into ``model``.

    Why: a retrain or a change of input size converges in a few epochs from a model that
    already knows these sneakers, instead of a full run from ImageNet weights. The backbone
    must have the same layout (same backbone and trainable stages), or fine-tune more blocks
    than the source (those start from ImageNet); head rows are matched by name (a class label or
    an open-set output), so new ones start fresh and dropped ones are ignored.
    """
    from ml.artifacts import head_outputs, load_net, read_model_json

    meta = read_model_json(model_dir)
    source = load_net(model_dir, meta)
    if meta["backbone"]["name"] != model.backbone.name:
        raise ValueError(f"--init-from {model_dir}: backbone {meta['backbone']['name']!r}, "
                         f"this run trains {model.backbone.name!r}")
    wanted = model.backbone.state_dict()
    given = {k: v for k, v in source.backbone.state_dict().items() if k in wanted}
    if set(given) == set(wanted) and all(given[k].shape == wanted[k].shape for k in wanted):
        model.backbone.load_state_dict(given)
    elif not model.backbone.adopt_finetuned(source.backbone):
        raise ValueError(f"--init-from {model_dir}: its backbone layout differs from this run's "
                         "(use the same --trainable-stages, or more)")
    old = {name: i for i, name in enumerate(head_outputs(meta))}
    with torch.no_grad():
        for row, name in enumerate(outputs):
            if name in old:
                model.head.fc.weight[row] = source.head.fc.weight[old[name]]
                model.head.fc.bias[row] = source.head.fc.bias[old[name]]
    log.info("warm start from %s: %d of %d outputs known", model_dir, sum(c in old for c in outputs), len(outputs))


def _is_scratch(name: str) -> bool:
    return create_backbone(name, pretrained=False).from_scratch


def train_one_epoch(model: FinetuneModel, loader: DataLoader, step_loss: StepLoss,
                    optimizer: torch.optim.Optimizer, scheduler, device: torch.device,
                    epoch: int, progress: bool) -> dict:
    """One pass over train; returns mean loss and accuracy."""
    model.train()
    total, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch} train", unit="batch", disable=not progress, leave=False)
    for images, targets in bar:
        images, targets = images.to(device, memory_format=torch.channels_last), targets.to(device)
        logits, loss = step_loss(model, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        loss_sum += float(loss.detach()) * len(targets)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}


def evaluate_loader(model: FinetuneModel, loader: DataLoader, criterion: nn.Module,
                    device: torch.device, desc: str = "val", progress: bool = True) -> dict:
    """Loss, top-1 and top-3 accuracy under ``inference_mode``."""
    model.eval()
    total, top1, top3, loss_sum = 0, 0, 0, 0.0
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            images, targets = images.to(device, memory_format=torch.channels_last), targets.to(device)
            logits = model(images)
            loss_sum += float(criterion(logits, targets)) * len(targets)
            k = min(3, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            top1 += int((topk[:, 0] == targets).sum())
            top3 += int((topk == targets[:, None]).any(1).sum())
            total += len(targets)
    return {"loss": loss_sum / max(total, 1), "acc": top1 / max(total, 1), "top3": top3 / max(total, 1)}


def run_finetune(cfg: TrainConfig, *, resume: bool = False, epochs: int | None = None) -> Path:
    """Fit with per-epoch checkpoints and early stopping on val accuracy, then finalise.

    ``epochs`` on a resume changes the planned length of the run (e.g. to finish sooner on a
    busy machine): the one-cycle learning-rate schedule is rebuilt for the new length and
    fast-forwarded to the steps already done.
    """
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state = None
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        known = {f.name for f in fields(TrainConfig)}  # a checkpoint of other code may hold other keys
        cfg = TrainConfig(**{**{k: v for k, v in state["config"].items() if k in known}, "out_dir": str(out)})
        if epochs and epochs != cfg.epochs:
            log.info("resume: planned epochs %d -> %d", cfg.epochs, epochs)
            cfg.epochs = epochs
        log.info("resuming %s after epoch %d of %d", out, state["epoch"] + 1, cfg.epochs)
    _set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    frame, classes, snapshot = prepare_data(cfg)
    negatives = prepare_negatives(cfg, frame)
    outputs = output_names(classes, negatives)
    probe = create_backbone(cfg.backbone, pretrained=False)
    if state is None:
        cfg = cfg.resolved(probe)
    prep = probe.preprocessing.with_size(cfg.image_size)
    output_index = {c: i for i, c in enumerate(outputs)}
    device = pick_device(cfg.device)

    # channels_last: depthwise convolutions run about 3x faster on CPU in this layout
    model = build_finetune_model(cfg, outputs).to(device, memory_format=torch.channels_last)
    teacher = Teacher(Path(cfg.teacher), classes, prep).to(device) if cfg.teacher else None
    train_prep = prep.with_size(teacher.size) if teacher else prep  # the teacher sees each view at its own size
    train_ds = ImageFrameDataset(with_negatives(frame, negatives, "train"), output_index,
                                 augmentation(cfg.augment, train_prep))
    val_ds = ImageFrameDataset(with_negatives(frame, negatives, "val"), output_index, eval_transform(prep))
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.batch_size, len(train_ds))  # drop_last: a batch of one breaks BatchNorm
    train_loader = DataLoader(train_ds, batch_size=batch, shuffle=True, generator=gen, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=64)
    # every output weighs as much as one class, the open-set ones too (``ml.head_training.fit_linear`` says why)
    weights = torch.tensor(class_weights(np.array(train_ds.targets), len(outputs)), device=device)
    step_loss = StepLoss(nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing), cfg.image_size,
                         cfg.distill_imagenet, teacher, cfg.teacher_weight)
    eval_criterion = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(train_loader)
    pct_start = min(0.3, max(1.0 / max(cfg.epochs, 1), 2.0 / max(steps, 1)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(steps, 1),
                                                    pct_start=pct_start)
    history: list[dict] = []
    start_epoch, best_acc, stale = 0, -1.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"].get("total_steps") == steps:
            scheduler.load_state_dict(state["scheduler"])
        else:  # the run's length changed: replay the new schedule up to where the run is
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore")
                for _ in range(min(state["scheduler"]["last_epoch"], steps - 1)):
                    scheduler.step()
        torch.set_rng_state(state["rng"])
        gen.set_state(state["gen"])
        history, best_acc, stale = state["history"], state["best_acc"], state["stale"]
        start_epoch = state["epoch"] + 1
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log.info("finetune %s: %d train / %d val images, %d outputs, %d trainable params, %d px, %d epochs",
             cfg.backbone, len(train_ds), len(val_ds), len(outputs), sum(p.numel() for p in params),
             cfg.image_size, cfg.epochs)
    # one bar over the whole run: its ETA is the run's (the batch bars under it are the epoch's)
    epochs = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs, desc="fine-tune",
                  unit="epoch", disable=not cfg.progress)
    for epoch in epochs:
        if stale >= cfg.patience:
            log.info("early stop: val accuracy did not improve for %d epochs", stale)
            break
        t0 = time.time()
        tr = train_one_epoch(model, train_loader, step_loss, optimizer, scheduler, device, epoch + 1, cfg.progress)
        va = evaluate_loader(model, val_loader, eval_criterion, device, progress=cfg.progress)
        history.append({"epoch": epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "val_loss": va["loss"], "val_acc": va["acc"], "val_top3": va["top3"],
                        "seconds": round(time.time() - t0, 1)})
        improved = va["acc"] > best_acc
        best_acc, stale = (va["acc"], 0) if improved else (best_acc, stale + 1)
        epochs.set_postfix(val_acc=f"{va['acc']:.3f}", best=f"{best_acc:.3f}")
        log.info("epoch %d/%d train loss %.3f acc %.3f | val loss %.3f acc %.3f top3 %.3f | %.0fs, ETA %s%s",
                 epoch + 1, cfg.epochs, tr["loss"], tr["acc"], va["loss"], va["acc"], va["top3"],
                 time.time() - t0, _eta(history[len(history) - (epoch + 1 - start_epoch):], cfg.epochs - epoch - 1),
                 " *" if improved else "")
        if improved:
            with atomic_path(best_path) as tmp:
                torch.save({"model": model.state_dict(), "epoch": epoch, "val_acc": va["acc"]}, tmp)
        checkpoint = {"config": asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "gen": gen.get_state(),
                      "history": history, "best_acc": best_acc, "stale": stale, "epoch": epoch,
                      "classes": classes}
        with atomic_path(last_path) as tmp:  # a run killed while saving resumes from the previous epoch
            torch.save(checkpoint, tmp)
        (out / "history.json").write_text(json.dumps(history, indent=1))
    best = torch.load(best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])
    from ml.finalize import finalize_model  # imported late on purpose: a long run picks up fixes

    return finalize_model(cfg, model.backbone.cpu(), model.head.cpu(), classes, frame, prep, history, snapshot,
                          negatives)


def _eta(this_run: list[dict], epochs_left: int) -> str:
    """The time the remaining epochs should take at this run's mean epoch time, as "12 min"."""
    if not this_run or epochs_left <= 0:
        return "0 min"
    seconds = sum(h["seconds"] for h in this_run) / len(this_run) * epochs_left
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- head mode


def run_head(cfg: TrainConfig) -> Path:
    """Frozen backbone: embed (cached by sha1 + backbone), fit a linear head, finalise."""
    from ml.head_training import fit_head_from_embeddings

    _set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    frame, classes, snapshot = prepare_data(cfg)
    backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained)
    if backbone.from_scratch:
        log.info("%s has no pretrained weights: training it end to end (finetune mode)", cfg.backbone)
        cfg.mode = "finetune"
        return run_finetune(cfg)
    cfg = cfg.resolved(backbone)
    prep = backbone.preprocessing.with_size(cfg.image_size)
    negatives = prepare_negatives(cfg, frame)
    fitted = negatives.part("train", "val") if negatives is not None else None
    head, history = fit_head_from_embeddings(cfg, backbone, prep, frame, output_names(classes, negatives), fitted)
    from ml.finalize import finalize_model

    return finalize_model(cfg, backbone, head, classes, frame, prep, history, snapshot, negatives)


def run_training(cfg: TrainConfig, *, resume: bool = False, epochs: int | None = None) -> Path:
    """Entry point used by the CLI: dispatch on ``cfg.mode``; returns the model directory."""
    if cfg.mode == "finetune":
        return run_finetune(cfg, resume=resume, epochs=epochs)
    if cfg.mode == "head":
        return run_head(cfg)
    raise ValueError(f"unknown mode {cfg.mode!r}; use one of {', '.join(MODES)}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch with drop_last (for budgeting a run)."""
    return max(1, math.floor(n / batch_size))
