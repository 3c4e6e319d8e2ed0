"""Stop training cleanly when the loss or the gradients stop being numbers."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """Raised by NonFiniteGuard on a non-finite loss or gradient; the CLI prints it as one line and exits 3."""


def last_good_checkpoint(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    path = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
    return path or "none saved yet"


def _where(trainer: L.Trainer) -> str:
    return (
        f"at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
        f"last good checkpoint: {last_good_checkpoint(trainer)}. "
        "Lower the learning rate, add warmup, or lower/disable GradScale, then resume with --ckpt_path"
    )


class NonFiniteGuard(Callback):
    """Raise ``NonFiniteLossError`` naming the step and the last good checkpoint as soon as the
    training loss (before backward) or, with ``check_gradients``, any gradient (before the optimizer
    step) is NaN/inf. Both checks run before the weights change, so the weights in memory and every
    checkpoint on disk stay finite; nothing is deleted.

    The gradient check is one fused norm over all gradients (one device sync per optimizer step).
    It is skipped under fp16 loss scaling, whose GradScaler expects and skips inf steps itself.

    Args:
        check_gradients: also check the gradients, once per optimizer step.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) {_where(trainer)}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        total = torch.nn.utils.get_total_norm(grads)
        if torch.isfinite(total):
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        what = f"non-finite gradient in {len(bad)} parameter(s), first {bad[0]}" if bad else f"gradient norm overflow ({total.item()})"
        raise NonFiniteLossError(f"{what} {_where(trainer)}")
