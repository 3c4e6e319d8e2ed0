"""Cross-rank helpers: the global batch for losses (InfoNCE negatives), rows of unequal length for
evaluation (k-NN banks, norm statistics), the same buffers on every rank."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from lightning import LightningModule


def world_size() -> int:
    """Number of ranks in the default process group (1 when not running distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_gather_with_grad(t: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``t`` from all ranks along dim 0, keeping gradients to every rank's input.

    Returns ``(global_tensor, offset)`` where ``global_tensor[offset : offset + len(t)]`` are this
    rank's rows. The backward of ``torch.distributed.nn.functional.all_gather`` sums the gradients
    that all ranks send to a rank's slice, so each rank's local tensor receives the gradient of the
    sum of all ranks' losses; DDP's averaging then makes the parameter gradients exact.

    Every rank must pass a tensor of the same shape (equal local batch sizes): the collective
    assumes it and checking would cost an extra communication, so it is not checked here.
    Without an initialised process group, or with a single rank, returns ``(t, 0)``.
    """
    if t.ndim == 0:
        raise ValueError("all_gather_with_grad needs a tensor with a batch dimension; pass t of shape (n, ...)")
    if world_size() == 1:
        return t, 0
    # Imported lazily: the module pulls in distributed autograd machinery not needed single-process.
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.14 marks it deprecated (FutureWarning) but it is the public collective with autograd.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*", category=FutureWarning)
        parts = all_gather(t)
    return torch.cat(parts, dim=0), dist.get_rank() * t.shape[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` (BatchNorm running statistics, ...) from rank ``src`` to all ranks.

    DDP does this before each *training* forward, but each rank then updates its running statistics
    with its own batch, so after a training step the ranks' eval-mode models differ (unless
    SyncBatchNorm is on). Evaluation that shards data over ranks calls this first, so every rank
    evaluates the same model. No-op single-process.
    """
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def all_gather_rows(pl_module: LightningModule, tensor: Tensor) -> Tensor:
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


def gather_unique(pl_module: LightningModule, index: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows of every rank (:func:`all_gather_rows`), once per sample index (:func:`unique_by_index`):
    a sharded evaluation pass gathered into what a single process would have seen."""
    return unique_by_index(*(all_gather_rows(pl_module, t) for t in (index, *tensors)))
