"""LearningRateMonitor: Lightning's, with one lr row per optimizer step under gradient accumulation."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch import callbacks

from ssl_norms.lightning_compat import is_logging_step


class LearningRateMonitor(callbacks.LearningRateMonitor):
    """Lightning's LearningRateMonitor (same options, same ``lr-<optimizer>`` columns), except that
    with ``accumulate_grad_batches`` k > 1 its step-interval lr is written once per optimizer step
    instead of once per micro-batch: Lightning's checks only the logging interval, which holds for
    all k micro-batches of a step. It logs at the micro-batch that steps; the lr is the one that step
    applies, as the scheduler moves only after the optimizer step."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if is_logging_step(trainer):
            super().on_train_batch_start(trainer, *args, **kwargs)
