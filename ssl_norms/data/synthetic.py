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
