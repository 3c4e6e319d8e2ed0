"""GlobalBatchLog: states the global batch and the learning rate actually used at the start of fit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


def global_batch_size(per_device: int, world_size: int, accumulate_grad_batches: int) -> int:
    """Samples per optimizer step: devices x nodes (the world size) x per-device batch x accumulation."""
    return per_device * world_size * accumulate_grad_batches


class GlobalBatchLog(Callback):
    """Print ``global batch = world size x per-device batch x accumulation`` and the configured lr at
    fit start, and log both as hyperparameters (``scale/global_batch_size`` ...).

    ssl-norms never rescales the learning rate: ``lr`` in the config is the absolute peak lr. When
    the number of GPUs or nodes changes, the global batch changes with it, and this line is where
    that shows; scale ``lr`` in the config yourself (linear rule: lr = base_lr x global_batch / 256).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        per_device = getattr(datamodule, "batch_size", None)
        if per_device is None:
            return  # not an ssl-norms DataModule: nothing reliable to report
        accumulation = trainer.accumulate_grad_batches
        total = global_batch_size(per_device, trainer.world_size, accumulation)
        lr = pl_module.hparams.get("lr") if hasattr(pl_module, "hparams") else None
        lr_text = f"lr {lr:g} is used as configured (never rescaled)" if lr is not None else "lr as configured"
        rank_zero_info(
            f"ssl-norms: global batch {total} = {trainer.world_size} processes "
            f"({trainer.num_nodes} node(s) x {trainer.num_devices} device(s)) x {per_device} per device "
            f"x {accumulation} accumulation; {lr_text}"
        )
        params = {
            "scale/global_batch_size": total,
            "scale/world_size": trainer.world_size,
            "scale/per_device_batch_size": per_device,
            "scale/accumulate_grad_batches": accumulation,
        }
        if lr is not None:
            params["scale/lr"] = lr
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
