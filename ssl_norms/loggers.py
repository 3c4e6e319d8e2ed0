"""CSVLogger that keeps a run's ``metrics.csv`` across resumes.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts in a non-empty directory, so
a resumed run (``--ckpt_path last``, a SLURM requeue) would lose the history before the interruption.
This one keeps it: the old rows stay, and rows an interrupted attempt logged at or beyond the first
step the resumed run logs are dropped, because the resumed run logs those steps again.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _ResumingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Instead of deleting an existing metrics.csv, keep its rows for the first save."""
        self._previous: list[dict[str, str]] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._previous = list(csv.DictReader(file))  # the file stays until the first save rewrites it

    def save(self) -> None:
        previous = getattr(self, "_previous", None)
        if previous and self.metrics:
            first_new_step = min(int(row["step"]) for row in self.metrics if "step" in row)
            kept = [row for row in previous if not row.get("step") or int(float(row["step"])) < first_new_step]
            kept = [{k: v for k, v in row.items() if v not in ("", None)} for row in kept]
            self.metrics = kept + self.metrics
            self._previous = []
            self._fs.rm_file(self.metrics_file_path)  # rewritten below with the kept rows first
        super().save()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger (same arguments) that appends to the run's metrics.csv when resumed and
    writes the file whenever a checkpoint is saved, so a killed run loses no row its checkpoint covers."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment
