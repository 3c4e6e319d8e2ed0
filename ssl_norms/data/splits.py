"""Dataset splits as pure index functions, and the config block that applies them to a DataModule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# The paper's long-tailed training sets: class i keeps int(n_max * base^-i) images.
IMBALANCE_PRESETS: dict[str, tuple[int, float]] = {
    "cifar10": (5000, 1.5),  # 5000, 3333, 2222, 1481, 987, 658, 438, 292, 195, 130 = 14,736 images
    "cifar100": (500, 1.034),  # 500, 483, ..., 18 = 14,620 images
    # the paper code's base (SSLEmbeddingNorms CLA/utils/data_utils.py:171): 500, 483, ..., 18 = 14,750 images
    "cifar100_released": (500, 1.03365),
}


def imbalanced_counts(num_classes: int, n_max: int, base: float) -> list[int]:
    """n_i = int(n_max * base^-i) for i = 0 .. num_classes - 1."""
    return [int(n_max * base ** (-i)) for i in range(num_classes)]


def exponential_imbalance(
    targets: Tensor | Sequence[int], n_max: int, base: float, order: Sequence[int] | None = None, pick: str = "first", seed: int = 0
) -> Tensor:
    """Indices (ascending) of an exponentially imbalanced subset of a labelled dataset.

    The class at position i of ``order`` (default 0, 1, ..., K-1 with K = max label + 1) keeps
    n_i = int(n_max * base^-i) samples: with ``pick="first"`` the first n_i in dataset order (the
    paper's choice), with ``pick="random"`` a random subset drawn from ``seed``. A class that would
    keep no sample, or has fewer than n_i, is an error.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.ndim != 1 or len(targets) == 0:
        raise ValueError("exponential_imbalance needs a non-empty 1-d sequence of integer labels")
    if n_max < 1 or not base >= 1:
        raise ValueError(f"imbalance needs n_max >= 1 and base >= 1, got n_max={n_max}, base={base}")
    if pick not in ("first", "random"):
        raise ValueError(f"imbalance pick must be 'first' or 'random', got {pick!r}")
    num_classes = int(targets.max()) + 1
    order = list(range(num_classes)) if order is None else [int(c) for c in order]
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"imbalance order must list each of the classes 0..{num_classes - 1} once, got {order}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for i, (cls, n) in enumerate(zip(order, imbalanced_counts(num_classes, n_max, base))):
        members = (targets == cls).nonzero().flatten()
        if n < 1:
            raise ValueError(
                f"imbalance leaves class {cls} (position {i}) empty: int({n_max} * {base}^-{i}) = 0; raise n_max or lower base"
            )
        if len(members) < n:
            raise ValueError(f"imbalance wants {n} samples of class {cls} but the dataset has {len(members)}; lower n_max")
        if pick == "first":
            chosen.append(members[:n])
        else:
            chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


@dataclass
class Imbalance:
    """The ``imbalance:`` block of a DataModule config: an exponentially imbalanced training set.

    Either a ``preset`` (``cifar10``: n_max 5000, base 1.5; ``cifar100``: n_max 500, base 1.034) or
    ``n_max`` and ``base``; explicit values override the preset's. ``order``: class ranking (most
    frequent first; default by label); ``pick``: ``first`` (dataset order) or ``random`` (seeded).
    """

    preset: str | None = None
    n_max: int | None = None
    base: float | None = None
    order: list[int] | None = None
    pick: str = "first"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in IMBALANCE_PRESETS:
            raise ValueError(f"unknown imbalance preset {self.preset!r}; use one of {sorted(IMBALANCE_PRESETS)} or give n_max and base")
        preset_n_max, preset_base = IMBALANCE_PRESETS.get(self.preset, (None, None))
        self.n_max = self.n_max if self.n_max is not None else preset_n_max
        self.base = self.base if self.base is not None else preset_base
        if self.n_max is None or self.base is None:
            raise ValueError("the imbalance block needs a preset (cifar10, cifar100) or both n_max and base")

    def indices(self, targets: Tensor) -> Tensor:
        return exponential_imbalance(targets, self.n_max, self.base, self.order, self.pick, self.seed)
