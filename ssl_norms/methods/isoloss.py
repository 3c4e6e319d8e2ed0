"""IsoLoss: BYOL-style learning with a closed-form linear predictor from the embedding correlation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.distributed import world_size
from ssl_norms.losses import directpred_predictor, iso_loss_cosine, iso_loss_euclidean, isotropic_predictor, negative_cosine
from ssl_norms.methods.base import SSLMethod, apply_to_views
from ssl_norms.methods.ema import EMATarget, EMATargetHooks
from ssl_norms.models import mlp_head

IsoLossKind = Literal["cosine", "euclidean", "directpred"]


class IsoLoss(EMATargetHooks, SSLMethod):
    """IsoLoss (Halvagal, Laborieux & Zenke, NeurIPS 2023), and DirectPred one flag away.
    Loss space = predictor output ``p = z W_p`` (z: projector output, D x D predictor W_p).

    Nothing in the predictor is learned. The correlation ``C`` (a checkpointed buffer) follows
    ``C <- tau C + (1 - tau) z^T z / N`` over the training batch (both views, z detached, not
    mean-centred; averaged over ranks under DDP so every rank holds the same C), updated only
    in training steps and before the predictor is computed, so the first step already has one.
    ``C`` starts at zero: since the predictor only sees C's normalised spectrum, this equals a
    bias-corrected running average. Before the first training step the predictor (and p) is zero.

    ``loss``:
        ``cosine``: :func:`~ssl_norms.losses.iso_loss_cosine`, whose gradient w.r.t. z is BYOL's
        gradient w.r.t. p (no extra multiplication by W_p).
        ``euclidean``: :func:`~ssl_norms.losses.iso_loss_euclidean`, gradient ``2 (p - zt)``.
        ``directpred``: DirectPred (Tian et al. 2021): p = z W from
        :func:`~ssl_norms.losses.directpred_predictor` (eps after the power) and BYOL's loss on p.
    Summed over both ordered view pairs; the cosine losses carry BYOL's factor 2 (``2 - 2 cos``).

    Target ``zt``: with ``ema_target`` the projector output of an EMA copy of backbone + projector
    (as in BYOL); without it the online projector output of the other view, stop-gradient (no
    second forward pass).

    GradScale and other loss-space hooks: the loss takes z, and the gradient it gives z *is* the
    gradient w.r.t. p, so the hooks wrap z with ``norm_source=p``: GradScale multiplies z's gradient
    by ``||p_i||^power``. Hooks must leave the forward value unchanged (GradScale does); for
    DirectPred the hooks wrap p like BYOL's predictor output.

    Args:
        projector_dims: sizes after the backbone (512 -> 4096 (BN, ReLU) -> 256 for ResNet-18).
        loss: ``cosine``, ``euclidean`` or ``directpred`` (above).
        ema_target: use an EMA target network (else the stop-gradient online network).
        correlation_tau: EMA coefficient of C; default 0.998 with an EMA target, 0.5 without.
        alpha: spectrum power of the predictor (``W_p = U diag(s^alpha) U^T``).
        eps: added to the normalised eigenvalues; default 0 (IsoLoss, before the power) or 0.1
            (DirectPred, after the power).
        base_tau / final_tau: the EMA target's cosine schedule (ignored without ``ema_target``).
        correlation_update: ``step`` (one update of C with both views, then one predictor) or
            ``view`` (as the released code, implicit-var-reg ``solo/methods/directpred.py:144-201``: C is
            updated with each view in turn and each view's p uses the C right after its own update).
        correlation_in_validation: also update C with every batch of the main validation set (the
            released code's validation runs the same forward, ``solo/methods/base.py:453-465``).
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    def __init__(
        self,
        projector_dims: Sequence[int] = (4096, 256),
        loss: IsoLossKind = "cosine",
        ema_target: bool = True,
        correlation_tau: float | None = None,
        alpha: float = 0.5,
        eps: float | None = None,
        base_tau: float = 0.99,
        final_tau: float = 1.0,
        correlation_update: Literal["step", "view"] = "step",
        correlation_in_validation: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss not in ("cosine", "euclidean", "directpred"):
            raise ValueError(f"IsoLoss loss must be 'cosine', 'euclidean' or 'directpred', got {loss!r}")
        if correlation_update not in ("step", "view"):
            raise ValueError(f"IsoLoss correlation_update must be 'step' or 'view', got {correlation_update!r}")
        self.correlation_update, self.correlation_in_validation = correlation_update, correlation_in_validation
        self.correlation_tau = (0.998 if ema_target else 0.5) if correlation_tau is None else correlation_tau
        if not 0.0 <= self.correlation_tau < 1.0:
            raise ValueError(f"IsoLoss correlation_tau must be in [0, 1), got {self.correlation_tau}")
        if not alpha > 0:
            raise ValueError(f"IsoLoss alpha must be > 0, got {alpha}")
        self.eps = (0.1 if loss == "directpred" else 0.0) if eps is None else eps
        if not self.eps >= 0:
            raise ValueError(f"IsoLoss eps must be >= 0, got {self.eps}")
        self.loss_kind, self.alpha = loss, alpha
        self.projector = mlp_head([self.feature_dim, *projector_dims])
        dim = projector_dims[-1]
        self.register_buffer("correlation", torch.zeros(dim, dim))
        self._predictor_cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None
        self.target = EMATarget([self.backbone, self.projector], base_tau, final_tau) if ema_target else None

    # ---- closed-form predictor -----------------------------------------------------------------
    def closed_form_predictor(self) -> tuple[Tensor, Tensor]:
        """``(W_p, W_p^(1/2))`` from the current correlation (float32; W_p^(1/2) unused by DirectPred).

        Cached until C changes (any in-place update, checkpoint load or device move changes the key),
        so validation and k-NN batches share one eigendecomposition. Inference-mode results are
        cached apart: they must never reach a training graph."""
        key = (self.correlation._version, self.correlation.data_ptr(), torch.is_inference_mode_enabled())
        if self._predictor_cache is None or self._predictor_cache[0] != key:
            if self.loss_kind == "directpred":
                w = directpred_predictor(self.correlation, self.alpha, self.eps)
                predictor = (w, w)
            else:
                predictor = isotropic_predictor(self.correlation, self.alpha, self.eps)
            self._predictor_cache = (key, predictor)
        return self._predictor_cache[1]

    @torch.no_grad()
    def update_correlation(self, z: Tensor) -> None:
        """One EMA step of C with the batch ``z^T z / N`` averaged over ranks."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.detach().float()
            batch = z.T @ z / len(z)
        if world_size() > 1:
            dist.all_reduce(batch)  # sum over ranks ...
            batch /= world_size()  # ... into the mean, identical on every rank
        self.correlation.mul_(self.correlation_tau).add_(batch, alpha=1.0 - self.correlation_tau)

    def embed_features(self, features: Tensor) -> Tensor:
        w_p, _ = self.closed_form_predictor()
        z = self.projector(features)
        with torch.autocast(device_type=z.device.type, enabled=False):  # p in float32, like the loss
            return z.float() @ w_p

    # ---- training ------------------------------------------------------------------------------
    def _targets(self, views: list[Tensor], z: list[Tensor]) -> list[Tensor]:
        if self.target is None:
            return [v.detach() for v in z]  # the online network itself, stop-gradient
        return self.target(views)

    def pair_loss(self, z: Tensor, zt: Tensor, w_p: Tensor, w_p_sqrt: Tensor) -> tuple[Tensor, Tensor]:
        """Loss of one ordered pair and the loss-space embedding p it used (float32, autocast off)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float()
            if self.loss_kind == "directpred":
                p = self.loss_space(z32 @ w_p)
                return 2 * negative_cosine(p, zt), p
            p = z32.detach() @ w_p
            z_hooked = self.loss_space(z32, norm_source=p)  # z's gradient is p's (class docstring)
        if self.loss_kind == "cosine":
            return iso_loss_cosine(z_hooked, zt, w_p, w_p_sqrt), p
        return iso_loss_euclidean(z_hooked, zt, w_p), p

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        z1, z2 = apply_to_views(self.projector, features)
        if self.correlation_update == "view":
            predictors = [self._updated_predictor(z) for z in (z1, z2)]
        else:
            predictors = [self._updated_predictor(torch.cat([z1, z2]))] * 2
        zt1, zt2 = self._targets(views, [z1, z2])
        loss12, p1 = self.pair_loss(z1, zt2, *predictors[0])
        loss21, p2 = self.pair_loss(z2, zt1, *predictors[1])
        return SSLStep(loss12 + loss21, features, [p1, p2])

    def _updated_predictor(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:
            self.update_correlation(z)
        return self.closed_form_predictor()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        if self.correlation_in_validation and dataloader_idx == 0:
            self.update_correlation(self.projector(self.backbone(batch["image"])))
        return super().validation_step(batch, batch_idx, dataloader_idx)
