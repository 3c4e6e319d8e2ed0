"""SimCLR: InfoNCE over two views, negatives from every rank."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.distributed import all_gather_with_grad
from ssl_norms.losses import cross_view_nce, info_nce
from ssl_norms.methods.base import SSLMethod
from ssl_norms.models import mlp_head


LOSSES = {"nt_xent": info_nce, "cross_view": cross_view_nce}


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020). Loss space = projector output.

    Exactly 2 views: InfoNCE pairs each view with one other (multi-view InfoNCE is not implemented).

    Args:
        temperature: InfoNCE temperature.
        projector_dims: hidden and output sizes after the backbone features.
        loss: ``nt_xent`` (:func:`~ssl_norms.losses.info_nce`) or ``cross_view`` (the released code's
            loss, :func:`~ssl_norms.losses.cross_view_nce`).
        projector_batchnorm: BatchNorm after each hidden projector layer; the paper's released head is
            ``projector_dims: [128, 128]`` without it (``CLA/training/models.py:114-128``).
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    def __init__(
        self, temperature: float = 0.5, projector_dims: Sequence[int] = (2048, 2048, 256), projector_batchnorm: bool = True,
        loss: Literal["nt_xent", "cross_view"] = "nt_xent", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if loss not in LOSSES:
            raise ValueError(f"SimCLR loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.temperature, self.loss_fn = temperature, LOSSES[loss]
        self.projector = mlp_head([self.feature_dim, *projector_dims], batchnorm=projector_batchnorm)

    def embed_features(self, features: Tensor) -> Tensor:
        return self.projector(features)

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        z1, z2 = self.embed_views(features)
        loss = self.loss_fn(z1, z2, self.temperature, gather=all_gather_with_grad)
        return SSLStep(loss, features, [z1, z2])
