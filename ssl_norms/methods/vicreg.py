"""VICReg: variance, invariance and covariance terms on an expander's output; no negatives, no predictor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.distributed import all_gather_with_grad
from ssl_norms.losses import vicreg_loss
from ssl_norms.methods.base import SSLMethod
from ssl_norms.models import mlp_head


class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce & LeCun, ICLR 2022). Loss space = expander output.

    Loss: :func:`~ssl_norms.losses.vicreg_loss` with the paper's weights 25 / 25 / 1, gamma 1 and
    eps 1e-4; variance and covariance over the global batch (gathered from every rank with
    gradients, as in the official code). Unlike the cosine losses the loss sees the embeddings'
    scale (the variance hinge holds each dimension's std near 1, the invariance term is a squared
    distance), so the 1/||z|| gradient of Prop 3.1 does not apply: a control beside FroSSL for the
    norm study.

    Args:
        projector_dims: the expander after the backbone: Linear-BN-ReLU between layers, a plain
            Linear without bias at the end. The paper's 8192-8192-8192 follows a ResNet-50 on
            ImageNet; the default 2048-2048-2048 is the CIFAR-scale head of the other methods
            (16x fewer expander parameters for a 512-d ResNet-18).
        invariance_weight / variance_weight / covariance_weight: lambda, mu and nu of the paper.
        lr: peak lr for plain SGD, far below the paper's LARS lr: with SGD the variance hinge and
            the covariance term diverge within the first epochs at 0.03 and above.
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    def __init__(
        self,
        projector_dims: Sequence[int] = (2048, 2048, 2048),
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        lr: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        self.weights = (invariance_weight, variance_weight, covariance_weight)
        if not all(w >= 0 for w in self.weights):
            raise ValueError(f"VICReg loss weights must be >= 0, got {self.weights}")
        self.expander = mlp_head([self.feature_dim, *projector_dims], bias_last=False)

    def embed_features(self, features: Tensor) -> Tensor:
        return self.expander(features)

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        z1, z2 = self.embed_views(features)
        loss = vicreg_loss(z1, z2, *self.weights, gather=all_gather_with_grad)
        return SSLStep(loss, features, [z1, z2])
