"""What a fit prints while it runs, when nobody watches a terminal (SLURM, nohup, a pipe): Lightning's
progress bar would only draw its final state there, so :class:`ProgressLines` prints plain lines
instead. :class:`ModelSummary` is Lightning's rich summary without the FLOPs it did not measure.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

FIXED = ("train/loss", "norm/mean")  # shown first, in this order; other progress-bar metrics follow


class ProgressLines(ProgressBar):
    """One plain line every ``every_n_batches`` training batches or ``every_seconds`` seconds,
    whichever comes first, and at the end of every epoch: epoch, batch / total batches of the fit
    (batches, not optimizer steps: they differ with gradient accumulation),
    it/s since the last line, the progress-bar metrics (``train/loss``, ``norm/mean``, k-NN ...),
    the lr of the first parameter group and the ETA of the remaining training batches at this
    process's average training speed. Validation time is left out of both rates, so the line after
    a validation neither shows a collapsed it/s nor an ETA of hours.
    ``ssl-norms fit`` uses it instead of the progress bar when stdout is not a terminal.

    Args:
        every_n_batches: a line after this many training batches at the latest.
        every_seconds: a line after this many seconds at the latest.
    """

    def __init__(self, every_n_batches: int = 50, every_seconds: float = 30.0) -> None:
        super().__init__()
        if every_n_batches < 1 or every_seconds <= 0:
            raise ValueError(f"ProgressLines: every_n_batches must be >= 1 and every_seconds > 0, got {every_n_batches} and {every_seconds}")
        self.every_n_batches, self.every_seconds = every_n_batches, every_seconds
        self._enabled = True
        self._last_time = self._start = 0.0
        self._batches_since = self._batches_run = 0
        self._paused_at: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_time = self._start = time.monotonic()
        self._batches_since = self._batches_run = 0

    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused_at = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused_at is not None:  # the training clocks skip the validation
            pause = time.monotonic() - self._paused_at
            self._last_time += pause
            self._start += pause
            self._paused_at = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batches_since += 1
        self._batches_run += 1
        now = time.monotonic()
        elapsed = now - self._last_time
        epoch_end = batch_idx + 1 >= self.total_train_batches
        if self._enabled and (epoch_end or self._batches_since >= self.every_n_batches or elapsed >= self.every_seconds):
            average = self._batches_run / max(now - self._start, 1e-9)
            print(self.line(trainer, pl_module, batch_idx, self._batches_since / max(elapsed, 1e-9), average), flush=True)
            self._last_time, self._batches_since = time.monotonic(), 0

    def line(self, trainer, pl_module, batch_idx: int, rate: float, average_rate: float | None = None) -> str:
        per_epoch = self.total_train_batches  # inf for a dataset of unknown length
        done = (trainer.current_epoch * per_epoch if math.isfinite(per_epoch) else 0) + batch_idx + 1
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        total = epochs * per_epoch if epochs is not None and math.isfinite(per_epoch) else None
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs or '?'}", f"batch {done}/{total or '?'}", f"{rate:.2f} it/s"]
        metrics = {key: value for key, value in self.get_metrics(trainer, pl_module).items() if key != "v_num"}
        for key in (*[key for key in FIXED if key in metrics], *[key for key in metrics if key not in FIXED]):
            parts.append(f"{key} {_number(metrics[key])}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.4g}")
        if total is not None:
            parts.append(f"ETA {timedelta(seconds=round((total - done) / max(average_rate or rate, 1e-9)))}")
        return "  ".join(parts)


def _count(number: int) -> str:
    return get_human_readable_count(number).strip()


def _number(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) or hasattr(value, "item") else str(value)


class ModelSummary(RichModelSummary):
    """Lightning's rich model summary; the FLOPs column and total only when they were measured
    (Lightning measures them from ``example_input_array``, which no method sets: it prints
    "Total FLOPs: 0" and a column of zeros otherwise)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops: int, **summarize_kwargs: Any) -> None:
        if total_flops:
            RichModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                       total_training_modes, total_flops, **summarize_kwargs)
            return
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, style="dim" if not name.strip() else None, justify="left" if name in ("Name", "Type", "Mode") else "right")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*map(str, row))
        console = get_console()
        console.print(table)
        trainable, total = int(trainable_parameters), int(total_parameters)
        console.print(
            f"Trainable params: {_count(trainable)}, non-trainable: {_count(total - trainable)}, "
            f"total: {_count(total)} ({get_formatted_model_size(model_size)} MB); modules in train mode: "
            f"{total_training_modes['train']}, in eval mode: {total_training_modes['eval']}", soft_wrap=True,
        )
