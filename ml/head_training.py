"""Fit a classifier head on cached embeddings (head mode, and the label audit's folds).

Full-batch AdamW on features in memory: seconds for ~10k images on a 2-core CPU.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ml.backbones import Backbone, Preprocessing
from ml.data import class_weights
from ml.embeddings import embed_frame, view_names
from ml.model import Classifier

log = logging.getLogger(__name__)

EVAL_EVERY = 10  # steps between val checks; one "epoch" in the history and plots


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, *, x_val: np.ndarray | None = None,
               y_val: np.ndarray | None = None, steps: int = 300, lr: float = 3e-3,
               weight_decay: float = 0.01, dropout: float = 0.2, label_smoothing: float = 0.1,
               seed: int = 0, progress: bool = False, init: Classifier | None = None,
               batch_size: int | None = None) -> tuple[Classifier, list[dict]]:
    """Train ``Classifier`` on features; keeps the weights with the best val accuracy.

    The loss weighs every output alike (inverse-frequency class weights, ``ml.data.class_weights``).
    Why for the open-set outputs too: the negatives are a few hundred photos per output against
    one to two hundred per class; unweighted, "some other sneaker" would pull like two or three
    classes and win every doubtful Air Jordan, weighted down further it would not be learnt. As
    heavy as one class each, they take what looks like none of the classes without swamping 32.

    ``init`` warm starts from a fitted head (a retrain). Its own val accuracy is the first
    one to beat, so a warm-started run never ends worse on val than where it began.
    ``batch_size`` trains each step on a seeded random batch instead of every row: with
    ~12k rows of 1280 features a full-batch step costs ~0.3 s on this CPU (most of it the
    dropout mask), a batch of 1024 a few milliseconds.
    """
    torch.manual_seed(seed)
    head = init if init is not None else Classifier(x.shape[1], n_classes, dropout)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    weights = torch.from_numpy(class_weights(y, n_classes))
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[dict] = []
    best_acc, best_state = -1.0, copy.deepcopy(head.state_dict())
    if init is not None and x_val is not None:
        best_acc = _evaluate(head, x_val, y_val)["acc"]
    for step in tqdm(range(1, steps + 1), desc="head", unit="step", disable=not progress, leave=False):
        head.train()
        rows = torch.randint(len(xt), (batch_size,), generator=gen) if batch_size and batch_size < len(xt) else None
        xb, yb = (xt, yt) if rows is None else (xt[rows], yt[rows])
        logits = head(xb)
        loss = criterion(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if x_val is None or (step % EVAL_EVERY and step != steps):
            continue
        val = _evaluate(head, x_val, y_val)
        train_acc = float((logits.argmax(1) == yb).float().mean())
        history.append({"epoch": step // EVAL_EVERY, "train_loss": float(loss.detach()), "train_acc": train_acc,
                        "val_loss": val["loss"], "val_acc": val["acc"], "val_top3": val["top3"]})
        if val["acc"] > best_acc or (init is not None and val["acc"] >= best_acc):
            # warm started: a tie goes to the later weights, which learnt the new photos (val may hold none)
            best_acc, best_state = val["acc"], copy.deepcopy(head.state_dict())
    if x_val is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, history


@torch.inference_mode()
def _evaluate(head: Classifier, x: np.ndarray, y: np.ndarray) -> dict:
    head.eval()
    logits = head(torch.tensor(x, dtype=torch.float32))
    yt = torch.tensor(y, dtype=torch.long)
    k = min(3, logits.shape[1])
    topk = logits.topk(k, 1).indices
    return {"loss": float(nn.functional.cross_entropy(logits, yt)),
            "acc": float((topk[:, 0] == yt).float().mean()),
            "top3": float((topk == yt[:, None]).any(1).float().mean())}


@torch.inference_mode()
def predict_proba(head: Classifier, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities of a fitted head."""
    head.eval()
    return torch.softmax(head(torch.from_numpy(x).float()), 1).numpy()


def fit_head_from_embeddings(cfg, backbone: Backbone, prep: Preprocessing, frame: pd.DataFrame, outputs: list[str],
                             negatives: pd.DataFrame | None = None) -> tuple[Classifier, list[dict]]:
    """Embed train (all views) and val (centre view), then fit a head with one row per output.

    ``outputs``: the classes, then the open-set outputs when ``negatives`` (``ml.negatives``
    rows, labelled with the output they train) join train and val. Each output weighs as much
    as one class (``fit_linear``'s balanced weights), whatever its photo count.
    """
    index = {c: i for i, c in enumerate(outputs)}
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    rows = frame if negatives is None else pd.concat([frame, negatives], ignore_index=True)
    train = rows[rows["split"] == "train"]
    val = rows[rows["split"] == "val"]
    views = view_names(cfg.aug_views, flip=getattr(cfg, "flip_view", True))
    train_emb = embed_frame(backbone, prep, train, views, cache, progress=cfg.progress)
    val_emb = embed_frame(backbone, prep, val, ["center"], cache, progress=cfg.progress)
    y_train = np.array([index[c] for c in train["label"]])
    x = np.concatenate([train_emb[v][0] for v in views])
    y = np.concatenate([y_train] * len(views))
    x_val = val_emb["center"][0]
    y_val = np.array([index[c] for c in val["label"]])
    log.info("head: %d train vectors (%d images x %d views), %d val, %d outputs", len(x), len(train), len(views),
             len(x_val), len(outputs))
    head, history = fit_linear(x, y, len(outputs), x_val=x_val if len(x_val) else None,
                               y_val=y_val if len(x_val) else None, steps=cfg.epochs, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, dropout=cfg.dropout,
                               label_smoothing=cfg.label_smoothing, seed=cfg.seed, progress=cfg.progress)
    return head, history
