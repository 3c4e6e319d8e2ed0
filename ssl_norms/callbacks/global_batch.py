"""GlobalBatchLog: states the global batch and the learning rate actually applied at the start of fit."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR


def global_batch_size(per_device: int, world_size: int, accumulate_grad_batches: int) -> int:
    """Samples per optimizer step: devices x nodes (the world size) x per-device batch x accumulation."""
    return per_device * world_size * accumulate_grad_batches


def applied_peak_lrs(trainer: L.Trainer) -> list[float] | None:
    """The largest lr each parameter group reaches during this run, read from the configured
    per-step LambdaLR itself (base lr x its multiplier, maximised over the run's optimizer steps),
    so it is the lr as applied whatever the schedule: ``released_get_lr`` peaks at lr**2, a fixed
    group stays at its lr, a run shorter than its warmup never reaches lr. None without such a
    scheduler or without a step bound."""
    configs = trainer.lr_scheduler_configs
    steps = trainer.estimated_stepping_batches
    if not configs or configs[0].interval != "step" or not isinstance(configs[0].scheduler, LambdaLR) or not math.isfinite(steps):
        return None
    scheduler, peaks = configs[0].scheduler, {}
    for factor in scheduler.lr_lambdas:  # groups usually share one multiplier: scan each once
        if id(factor) not in peaks:
            peaks[id(factor)] = max(factor(step) for step in range(max(1, int(steps))))
    return [base * peaks[id(factor)] for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]


class GlobalBatchLog(Callback):
    """Print ``global batch = world size x per-device batch x accumulation``, the configured lr and
    the peak lr the run applies at fit start, and log them as hyperparameters
    (``scale/global_batch_size`` ..., ``scale/lr``, ``scale/peak_lr``).

    ssl-norms never rescales the learning rate for the batch: with the default schedule ``lr`` in the
    config is the absolute peak lr (``released_get_lr`` applies lr**2, as the paper's released code
    did; the line states the peak either way). When the number of GPUs or nodes changes, the global
    batch changes with it, and this line is where that shows; scale ``lr`` in the config yourself
    (linear rule: lr = base_lr x global_batch / 256).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        per_device = getattr(datamodule, "batch_size", None)
        if per_device is None:
            return  # not an ssl-norms DataModule: nothing reliable to report
        accumulation = trainer.accumulate_grad_batches
        total = global_batch_size(per_device, trainer.world_size, accumulation)
        hparams = getattr(pl_module, "hparams", {})
        lr = hparams.get("lr")
        peaks = applied_peak_lrs(trainer) if trainer.is_global_zero else None
        rank_zero_info(
            f"ssl-norms: global batch {total} = {trainer.world_size} processes "
            f"({trainer.num_nodes} node(s) x {trainer.num_devices} device(s)) x {per_device} per device "
            f"x {accumulation} accumulation; {lr_text(lr, peaks, hparams.get('lr_schedule'))}"
        )
        params = {
            "scale/global_batch_size": total,
            "scale/world_size": trainer.world_size,
            "scale/per_device_batch_size": per_device,
            "scale/accumulate_grad_batches": accumulation,
        }
        if lr is not None:
            params["scale/lr"] = lr
        if peaks:
            params["scale/peak_lr"] = peaks[0]  # the first group: the backbone's
        for logger in trainer.loggers:
            logger.log_hyperparams(params)


def lr_text(lr: float | None, peaks: list[float] | None, schedule: str | None) -> str:
    """``lr 0.6 as configured (never rescaled for the batch); applied peak 0.36 (lr_schedule released_get_lr)``."""
    text = f"lr {lr:g} as configured (never rescaled for the batch)" if lr is not None else "lr as configured"
    if peaks:
        shown = list(dict.fromkeys(f"{peak:g}" for peak in peaks))
        text += f"; applied peak {shown[0]}" if len(shown) == 1 else f"; applied peaks {', '.join(shown)} by parameter group"
        if schedule is not None:
            text += f" (lr_schedule {schedule})"
    return text
