"""GradScale: identity forward, backward scales each sample's gradient by its embedding norm^power.

Cosine losses give a sample's embedding a gradient whose size falls as 1/||z|| (Prop 3.1 of
Draganov et al. 2025), so large-norm embeddings learn slowly. Multiplying the gradient by
||z||^power undoes that (power=1 makes it norm-independent) without changing the loss value.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


class _GradScaleFn(torch.autograd.Function):
    """Identity in the forward pass on ``z``; ``grad_i * ||norm_source_i||^power`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, norm_source: Tensor, power: float) -> Tensor:
        ctx.save_for_backward(norm_source)
        ctx.power = power
        # A view rather than z itself: autograd then attaches this Function's grad_fn cleanly.
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (norm_source,) = ctx.saved_tensors
        # float32 norm: bf16/fp16 norms of wide embeddings lose precision and can overflow.
        scale = torch.linalg.vector_norm(norm_source.float(), dim=-1, keepdim=True).pow(ctx.power)
        return grad * scale.to(grad.dtype), None, None


def grad_scale(z: Tensor, power: float, norm_source: Tensor | None = None) -> Tensor:
    """Return ``z`` unchanged; its gradient is multiplied per row by ``||z_i||^power`` (norm over last dim).

    ``norm_source`` (same rows as ``z``, default ``z``) takes the norms from another tensor: IsoLoss
    feeds its loss the projector output z, whose gradient is the gradient w.r.t. its embedding
    ``p = z W_p``, and scales it by ``||p_i||``. ``power == 0`` returns ``z`` itself so that
    training is bit-identical to not using GradScale.
    """
    if not math.isfinite(power):
        raise ValueError(f"grad_scale power must be a finite number, got {power}")
    if z.ndim == 0:
        raise ValueError("grad_scale needs z with at least one dimension (the embedding dimension last)")
    source = z if norm_source is None else norm_source
    if source.shape[:-1] != z.shape[:-1]:
        raise ValueError(f"grad_scale needs norm_source with the rows of z, got {tuple(source.shape)} for z {tuple(z.shape)}")
    if power == 0:
        return z
    return _GradScaleFn.apply(z, source.detach(), float(power))
