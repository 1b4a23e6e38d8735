"""The model directory: read and write.

```
model.json     format version, backbone, preprocessing, classes + display names, thresholds,
               metrics (val, test), resolved config, data snapshot, training history
head.pt        classifier head (one row per class, then the open-set outputs, if any) + footwear scorer state
backbone.pt    fine-tuned backbone weights (fp16), only when the backbone was trained
centroids.npy  L2-normalised mean embedding per class (fp16), for the "familiar" verdict rule
carried.npz    backbone features of its train/val/test photos (8 bit), what a head retrain needs (ml.carried),
               and of its negatives' photos when it has open-set outputs (model.json "open_set")
audit.csv      the label audit's flagged photos, when one was applied
model.onnx     backbone + head + footwear in one graph (or built on first load into a cache)
plots/*.png    curves.png, confusion.png, examples.png
README.md      how it was made and its test metrics
```

The class list lives only here (fastai's habit): the app never keeps its own. Every file a
model.json names is inside the directory: a model copied anywhere works, and retrains, as it is.

model.json itself (reading, writing, the file names, the class list, the centroids) is
``ml.model_json``, which needs no torch: the bot serves a model without it. This module adds
the weights (torch) and re-exports those names, so ``ml.artifacts`` stays the one way in for
training code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ml.backbones import Backbone, create_backbone
from ml.errors import ModelDirError
from ml.model import CentroidFootwear, Classifier, ImageNetFootwear, SneakerNet
from ml.model_json import (  # noqa: F401 - re-exported: model.json's names, torch-free, from their own module
    AUDIT_FILE,
    BACKBONE_FILE,
    CENTROIDS_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    MODEL_JSON,
    ONNX_FILE,
    ClassInfo,
    ModelInfo,
    _json_default,
    as_shipped,
    backbone_name,
    classes_of,
    dir_size,
    display_name,
    head_outputs,
    labels_of,
    load_centroids,
    model_info,
    open_outputs,
    read_model_json,
    save_centroids,
    weights_fingerprint,
    write_model_json,
)
from ml.preprocessing import Preprocessing  # noqa: F401 - re-exported, as before


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
    if len(head_outputs(meta)) != head_state["n_classes"]:
        raise ModelDirError(f"{model_dir}: model.json lists {len(meta['classes'])} classes and "
                            f"{len(open_outputs(meta))} open-set outputs, head.pt has {head_state['n_classes']} rows")
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
