"""The Lightning internals this project relies on, in one place.

Lightning keeps these private or undocumented, and an upgrade may move them. Every use goes
through this module (or is listed here), and ``tests/test_lightning_compat.py`` checks each one,
with the meaning we rely on, on a real Trainer: an upgrade that moves one fails there, loudly,
instead of silently changing what a callback logs or where a resumed run continues.

* :func:`is_logging_step` reads ``Trainer._logger_connector.should_update_logs`` and
  ``fit_loop._should_accumulate()`` (EmbeddingNormMonitor computes its statistics only on the
  micro-batches whose step values Lightning writes; ``callbacks.lr_monitor.LearningRateMonitor``
  writes the lr at that micro-batch's start, once per optimizer step).
* :func:`set_log_every_n_steps` relies on ``should_update_logs`` reading ``Trainer.log_every_n_steps``
  at every step (EmbeddingNormMonitor shortens an interval longer than an epoch during fit).
* :func:`epoch_batches_ready` and :func:`epoch_batches_processed` read the training loop's
  progress ``fit_loop.epoch_loop.batch_progress.current`` (ReproducibleResume: where a resumed
  epoch continues, and whether a checkpoint's epoch is complete).
* ``ssl_norms.loggers`` subclasses ``lightning.pytorch.loggers.csv_logs.ExperimentWriter``: it
  overrides :data:`CSV_WRITER_OVERRIDES` (called when the writer is created, and on every save)
  and uses :data:`CSV_WRITER_ATTRIBUTES`; its CSVLogger rebuilds ``experiment`` from
  :data:`CSV_LOGGER_ATTRIBUTES`.
* :func:`logger_step` reads ``fit_loop.epoch_loop._batches_that_stepped`` (WandbValidationMedia logs
  its figures at the step of the validation's metrics, as LearningRateMonitor does).
* :func:`drop_unset_wandb_anonymous` edits ``WandbLogger._wandb_init`` (the keyword arguments of its
  ``wandb.init``) before the W&B run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning import Trainer
    from lightning.pytorch.loggers import WandbLogger

CSV_WRITER_OVERRIDES = ("_check_log_dir_exists", "save")
CSV_WRITER_ATTRIBUTES = ("metrics", "metrics_file_path", "_fs")
CSV_LOGGER_ATTRIBUTES = ("_experiment", "_fs", "root_dir", "log_dir")


def is_logging_step(trainer: Trainer) -> bool:
    """Whether Lightning writes this training batch's step values to the loggers: a logging step
    (every ``log_every_n_steps`` optimizer steps) and, with gradient accumulation, the last
    micro-batch of the window (Lightning writes the values logged there, once per optimizer step)."""
    return trainer._logger_connector.should_update_logs and not trainer.fit_loop._should_accumulate()


def set_log_every_n_steps(trainer: Trainer, steps: int) -> None:
    """Log every ``steps`` optimizer steps from the next step on."""
    trainer.log_every_n_steps  # noqa: B018  (fails loudly if Lightning renames it, instead of setting a new attribute)
    trainer.log_every_n_steps = steps


def epoch_batches_ready(trainer: Trainer) -> int:
    """Training batches of the current epoch Lightning has fetched or, right after a mid-epoch
    resume and before the first new batch, restored from the checkpoint as done."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def logger_step(trainer: Trainer) -> int:
    """The step Lightning passes to the loggers with the values logged now (for a validation during
    fit: the step its metrics are written at; one less than ``global_step`` at an epoch's end)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def drop_unset_wandb_anonymous(logger: WandbLogger) -> None:
    """WandbLogger passes ``anonymous=None`` to ``wandb.init`` unless asked, and wandb warns about
    that deprecated key whatever its value: drop it when the user did not set it."""
    if logger._wandb_init.get("anonymous", False) is None:
        del logger._wandb_init["anonymous"]


def epoch_batches_processed(trainer: Trainer) -> int:
    """Training batches of the current epoch whose step has run (restored by a resume)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed
