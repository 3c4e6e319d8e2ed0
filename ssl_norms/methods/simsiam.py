"""SimSiam: a predictor on one branch, stop-gradient on the other, no negatives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ssl_norms.contract import SSLStep
from ssl_norms.losses import negative_cosine
from ssl_norms.methods.base import SSLMethod, apply_to_views
from ssl_norms.models import mlp_head


class SimSiam(SSLMethod):
    """SimSiam (Chen & He 2021), the paper's non-contrastive prototype. Loss space = predictor output.

    Loss: the symmetric average ``(negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2``, with
    ``p`` the predictor output and ``z`` the (stop-gradient) projector output of the other view.

    Args:
        projector_dims: sizes after the backbone features; BatchNorm after every layer, the last
            too (SimSiam's 2048-2048-2048).
        predictor_hidden_dims: hidden sizes of the predictor (Linear-BN-ReLU); its output size is
            the projector's (SimSiam's 2048 -> 512 -> 2048).
        fixed_predictor_lr: keep the predictor at the peak ``lr`` instead of the schedule
            (SimSiam's ``fix_pred_lr``).
        lr / weight_decay: SimSiam's CIFAR settings, 0.03 x batch/256 at batch 256 and 5e-4
            (``configs/simsiam`` uses lr 0.12 for the effective batch 1024).
        **kwargs: backbone and optimisation settings of :class:`SSLMethod`.
    """

    def __init__(
        self,
        projector_dims: Sequence[int] = (2048, 2048, 2048),
        predictor_hidden_dims: Sequence[int] = (512,),
        fixed_predictor_lr: bool = False,
        lr: float = 0.03,
        weight_decay: float = 5e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        self.fixed_predictor_lr = fixed_predictor_lr
        self.projector = mlp_head([self.feature_dim, *projector_dims], batchnorm_last=True, bias_last=False)
        out_dim = projector_dims[-1]
        self.predictor = mlp_head([out_dim, *predictor_hidden_dims, out_dim])

    def embed_features(self, features: Tensor) -> Tensor:
        return self.predictor(self.projector(features))

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        features = self.encode_views(views)
        z1, z2 = apply_to_views(self.projector, features)  # the targets, stop-gradient in the loss
        p1, p2 = self.embed_views([z1, z2], head=self.predictor)
        loss = 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
        return SSLStep(loss, features, [p1, p2])

    def parameter_groups(self) -> list[dict[str, Any]]:
        if not self.fixed_predictor_lr:
            return super().parameter_groups()
        predictor = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in predictor]
        return [{"params": rest}, {"params": list(self.predictor.parameters()), "scheduled": False}]
