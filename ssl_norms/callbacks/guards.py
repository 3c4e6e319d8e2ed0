"""Stop training cleanly when the loss stops being a number."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """Raised by NonFiniteGuard; the CLI prints its message as one line."""


def last_good_checkpoint(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
    return path or "none saved yet"


class NonFiniteGuard(Callback):
    """Raise ``NonFiniteLossError`` naming the step and the last good checkpoint as soon as the
    training loss is NaN/inf. The check runs before backward, so the weights in memory and every
    checkpoint on disk stay finite; nothing is deleted."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
                f"last good checkpoint: {last_good_checkpoint(trainer)}. "
                "Lower the learning rate, add warmup, or disable GradScale, then resume with --ckpt_path"
            )
