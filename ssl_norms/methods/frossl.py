"""FroSSL: Frobenius-norm regularisation of each view's covariance plus multi-view invariance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.losses import frossl_loss
from ssl_norms.methods.base import SSLMethod
from ssl_norms.models import mlp_head


class FroSSL(SSLMethod):
    """FroSSL (Skean et al. 2024) over V >= 2 views.

    Loss space = the projector output **before** the loss's per-dimension normalisation. The loss
    itself (:func:`~ssl_norms.losses.frossl_loss`) divides every embedding dimension by its norm over
    the batch, which rescales each sample's embedding by a batch-dependent amount per dimension; the
    norm study needs the per-sample vectors the network produces, so those are what
    ``loss_space`` wraps (GradScale scales their gradients), what callbacks see and what ``embed_features``
    returns for evaluation.

    Args:
        projector_dims: sizes after the backbone (512 -> 2048 (BN, ReLU) -> 2048 (BN, ReLU) -> 1024).
        invariance_weight: w in ``log ||C_v||_F^2 + w * V * D * mse(Z_v, mean_v Z_v)`` (1 by
            default; the paper uses 1.4-2.0 on larger data).
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    accepted_views = (2, None)

    def __init__(self, projector_dims: Sequence[int] = (2048, 2048, 1024), invariance_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not invariance_weight >= 0:
            raise ValueError(f"FroSSL invariance_weight must be >= 0, got {invariance_weight}")
        self.invariance_weight = invariance_weight
        self.projector = mlp_head([self.feature_dim, *projector_dims])

    def embed_features(self, features: Tensor) -> Tensor:
        return self.projector(features)

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        z = self.embed_views(features)
        return SSLStep(frossl_loss(z, self.invariance_weight), features, z)
