"""Gathering rows of unequal length from every rank (k-NN banks, evaluation sets)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


def all_gather_rows(pl_module: L.LightningModule, tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (rows may differ in count per rank) from all ranks, in rank order.

    ``LightningModule.all_gather`` needs equal shapes, so rows are padded to the largest count
    and the padding dropped after the gather. Single process: returns ``tensor`` unchanged.
    """
    if pl_module.trainer.world_size == 1:
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = pl_module.all_gather(count).flatten().tolist()
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = pl_module.all_gather(padded)  # (world, max_count, ...)
    return torch.cat([gathered[r, :n] for r, n in enumerate(counts)])


def unique_by_index(index: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Keep the first row of every sample index: distributed samplers repeat samples to pad shards."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    chosen = order[keep]
    return (index[chosen], *(t[chosen] for t in tensors))
