"""RunSummary: a first-vs-last table and a PNG of norm, k-NN, loss and lr at the end of fit."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

SUMMARY_KEYS = ("norm/mean", "knn/top1", "train/loss")
HISTORY_KEYS = (*SUMMARY_KEYS, "lr/base")  # what the PNG draws when no metrics.csv is written


class RunSummary(Callback):
    """Keeps, at every epoch end, the epoch's value of ``norm/mean``, ``knn/top1``, ``train/loss``
    and ``lr/base`` (the per-epoch aggregate ``<name>_epoch`` when logged, else the last value),
    prints the first and last epochs as a table when fit ends, and writes ``training_curves.png``
    into the run directory (the figure reads ``metrics.csv`` when a CSVLogger is attached)."""

    def __init__(self, plot: bool = True) -> None:
        self.plot = plot
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics  # the epoch aggregates are computed by now
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step)}
        for key in HISTORY_KEYS:
            value = metrics.get(f"{key}_epoch", metrics.get(key))
            row[key] = float(value) if value is not None else math.nan
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history:
            return
        from rich.console import Console
        from rich.table import Table

        run_dir = Path(trainer.default_root_dir)
        table = Table(title=f"ssl-norms run summary ({type(pl_module).__name__})")
        table.add_column("epoch", justify="right")
        for key in SUMMARY_KEYS:
            table.add_column(key, justify="right")
        rows = [self.history[0], self.history[-1]] if len(self.history) > 1 else self.history
        for row in rows:
            table.add_row(str(int(row["epoch"])), *(f"{row[k]:.4f}" for k in SUMMARY_KEYS))
        console = Console()
        console.print(table)
        if self.plot:
            from ssl_norms.figures import plot_training_curves

            for logger in trainer.loggers:
                logger.save()
            metrics_csv = run_dir / "metrics.csv"
            png = plot_training_curves(metrics_csv if metrics_csv.exists() else self.history, run_dir / "training_curves.png")
            console.print(f"plot: {png}", soft_wrap=True)  # soft_wrap: a path stays on one line, to copy
        console.print(f"run directory: {run_dir}", soft_wrap=True)
