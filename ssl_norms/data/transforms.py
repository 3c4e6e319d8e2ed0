"""Augmentations (torchvision.transforms.v2 on uint8 tensors).

Training sets use the batched equivalent of ``simclr_augmentation`` in ``augment.py``; the
per-sample version here is the reference it is tested against and the benchmark's baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def simclr_augmentation(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    jitter_strength: float = 0.5,
    min_scale: float = 0.2,
    grayscale_p: float = 0.2,
    jitter_p: float = 0.8,
) -> v2.Compose:
    """One SimCLR view: random resized crop (scale [min_scale, 1]), horizontal flip, colour jitter
    (brightness/contrast/saturation 0.8 s, hue 0.2 s) with p=0.8, grayscale p=0.2. s=0.5 on CIFAR."""
    s = jitter_strength
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=jitter_p),
            v2.RandomGrayscale(p=grayscale_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def eval_transform(mean: Sequence[float], std: Sequence[float], size: int | None = None, rgb: bool = False) -> v2.Compose:
    """No augmentation: optional resize (shorter side) and central crop, grey to 3 channels with
    ``rgb``, then scale to [0, 1] and normalise."""
    steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)] if size is not None else []
    if rgb:
        steps.append(v2.RGB())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
