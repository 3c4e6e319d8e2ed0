"""BYOL: an online network with a predictor regresses an EMA target network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.losses import negative_cosine
from ssl_norms.methods.base import SSLMethod
from ssl_norms.methods.ema import EMATarget, EMATargetHooks
from ssl_norms.models import mlp_head


class BYOL(EMATargetHooks, SSLMethod):
    """BYOL (Grill et al. 2020). Loss space = predictor output of the online branch.

    Loss: BYOL's ``||p/|p| - zt/|zt|||^2 = 2 - 2 cos(p, zt)`` summed over both ordered view pairs,
    without the constant: ``2 * (negative_cosine(p1, zt2) + negative_cosine(p2, zt1))``. The same
    scale as IsoLoss, whose gradient is this loss's gradient w.r.t. p.

    The target (``self.target``: an :class:`~ssl_norms.methods.ema.EMATarget` of backbone +
    projector) follows the online network after every optimizer step with tau rising from
    ``base_tau`` to ``final_tau`` along a cosine over training; it is in the checkpoint and is
    rescaled with the online network by initialisation callbacks (see ``ssl_norms.methods.ema``).

    Args:
        projector_dims / predictor_hidden_dims: heads as in SimSiam by default (projector
            2048-2048-2048 with BatchNorm after every layer, predictor 2048 -> 512 -> 2048).
        projector_batchnorm_last: BatchNorm after the projector's last layer (SimSiam's head);
            false gives BYOL's original plain-Linear output.
        base_tau / final_tau: EMA coefficient at the first and last optimizer step (equal values: a
            constant tau, as the paper's released code, ``CLA/training/models.py:206-209``).
        loss_scale: multiplies the loss; 0.25 gives the released code's ``-(cos1 + cos2) / 2``
            (``CLA/utils/losses.py:48-60``).
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    def __init__(
        self,
        projector_dims: Sequence[int] = (2048, 2048, 2048),
        predictor_hidden_dims: Sequence[int] = (512,),
        projector_batchnorm_last: bool = True,
        base_tau: float = 0.99,
        final_tau: float = 1.0,
        loss_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not loss_scale > 0:
            raise ValueError(f"BYOL loss_scale must be > 0, got {loss_scale}")
        self.loss_scale = loss_scale
        self.projector = mlp_head(
            [self.feature_dim, *projector_dims], batchnorm_last=projector_batchnorm_last, bias_last=not projector_batchnorm_last
        )
        out_dim = projector_dims[-1]
        self.predictor = mlp_head([out_dim, *predictor_hidden_dims, out_dim])
        self.target = EMATarget([self.backbone, self.projector], base_tau=base_tau, final_tau=final_tau)

    def embed_features(self, features: Tensor) -> Tensor:
        return self.predictor(self.projector(features))

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        p1, p2 = self.embed_views(features)
        zt1, zt2 = self.target(views)
        loss = self.loss_scale * 2 * (negative_cosine(p1, zt2) + negative_cosine(p2, zt1))
        return SSLStep(loss, features, [p1, p2])
