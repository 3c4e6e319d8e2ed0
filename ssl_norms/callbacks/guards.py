"""Stop training cleanly when the loss or the gradients stop being numbers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """Raised by NonFiniteGuard on a non-finite loss or gradient; the CLI prints it as one line and exits 3."""


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """The checkpoint a resume would start from: the last one saved, if it is (still) on disk; a
    resumed run whose directory moved carries the old location, which is not named."""
    callback = trainer.checkpoint_callback
    paths = (callback.last_model_path, callback.best_model_path) if callback is not None else ()
    return next((path for path in paths if path and Path(path).is_file()), "none saved yet")


def _where(trainer: L.Trainer) -> str:
    return (
        f"at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
        f"last good checkpoint: {last_good_checkpoint(trainer)}. "
        "Lower the learning rate, add warmup, or lower/disable GradScale, then resume with --ckpt_path"
    )


class NonFiniteGuard(Callback):
    """Raise ``NonFiniteLossError`` naming the step and the last good checkpoint when a training
    loss or, with ``check_gradients``, any gradient is NaN/inf. The check runs right before the
    optimizer step, so the weights in memory and every checkpoint on disk stay finite; nothing is
    deleted.

    Cost: one device sync per optimizer step. The losses of the step's micro-batches are kept on the
    device until then and checked together with one fused norm over all gradients. The gradient part
    is skipped under fp16 loss scaling, whose GradScaler expects and skips inf steps itself.

    Args:
        check_gradients: also check the gradients, once per optimizer step.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses, on the device

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._losses = []  # never carry losses of a step that was not taken into the next epoch

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        losses, self._losses = self._losses, []
        checks = [torch.isfinite(torch.stack(losses)).all()] if losses else []
        grads = []
        if self.check_gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            total = torch.nn.utils.get_total_norm(grads)
            checks.append(torch.isfinite(total))
        if not checks or torch.stack(checks).all():  # the one sync
            return
        bad_loss = next((loss for loss in losses if not torch.isfinite(loss).all()), None)
        if bad_loss is not None:
            raise NonFiniteLossError(f"non-finite loss ({bad_loss.item()}) {_where(trainer)}")
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        what = f"non-finite gradient in {len(bad)} parameter(s), first {bad[0]}" if bad else f"gradient norm overflow ({total.item()})"
        raise NonFiniteLossError(f"{what} {_where(trainer)}")
