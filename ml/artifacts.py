"""The model directory: read and write.

```
model.json     format version, backbone, preprocessing, classes + display names, thresholds,
               metrics (val, test), resolved config, data snapshot, training history
head.pt        classifier head + footwear scorer state
backbone.pt    fine-tuned backbone weights (fp16), only when the backbone was trained
centroids.npy  L2-normalised mean embedding per class (fp16), for the "familiar" verdict rule
carried.npz    backbone features of its train/val/test photos (8 bit), what a head retrain needs (ml.carried)
audit.csv      the label audit's flagged photos, when one was applied
model.onnx     backbone + head + footwear in one graph (or built on first load into a cache)
plots/*.png    curves.png, confusion.png, examples.png
README.md      how it was made and its test metrics
```

The class list lives only here (fastai's habit): the app never keeps its own. Every file a
model.json names is inside the directory: a model copied anywhere works, and retrains, as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ml.backbones import Backbone, Preprocessing, create_backbone
from ml.errors import ModelDirError
from ml.model import CentroidFootwear, Classifier, ImageNetFootwear, SneakerNet

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


def read_model_json(model_dir: Path) -> dict:
    """model.json as a dict, with a clear error when the directory is not a model."""
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise ModelDirError(f"not a model directory (no {MODEL_JSON}): {model_dir}")
    meta = json.loads(path.read_text())
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
        data=meta.get("data", {}),
    )


def classes_of(meta: dict) -> list[ClassInfo]:
    """The class list with display names."""
    return [ClassInfo(c["label"], c.get("display_name") or display_name(c["label"])) for c in meta["classes"]]


def save_weights(model_dir: Path, net: SneakerNet, *, finetuned: bool) -> dict:
    """Write head.pt (and backbone.pt in fp16 when the backbone was trained); returns file names."""
    model_dir.mkdir(parents=True, exist_ok=True)
    head = {"head": net.head.state_dict(), "feature_dim": net.head.fc.in_features,
            "n_classes": net.head.fc.out_features, "dropout": net.head.dropout.p,
            "footwear": net.footwear.state_dict(), "footwear_method": net.footwear.method}
    torch.save(head, model_dir / HEAD_FILE)
    files = {"head": HEAD_FILE, "backbone": None}
    if finetuned:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.backbone.state_dict().items()}
        torch.save({"state_dict": state, "finetune_state": net.backbone.finetune_state()}, model_dir / BACKBONE_FILE)
        files["backbone"] = BACKBONE_FILE
    return files


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


def round_to_fp16(backbone: Backbone) -> None:
    """Round float weights through fp16 in place, so metrics describe exactly what is shipped."""
    with torch.no_grad():
        for tensor in [*backbone.parameters(), *backbone.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def load_net(model_dir: Path, meta: dict | None = None) -> SneakerNet:
    """Rebuild the full SneakerNet (eval mode) from a model directory."""
    model_dir = Path(model_dir)
    meta = meta or read_model_json(model_dir)
    files = meta.get("files", {})
    name = meta["backbone"]["name"]
    backbone_file = files.get("backbone")
    if backbone_file:
        saved = torch.load(model_dir / backbone_file, map_location="cpu", weights_only=False)
        backbone = create_backbone(name, pretrained=False)
        if hasattr(backbone, "restore_finetune"):
            backbone.restore_finetune(saved.get("finetune_state", {}))
        backbone.load_state_dict({k: v.float() if v.is_floating_point() else v
                                  for k, v in saved["state_dict"].items()})
    else:
        backbone = create_backbone(name, pretrained=True)
    head_state = _head_state(model_dir, meta)
    head = load_head(model_dir, meta, head_state)
    if head_state.get("footwear_method", "imagenet") == "centroid":
        footwear = CentroidFootwear(head_state["footwear"]["centroids"])
    else:
        footwear = ImageNetFootwear(head_state["footwear"]["indices"].tolist())
    if len(meta["classes"]) != head_state["n_classes"]:
        raise ModelDirError(f"{model_dir}: model.json lists {len(meta['classes'])} classes, "
                            f"head.pt has {head_state['n_classes']}")
    return SneakerNet(backbone, head, footwear).eval()


def _head_state(model_dir: Path, meta: dict) -> dict:
    return torch.load(Path(model_dir) / meta.get("files", {}).get("head", HEAD_FILE), map_location="cpu",
                      weights_only=False)


def load_head(model_dir: Path, meta: dict, state: dict | None = None) -> Classifier:
    """The classifier head alone (eval mode): a retrain scores carried features with it, no backbone needed."""
    state = state or _head_state(model_dir, meta)
    head = Classifier(state["feature_dim"], state["n_classes"], state.get("dropout", 0.0))
    head.load_state_dict(state["head"])
    return head.eval()


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
