"""The paper's latent-class generator (Section 4.2 / Appendix B.2) as pure functions.

Class centres are uniform on the sphere S^(d-1); a sample of class i is N(c_i, sigma^2 I)
re-normalised to the sphere, then mapped to R^D by one fixed random matrix. Everything is
drawn from one seeded generator so the same arguments always give the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
import torch.nn.functional as F

from ssl_norms.data.base import SSLDataModule


@dataclass(frozen=True)
class LatentClasses:
    """A fixed latent-class world: centres on the sphere and the map into the ambient space."""

    centres: Tensor  # (k, d), unit rows
    mapping: Tensor  # (d, D)
    sigma: float

    @classmethod
    def create(cls, num_classes: int, latent_dim: int, ambient_dim: int, sigma: float, seed: int = 0) -> "LatentClasses":
        if num_classes < 1 or latent_dim < 2 or ambient_dim < 1:
            raise ValueError("LatentClasses needs num_classes >= 1, latent_dim >= 2 and ambient_dim >= 1")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        g = torch.Generator().manual_seed(seed)
        centres = F.normalize(torch.randn(num_classes, latent_dim, generator=g), dim=1)
        mapping = torch.randn(latent_dim, ambient_dim, generator=g) / latent_dim**0.5
        return cls(centres=centres, mapping=mapping, sigma=float(sigma))

    @property
    def num_classes(self) -> int:
        return self.centres.shape[0]

    def sample_latents(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Points on the sphere around the centres of ``labels``."""
        noise = torch.randn(len(labels), self.centres.shape[1], generator=generator) * self.sigma
        return F.normalize(self.centres[labels] + noise, dim=1)

    def jitter(self, latents: Tensor, scale: float, generator: torch.Generator | None = None) -> Tensor:
        """Small noise around given latents, kept on the sphere (a 'view' of the same sample)."""
        noise = torch.randn(latents.shape, generator=generator) * scale
        return F.normalize(latents + noise, dim=-1)

    def embed(self, latents: Tensor) -> Tensor:
        """Map sphere points into the ambient space R^D."""
        return latents @ self.mapping


def class_counts(num_samples: int, class_weights: list[float] | None, num_classes: int) -> list[int]:
    """Split ``num_samples`` over classes proportionally to ``class_weights`` (uniform if None)."""
    if class_weights is None:
        class_weights = [1.0] * num_classes
    if len(class_weights) != num_classes:
        raise ValueError(f"class_weights has {len(class_weights)} entries but there are {num_classes} classes")
    if any(w < 0 for w in class_weights) or sum(class_weights) <= 0:
        raise ValueError("class_weights must be non-negative with a positive sum")
    total = float(sum(class_weights))
    counts = [int(round(num_samples * w / total)) for w in class_weights]
    counts[0] += num_samples - sum(counts)  # rounding remainder goes to the first class
    return counts


def sample_dataset(
    world: LatentClasses, counts: list[int], seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``counts[i]`` samples of class i. Returns (ambient x, labels, latents), shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    latents = world.sample_latents(labels, generator=g)
    return world.embed(latents), labels, latents


class LatentViews(torch.utils.data.Dataset):
    """Training items of latent-class data. ``mode="class"``: the second view is another sample of
    the same class (the supervised-InfoNCE positive of Section 4); ``mode="noise"``: every view is
    the sample's latent jittered on the sphere by ``noise`` before the map to R^D.

    Views are made for a whole batch at once (``__getitems__``), which the DataLoader uses instead
    of one ``__getitem__`` per sample; ``collate_fn`` then passes the ready batch through.
    """

    def __init__(self, world: LatentClasses, latents: Tensor, labels: Tensor, mode: str, noise: float, num_views: int = 2) -> None:
        if mode not in ("class", "noise"):
            raise ValueError(f"view mode must be 'class' or 'noise', got {mode!r}")
        self.world, self.latents, self.labels, self.mode, self.noise, self.num_views = world, latents, labels, mode, noise, num_views
        self.ambient = world.embed(latents)
        # class members, to draw a same-class partner for every sample in one gather
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=world.num_classes)
        self.class_start = torch.cumsum(counts, 0) - counts
        self.class_count = counts

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> dict:
        index = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[index]
        if self.mode == "class":
            views = [self.ambient[index]]
            for _ in range(self.num_views - 1):
                offset = (torch.rand(len(index)) * self.class_count[labels]).long()
                views.append(self.ambient[self.order[self.class_start[labels] + offset]])
        else:
            views = [self.world.embed(self.world.jitter(self.latents[index], self.noise)) for _ in range(self.num_views)]
        return {"views": views, "label": labels, "index": index}

    def __getitem__(self, i: int) -> dict:
        batch = self.__getitems__([i])
        return {"views": [v[0] for v in batch["views"]], "label": batch["label"][0], "index": i}

    @staticmethod
    def collate_fn(batch: dict) -> dict:
        return batch


class LatentPoints(torch.utils.data.Dataset):
    """Evaluation items of latent-class data: the points themselves (no view sampling)."""

    def __init__(self, inputs: Tensor, labels: Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.inputs[i], "label": self.labels[i], "index": i}


class SyntheticLatentClasses(SSLDataModule):
    """The paper's Section 4.2 / Appendix B.2 data as a DataModule: needs no files, trains in
    seconds on a CPU, and shows the norm effects (frequent classes get larger norms).

    Args:
        num_classes / latent_dim / ambient_dim / sigma: the latent world (centres on S^(latent_dim-1),
            samples N(c, sigma^2 I) re-normalised, mapped to R^ambient_dim by a fixed random matrix).
        train_samples / val_samples: dataset sizes.
        class_weights: relative class frequencies of the training set (e.g. [8, 4, 2, 1]);
            None is balanced. Validation is always balanced.
        view_mode: ``class`` (a positive is another sample of the class) or ``noise``.
        view_noise: jitter scale on the sphere for ``noise`` views.
        seed: seeds the world and both datasets.
        **kwargs: see SSLDataModule (batch_size, num_workers, ...).
    """

    eval_set_name = "latent_val"

    def __init__(
        self,
        num_classes: int = 10,
        latent_dim: int = 16,
        ambient_dim: int = 64,
        sigma: float = 0.3,
        train_samples: int = 8192,
        val_samples: int = 2048,
        class_weights: list[float] | None = None,
        view_mode: str = "class",
        view_noise: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(num_workers=num_workers, seed=seed, **kwargs)
        if view_mode not in ("class", "noise"):
            raise ValueError(f"view_mode must be 'class' or 'noise', got {view_mode!r}")
        self.num_classes = num_classes
        self.world = LatentClasses.create(num_classes, latent_dim, ambient_dim, sigma, seed)
        self.train_counts = class_counts(train_samples, class_weights, num_classes)
        self.val_counts = class_counts(val_samples, None, num_classes)
        self.view_mode, self.view_noise = view_mode, view_noise
        self.input_dim = ambient_dim

    def build(self) -> None:
        _, train_labels, train_latents = sample_dataset(self.world, self.train_counts, self.seed + 1)
        val_x, val_labels, _ = sample_dataset(self.world, self.val_counts, self.seed + 2)
        self.train_set = LatentViews(self.world, train_latents, train_labels, self.view_mode, self.view_noise)
        self.bank_set = LatentPoints(self.train_set.ambient, train_labels)
        self.val_set = LatentPoints(val_x, val_labels)
