"""Plots saved with every model: learning curves, confusion matrix, example grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path | None:
    """Loss and accuracy per epoch for train and val, as the original project drew them."""
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train top-1")
    ax_acc.plot(epochs, [h["val_acc"] for h in history], label="val top-1")
    if "val_top3" in history[0]:
        ax_acc.plot(epochs, [h["val_top3"] for h in history], label="val top-3", linestyle="--")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true label)."""
    n = len(classes)
    matrix = confusion_matrix(y, pred, labels=list(range(n)), normalize="true")
    size = max(5, 0.32 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    short = [c.replace("air_jordan_", "AJ") for c in classes]
    ax.set_xticks(range(n), short, rotation=90, fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] >= 0.05:
                    ax.text(j, i, f"{matrix[i, j]:.2f}"[1:] if matrix[i, j] < 1 else "1",
                            ha="center", va="center", fontsize=5,
                            color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_title(title)
    return _save(fig, path)


def plot_examples(paths: Sequence[str], true: Sequence[str], predicted: Sequence[str], scores: Sequence[float],
                  path: Path, *, cols: int = 6, title: str = "", truth: str = "true") -> Path | None:
    """A grid of test images titled with the prediction; wrong ones framed and titled in red.

    ``truth`` names what ``true`` holds in the titles ("folder" where the label itself is in doubt).
    """
    if not paths:
        return None
    rows = int(np.ceil(len(paths) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.2))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, p, t, pr, s in zip(np.atleast_1d(axes).ravel(), paths, true, predicted, scores, strict=False):
        with Image.open(p) as im:
            ax.imshow(im.convert("RGB"))
        wrong = t != pr
        color = "red" if wrong else "green"
        label = f"{pr} {s:.0%}" + (f"\n({truth} {t})" if wrong else "")
        ax.set_title(label, fontsize=7, color=color)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(3 if wrong else 1)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
