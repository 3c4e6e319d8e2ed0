"""Datasets that yield the batch dicts every ssl-norms method reads.

Training items: ``{"views": [view, ...], "label", "index"}``; evaluation items:
``{"image", "label", "index"}``. The index is the sample's position in the full dataset, so
evaluation results can be joined to per-sample metadata and de-duplicated across ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset


class InMemoryImages(Dataset):
    """Decoded uint8 images (N, C, H, W) held in memory, with labels.

    ``num_views=None`` gives evaluation items (one transformed image); an int gives that many
    independently augmented views per item. ``indices`` restricts the dataset to those positions
    (a split or subset) without copying the images.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor], num_views: int | None = None, indices: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"InMemoryImages needs uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform, self.num_views = images, labels.long(), transform, num_views
        self.indices = torch.arange(len(images)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        image, label = self.images[j], self.labels[j]
        if self.num_views is None:
            return {"image": self.transform(image), "label": label, "index": j}
        return {"views": [self.transform(image) for _ in range(self.num_views)], "label": label, "index": j}
