"""WandbValidationMedia: the training-curves figure and the norm histograms in the W&B run, at every validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from ssl_norms.callbacks.norm_monitor import EmbeddingNormMonitor
from ssl_norms.lightning_compat import logger_step

CURVES_PNG = "training_curves.png"  # the figure RunSummary writes at the end of fit


class WandbValidationMedia(Callback):
    """At the end of every validation, when a WandbLogger is attached (else it does nothing), logs
    into its run, at the step of the validation's metrics (``trainer/global_step``):

    * ``val/<set>/norm_hist``: a ``wandb.Histogram`` of the per-sample loss-space embedding norms of
      each validation set, as :class:`EmbeddingNormMonitor` collected them (no forward pass here);
    * ``training_curves``: ``training_curves.png`` (norm, k-NN, loss and lr against the optimizer
      step), redrawn into the run directory from ``metrics.csv`` during ``fit`` (needs the CSVLogger
      the CLI always attaches).

    ``ssl-norms`` adds it to every run."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wandb_logger = next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)
        if wandb_logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        import wandb

        media: dict[str, Any] = {}
        for monitor in (c for c in trainer.callbacks if isinstance(c, EmbeddingNormMonitor)):
            for name, norms in monitor.val_norms.items():
                media[f"val/{name}/norm_hist"] = wandb.Histogram(norms.float().cpu().numpy())
        png = self._training_curves(trainer)
        if png is not None:
            media["training_curves"] = wandb.Image(str(png))
        if media:
            wandb_logger.log_metrics(media, step=logger_step(trainer))

    @staticmethod
    def _training_curves(trainer: L.Trainer) -> Path | None:
        csv_logger = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if trainer.state.fn != TrainerFn.FITTING or csv_logger is None:
            return None
        from ssl_norms.figures import plot_training_curves

        csv_logger.save()  # this validation's values are in the logger, not yet in the file
        metrics_csv = Path(csv_logger.experiment.metrics_file_path)
        return plot_training_curves(metrics_csv, Path(trainer.default_root_dir) / CURVES_PNG) if metrics_csv.is_file() else None
