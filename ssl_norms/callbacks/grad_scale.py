"""GradScale as a callback: wraps any method's loss-space embeddings in ``grad_scale(z, power)``."""

from __future__ import annotations

import functools
import math

import lightning as L
from lightning.pytorch.callbacks import Callback
from ssl_norms.grad_scale import grad_scale


class GradScale(Callback):
    """Multiply each sample's loss-space gradient by ``||z_i||^power`` (identity in the forward pass).

    Installs :func:`ssl_norms.grad_scale` in the method's ``loss_space_hooks`` (the exposure
    contract, :mod:`ssl_norms.contract`), so it acts on whatever the method feeds its loss, with
    the norms of the loss-space embedding: the projector output for SimCLR/FroSSL, the expander
    output for VICReg, the predictor output for SimSiam/BYOL/IsoLoss.
    ``power=1`` makes the gradient of a cosine loss independent of the embedding norm; ``power=0``
    is exactly the default training. The paper pairs ``power=1`` with a lower lr and a long
    warmup: ``configs/presets/gradscale_simclr.yaml``.

    Args:
        power: exponent p of the norm (a finite number).
    """

    def __init__(self, power: float = 1.0) -> None:
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power):
            raise ValueError(f"GradScale power must be a finite number, got {power!r}")
        self.power = float(power)
        self.hook = functools.partial(grad_scale, power=self.power)  # picklable, unlike a lambda (spawned DDP)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        hooks = getattr(pl_module, "loss_space_hooks", None)
        if not isinstance(hooks, list):
            raise ValueError(
                f"GradScale needs an ssl_norms method (a subclass of SSLMethod with loss_space_hooks), got {type(pl_module).__name__}"
            )
        if not any(h is self.hook for h in hooks):
            hooks.append(self.hook)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        hooks = getattr(pl_module, "loss_space_hooks", [])
        hooks[:] = [h for h in hooks if h is not self.hook]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"grad_scale/power": self.power})
