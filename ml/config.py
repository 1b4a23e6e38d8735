"""``TrainConfig``: everything a training run depends on, saved resolved into model.json.

Its own module so that finalising a run (``ml.finalize``) can type its config without
importing the training loop that calls it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ml.backbones import Backbone

MODES = ("head", "finetune")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved resolved into model.json so a model says how it was made."""

    data_dir: str
    out_dir: str
    backbone: str = "efficientnet_lite0"
    mode: str = "finetune"
    epochs: int | None = None  # head: 200 full-batch steps x this; finetune: passes over train
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    image_size: int | None = None  # None: the backbone's own
    trainable_stages: int | None = None  # finetune: last N stages train (None: backbone default)
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    patience: int = 4
    aug_views: int = 2  # head mode: augmented views embedded per train image
    flip_view: bool = True  # head mode: also embed the mirrored image
    exclude_file: str | None = None  # csv/txt of sha1s to leave out of every split (label audit)
    init_from: str | None = None  # finetune: start from this model directory's weights (warm start)
    classes: list[str] | None = None  # train on these class folders only (None: all of them)
    augment: str = "phone"  # finetune train views: "phone" (strong + phone-photo degradations), "strong", "standard"
    distill_imagenet: float = 0.0  # finetune: weight of keeping the frozen ImageNet head's answer (a regulariser)
    teacher: str | None = None  # finetune: a model directory whose answers this run learns too (distillation)
    teacher_weight: float = 1.0  # finetune: weight of the teacher's answer against the folder labels
    cache_dir: str | None = None
    threads: int | None = None
    device: str | None = None
    pretrained: bool = True
    dropout: float = 0.2
    progress: bool = True
    target_precision: float = 0.9  # unsure threshold: confident answers must be this precise on val
    footwear_quantile: float = 0.02  # footwear threshold: this share of val sneakers may be "not_sneaker"
    familiar_quantile: float = 0.25  # "familiar" threshold: this share of val sneakers is less familiar
    open_quantile: float = 0.02  # "open" threshold: at most this share of val sneakers reach it (open-set models)
    negatives: str | None = None  # folder with sneakers/ and not_sneakers/: photos that are none of the classes
    holdout_groups: list[str] | None = None  # negative groups never trained on (None: ml.negatives' default)
    extra: dict = field(default_factory=dict)

    def resolved(self, backbone: Backbone) -> TrainConfig:
        """Fill the defaults that depend on the mode and the backbone."""
        cfg = TrainConfig(**asdict(self))
        if cfg.mode not in MODES:
            raise ValueError(f"unknown mode {cfg.mode!r}; use one of {', '.join(MODES)}")
        cfg.image_size = cfg.image_size or backbone.preprocessing.size
        if cfg.image_size % backbone.size_multiple:
            raise ValueError(f"{backbone.name} takes input sizes that are multiples of {backbone.size_multiple}, "
                             f"not {cfg.image_size}")
        if cfg.mode == "finetune":
            cfg.epochs = cfg.epochs or 10
            cfg.lr = cfg.lr or (3e-3 if backbone.from_scratch else 1e-3)
            if cfg.trainable_stages is None and not backbone.from_scratch:
                cfg.trainable_stages = DEFAULT_TRAINABLE.get(backbone.name)
        else:
            cfg.epochs = cfg.epochs or 300
            cfg.lr = cfg.lr or 3e-3
        return cfg


# Stages trained by default in finetune mode: EfficientNet-Lite0 blocks 8-15 + head conv.
DEFAULT_TRAINABLE: dict[str, int] = {"efficientnet_lite0": 9, "resnet18": 2}
