"""model.json and the model directory's file names: the one owner, without torch.

The bot (``bot.registry``), the Predictor and training all read model.json through this
module; ``ml.artifacts`` adds what needs torch (the weights) and re-exports these names.
The directory's layout is described in ``ml.artifacts``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml.errors import ModelDirError
from ml.preprocessing import Preprocessing

FORMAT_VERSION = 1
MODEL_JSON, HEAD_FILE, BACKBONE_FILE, ONNX_FILE = "model.json", "head.pt", "backbone.pt", "model.onnx"
CENTROIDS_FILE = "centroids.npy"
AUDIT_FILE = "audit.csv"  # the label audit's flagged photos, carried so a retrain splits the base data the same way


def display_name(label: str) -> str:
    """``air_jordan_11`` -> ``Air Jordan 11``: words capitalised, separators to spaces."""
    words = re.split(r"[_\-\s]+", label.strip())
    return " ".join(w if w.isdigit() else w[:1].upper() + w[1:] for w in words if w)


@dataclass(frozen=True)
class ClassInfo:
    """A class the model knows: its folder label and the name users see."""

    label: str
    display_name: str


@dataclass
class ModelInfo:
    """What a loaded model says about itself (from model.json)."""

    model_dir: Path
    backbone: str
    preprocessing: Preprocessing
    thresholds: dict
    metrics: dict
    config: dict
    version: str | None = None
    format_version: int = FORMAT_VERSION
    finetuned: bool = False
    footwear_method: str = "imagenet"
    created: str | None = None
    data: dict = field(default_factory=dict)
    open_set: dict = field(default_factory=dict)  # model.json's "open_set" block; empty for a model without one

    @property
    def open_outputs(self) -> tuple[str, ...]:
        """The head's outputs after the classes (``ml.verdicts.OPEN_SET_OUTPUTS``), none for most models."""
        return tuple(self.open_set.get("outputs", ()))


def read_model_json(model_dir: Path) -> dict:
    """model.json as a dict, with a clear error when the directory is not a model."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise ModelDirError(f"not a model directory (no {MODEL_JSON}): {model_dir}")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelDirError(f"{path}: format version {meta.get('format_version')} is newer than this code "
                            f"({FORMAT_VERSION})")
    return meta


def model_info(model_dir: Path, meta: dict) -> ModelInfo:
    """ModelInfo from model.json's contents."""
    return ModelInfo(
        model_dir=Path(model_dir), backbone=meta["backbone"]["name"],
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]), thresholds=dict(meta["thresholds"]),
        metrics=meta.get("metrics", {}), config=meta.get("config", {}), version=meta.get("version"),
        format_version=int(meta["format_version"]), finetuned=bool(meta["backbone"].get("finetuned")),
        footwear_method=meta.get("footwear", {}).get("method", "imagenet"), created=meta.get("created"),
        data=meta.get("data", {}), open_set=meta.get("open_set", {}),
    )


def classes_of(meta: dict) -> list[ClassInfo]:
    """The class list with display names."""
    return [ClassInfo(c["label"], c.get("display_name") or display_name(c["label"])) for c in meta["classes"]]


def labels_of(meta: dict) -> list[str]:
    """The class labels in model order (a bare list of labels, as hand-made test models have, is read too)."""
    return [c["label"] if isinstance(c, dict) else str(c) for c in meta.get("classes", [])]


def open_outputs(meta: dict) -> tuple[str, ...]:
    """The head outputs after the classes in a model trained with negatives (model.json's ``open_set``).

    Why they are not classes: "some other sneaker" and "some other shoe" are never an answer
    users can pick, so ``classes`` (and everything built from it) keeps the known models only.
    """
    return tuple(meta.get("open_set", {}).get("outputs", ()))


def head_outputs(meta: dict) -> list[str]:
    """Every row of the head in order: the class labels, then the open-set outputs."""
    return [*labels_of(meta), *open_outputs(meta)]


def backbone_name(meta: dict) -> str:
    """The backbone's name ("unknown" when model.json does not say)."""
    backbone = meta.get("backbone", "unknown")
    return backbone.get("name", "unknown") if isinstance(backbone, dict) else str(backbone)


def save_centroids(model_dir: Path, centroids: np.ndarray) -> str:
    """Write centroids.npy (fp16, one row per class in model order); returns its file name."""
    np.save(Path(model_dir) / CENTROIDS_FILE, np.asarray(centroids, dtype=np.float16))
    return CENTROIDS_FILE


def load_centroids(model_dir: Path, meta: dict) -> np.ndarray | None:
    """The class centroids (float32, rows L2-normalised), or None for a model without them."""
    name = meta.get("files", {}).get("centroids")
    if not name:
        return None
    centroids = np.load(Path(model_dir) / name)
    if centroids.shape[0] != len(meta["classes"]):
        raise ModelDirError(f"{model_dir}: {name} has {centroids.shape[0]} rows for {len(meta['classes'])} classes")
    return as_shipped(centroids)


def as_shipped(centroids: np.ndarray) -> np.ndarray:
    """Centroids as the Predictor uses them: through fp16 (as stored), float32, rows L2-normalised.

    Finalising calls this too, so the thresholds calibrated on val see exactly the shipped values.
    """
    rows = np.asarray(centroids, dtype=np.float16).astype(np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def weights_fingerprint(model_dir: Path, meta: dict) -> str:
    """sha1 over the weight files and model.json: the key of a cached ONNX build."""
    digest = hashlib.sha1()
    for name in [MODEL_JSON, *[f for f in meta.get("files", {}).values() if f and f.endswith(".pt")]]:
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def write_model_json(model_dir: Path, meta: dict) -> Path:
    """Write model.json (pretty, stable key order)."""
    path = Path(model_dir) / MODEL_JSON
    path.write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
