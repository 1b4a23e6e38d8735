"""Knowledge distillation from a trained model directory into a new run (``--teacher DIR``).

Why: a cheaper model (a smaller input, fewer fine-tuned blocks) learns more from a model that
already knows these sneakers than from the noisy folder labels alone. The teacher's soft answer
says which models a photo resembles ("an Air Jordan 11 that could be a 12"), and on a photo filed
under the wrong folder it disagrees with the label, which softens the damage.

The teacher sees each training view at its own resolution; the student sees the same view
resized to its input size, so both answer about exactly the same pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ml.backbones import Preprocessing

log = logging.getLogger(__name__)

TEMPERATURE = 2.0


class Teacher:
    """A frozen model directory's class logits, in the order of the student's classes."""

    def __init__(self, model_dir: Path, classes: list[str], preprocessing: Preprocessing) -> None:
        from ml.artifacts import load_net, read_model_json
        from ml.backbones import Preprocessing

        meta = read_model_json(model_dir)
        own = Preprocessing.from_dict(meta["preprocessing"])
        if (own.mean, own.std, own.resize) != (preprocessing.mean, preprocessing.std, preprocessing.resize):
            raise ValueError(f"--teacher {model_dir}: its preprocessing ({own.resize}, mean {own.mean}) "
                             f"differs from this run's ({preprocessing.resize}, mean {preprocessing.mean})")
        labels = [c["label"] for c in meta["classes"]]
        missing = sorted(set(classes) - set(labels))
        if missing:
            raise ValueError(f"--teacher {model_dir} does not know {', '.join(missing)}: "
                             "distill from a model trained on every class of this run")
        self.size = own.size
        self.order = torch.tensor([labels.index(c) for c in classes])
        self.net = load_net(model_dir, meta).eval().to(memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)
        log.info("teacher %s: %d px, %d classes", model_dir, self.size, len(labels))

    def to(self, device: torch.device) -> Teacher:
        self.net, self.order = self.net.to(device), self.order.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch at the teacher's size (eval mode: no dropout, BatchNorm frozen)."""
        return self.net.head(self.net.backbone(images)).index_select(1, self.order)


def student_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The batch at the student's input size (area-weighted when shrinking, as a photo resize would)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return resized.contiguous(memory_format=torch.channels_last)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) on softened answers.

    Scaled by T^2 so its gradients match cross-entropy's (Hinton et al.).
    """
    t = temperature
    return nn.functional.kl_div(nn.functional.log_softmax(student / t, dim=1),
                                nn.functional.log_softmax(teacher / t, dim=1),
                                log_target=True, reduction="batchmean") * t * t
