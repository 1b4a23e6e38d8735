"""Paired train/eval presets (torchvision references style); inference always uses the eval preset."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from ml.degrade import PHONE_P, phone
from ml.preprocessing import EvalArrayTransform, Preprocessing, eval_array_transform  # noqa: F401 - public here too


def _resize(prep: Preprocessing) -> T.Transform:
    """Resize so that a ``prep.size`` crop is ``crop_pct`` of the image."""
    outer = int(round(prep.size / prep.crop_pct))
    if prep.resize == "squash":
        return T.Resize((outer, outer), antialias=True)
    return T.Resize(outer, antialias=True)


def _to_tensor(prep: Preprocessing) -> list[T.Transform]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(prep.mean, prep.std)]


def train_transform(
    prep: Preprocessing,
    *,
    hflip: float = 0.5,
    jitter: float = 0.3,
    random_crop: bool = True,
) -> T.Compose:
    """The original project's augmentations: colour jitter, resize, random crop, horizontal flip."""
    steps: list[T.Transform] = [_resize(prep)]
    steps.append(T.RandomCrop(prep.size) if random_crop else T.CenterCrop(prep.size))
    if hflip:
        steps.append(T.RandomHorizontalFlip(hflip))
    if jitter:
        steps.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10))
    return T.Compose(steps + _to_tensor(prep))


AUGMENTATIONS = ("standard", "strong", "phone")


def strong_train_transform(prep: Preprocessing, *, jitter: float = 0.3) -> T.Compose:
    """More varied views for a model that fits its train set: random-resized crops, flips,
    colour jitter and random erasing (a patch hidden, as a hand or a shoelace would).

    Why: fine-tuned on a few thousand scraped photos the network reaches ~99% on train and
    ~84% on val; harder views are the cheap regulariser.
    """
    return T.Compose([
        T.RandomResizedCrop((prep.size, prep.size), scale=(0.35, 1.0), ratio=(0.6, 1.67), antialias=True),
        T.RandomHorizontalFlip(0.5),
        T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10),
        *_to_tensor(prep),
        T.RandomErasing(p=0.25, scale=(0.02, 0.15), value=0.0),
    ])


class PhoneDegradations:
    """``ml.degrade.phone`` as a transform of PIL images: each degradation with chance ``p``.

    Its generator is seeded from torch's, as torchvision's random transforms draw theirs: each
    photo gets its own draw, and a run is reproducible from its seed (``torch.manual_seed``, and the
    seeded DataLoader generator that seeds each worker's torch). It holds no state, so it pickles
    into DataLoader workers.
    """

    def __init__(self, p: float = PHONE_P) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        seed = int(torch.randint(0, 2**63 - 1, ()).item())
        return phone(image, np.random.default_rng(seed), self.p)


def phone_train_transform(prep: Preprocessing, *, p: float = PHONE_P) -> T.Compose:
    """Photos as people take them: phone degradations (small in the frame, at an angle, blurred,
    dim, a colour cast, a thumbnail, recompressed; ``ml.degrade``) on the whole photo, as the
    camera and the messenger make them, then the ``strong`` preset's views.

    Why: the scraped train photos are clean product shots; users send phone photos, and a model
    that never saw one loses points on them (``bench.robustness``).
    """
    return T.Compose([PhoneDegradations(p), strong_train_transform(prep)])


def augmentation(name: str, prep: Preprocessing) -> T.Compose:
    """The train preset by name (``TrainConfig.augment``)."""
    if name == "phone":
        return phone_train_transform(prep)
    if name == "strong":
        return strong_train_transform(prep)
    if name == "standard":
        return train_transform(prep)
    raise ValueError(f"unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)}")


def eval_transform(prep: Preprocessing) -> EvalTransform:
    """Resize and centre crop, as a tensor: shared by evaluation and calibration. Inference runs
    the same preset as a NumPy array (``eval_array_transform``), without torch."""
    return EvalTransform(prep)


def torchvision_eval_transform(prep: Preprocessing) -> T.Compose:
    """The eval preset as torchvision transforms: the reference ``EvalTransform`` must match."""
    return T.Compose([_resize(prep), T.CenterCrop(prep.size), *_to_tensor(prep)])


class EvalTransform(EvalArrayTransform):
    """The eval preset (``ml.preprocessing.EvalArrayTransform``) returning a tensor, for training code.

    The same numbers as ``torchvision_eval_transform`` (a test holds them together), in PIL and
    NumPy; the Predictor uses the array itself (``eval_array_transform``), without torch.
    """

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(super().__call__(image))
