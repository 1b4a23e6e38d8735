"""The served network: backbone + classifier head + footwear scorer in one module.

One module means one PyTorch fallback and ONNX graphs with the same semantics:
``forward(x) -> (probs [N, C], embedding [N, D] L2-normalised, footwear [N])``. When the
footwear score comes from a frozen ImageNet branch of its own (a partial fine-tune), the
module also runs in two parts, ``classify(x) -> (probs, embedding, shared)`` and
``gate(shared) -> footwear``, so that branch can be skipped for photos the model knows.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.backbones import Backbone

# ImageNet-1k indices whose probability mass says "this is footwear".
IMAGENET_FOOTWEAR: dict[int, str] = {
    502: "clog",
    514: "cowboy boot",
    630: "Loafer",
    770: "running shoe",
    774: "sandal",
}


class Classifier(nn.Module):
    """Dropout + linear layer over backbone features."""

    def __init__(self, feature_dim: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(feats))


class ImageNetFootwear(nn.Module):
    """Probability mass of the ImageNet head on footwear classes."""

    method = "imagenet"

    def __init__(self, indices: list[int] | None = None) -> None:
        super().__init__()
        self.register_buffer("indices", torch.tensor(indices or sorted(IMAGENET_FOOTWEAR), dtype=torch.long))

    def forward(self, imagenet_logits: torch.Tensor | None, embedding: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(imagenet_logits, dim=1)
        return probs.index_select(1, self.indices).sum(dim=1)


class CentroidFootwear(nn.Module):
    """For backbones without an ImageNet head: cosine similarity to the nearest class centroid.

    Honest but weaker: it says "looks like the sneakers I was trained on", not "is footwear".
    """

    method = "centroid"

    def __init__(self, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centroids", nn.functional.normalize(centroids.float(), dim=1))

    def forward(self, imagenet_logits: torch.Tensor | None, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding @ self.centroids.T).max(dim=1).values.clamp(min=0.0)


def make_footwear(backbone: Backbone, centroids: torch.Tensor | None = None,
                  indices: list[int] | None = None) -> nn.Module:
    """ImageNet mass where the backbone has that head, centroids otherwise."""
    if backbone.has_imagenet_head:
        return ImageNetFootwear(indices)
    if centroids is None:
        raise ValueError(f"backbone {backbone.name!r} has no ImageNet head: centroids are needed")
    return CentroidFootwear(centroids)


class SneakerNet(nn.Module):
    """Everything inference needs, as one module (exported as one ONNX graph)."""

    def __init__(self, backbone: Backbone, head: Classifier, footwear: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head, self.footwear = backbone, head, footwear

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(self.footwear, ImageNetFootwear):
            feats, imagenet = self.backbone.features_and_imagenet(x)
        else:
            feats, imagenet = self.backbone(x), None
        probs, embedding = self._answer(feats)
        return probs, embedding, self.footwear(imagenet, embedding)

    @property
    def has_gate(self) -> bool:
        """True when the footwear score has its own branch, which ``gate`` runs apart."""
        return isinstance(self.footwear, ImageNetFootwear) and self.backbone.separate_imagenet_branch

    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probs, embedding, shared trunk output) without the footwear branch (needs ``has_gate``)."""
        feats, shared = self.backbone.split_features(x)
        return (*self._answer(feats), shared)

    def gate(self, shared: torch.Tensor) -> torch.Tensor:
        """The footwear score from ``classify``'s shared output (needs ``has_gate``)."""
        return self.footwear(self.backbone.imagenet_from_shared(shared), None)

    def _answer(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.softmax(self.head(feats), dim=1), nn.functional.normalize(feats, dim=1)
