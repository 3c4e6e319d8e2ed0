"""EMA target networks (BYOL, IsoLoss with a target): a frozen copy that follows the online network.

The target is a submodule of the method, so it is saved and restored with the checkpoint's
``state_dict`` and an initialisation callback that rescales every parameter of the module
(CutInit) rescales the target with the online network. Its parameters have
``requires_grad=False``, which keeps them out of the optimizer (``SSLMethod.parameter_groups``
only takes trainable parameters). Only parameters follow the online network: the target runs in
training mode like the online branch, so its BatchNorm layers normalise with batch statistics and
their running averages (never used in training) are the target's own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssl_norms.methods.base import apply_to_views


def cosine_tau(step: int, total_steps: float, base_tau: float = 0.99, final_tau: float = 1.0) -> float:
    """BYOL's EMA coefficient at optimizer step ``step`` of ``total_steps``: ``base_tau`` at step 0,
    rising along a half cosine to ``final_tau`` at the end (and staying there after it)."""
    progress = min(1.0, step / total_steps) if total_steps > 0 and math.isfinite(total_steps) else 0.0
    return final_tau - (final_tau - base_tau) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMATarget(nn.Module):
    """A frozen deep copy of ``online`` modules (applied in sequence) that follows them by EMA.

    Args:
        online: the online modules the target copies and follows, in forward order
            (e.g. backbone, projector). They are referenced, not registered, so they appear once
            in the method's ``state_dict``.
        base_tau / final_tau: the cosine EMA schedule of :func:`cosine_tau`.
    """

    def __init__(self, online: Sequence[nn.Module], base_tau: float = 0.99, final_tau: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= base_tau <= final_tau <= 1.0:
            raise ValueError(f"EMA target needs 0 <= base_tau <= final_tau <= 1, got base_tau={base_tau}, final_tau={final_tau}")
        self.base_tau, self.final_tau = base_tau, final_tau
        self.network = nn.Sequential(*(copy.deepcopy(m) for m in online)).requires_grad_(False)
        self._online = list(online)  # a plain list: not registered as submodules

    def _online_parameters(self) -> list[Tensor]:
        return [p for module in self._online for p in module.parameters()]

    def parameter_twins(self) -> list[tuple[Tensor, Tensor]]:
        """(target parameter, the online parameter it follows) pairs, in order."""
        return list(zip(self.network.parameters(), self._online_parameters(), strict=True))

    @torch.no_grad()
    def forward(self, views: list[Tensor]) -> list[Tensor]:
        """Target outputs of each view (no gradient); same-shape views in one batched call."""
        return apply_to_views(self.network, views)

    def tau(self, step: int, total_steps: float) -> float:
        return cosine_tau(step, total_steps, self.base_tau, self.final_tau)

    @torch.no_grad()
    def update(self, tau: float) -> None:
        """``target <- tau * target + (1 - tau) * online`` for every parameter, in place."""
        # one fused call instead of a kernel per parameter (this runs every optimizer step)
        torch._foreach_lerp_(list(self.network.parameters()), self._online_parameters(), 1.0 - tau)

    @torch.no_grad()
    def copy_online(self) -> None:
        """Make the target equal to the online modules (parameters and buffers)."""
        online_buffers = [b for module in self._online for b in module.buffers()]
        for target, online in zip(self.network.parameters(), self._online_parameters(), strict=True):
            target.copy_(online)
        for target, online in zip(self.network.buffers(), online_buffers, strict=True):
            target.copy_(online)


class EMATargetHooks:
    """LightningModule hooks of a method with an ``EMATarget`` in ``self.target`` (or None).

    * ``on_train_start`` of a fresh fit (global step 0) copies the online network into the target,
      so the target starts from the network as any initialisation callback left it (the copy made
      in ``__init__`` already matches when such a callback rescales every parameter; this makes it
      hold whatever the callback does). Resumed fits keep the checkpoint's target.
    * ``optimizer_step`` updates the target once per optimizer step (so once per
      ``accumulate_grad_batches`` micro-batches) with tau at that step of
      ``trainer.estimated_stepping_batches``, and logs it as ``ema/tau``.

    Mixed in before :class:`SSLMethod`: ``class BYOL(EMATargetHooks, SSLMethod)``.
    """

    target: EMATarget | None

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.target is not None and self.trainer.global_step == 0:
            self.target.copy_online()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.target is not None:
            # Inside this hook global_step still counts the steps completed before this one.
            tau = self.target.tau(self.trainer.global_step, self.trainer.estimated_stepping_batches)
            self.target.update(tau)
            self.log("ema/tau", tau, on_step=True, on_epoch=False)
