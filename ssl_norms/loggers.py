"""CSVLogger that keeps a run's ``metrics.csv`` across resumes and never leaves it half-written.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts in a non-empty directory, so
a resumed run (``--ckpt_path last``, a SLURM requeue) would lose the history before the interruption.
This one keeps it: the old rows stay, and rows an interrupted attempt logged at or beyond the first
step the resumed run logs are dropped, because the resumed run logs those steps again. A last line
cut short by a killed process (no line end) is dropped too. Whole-file rewrites (on resume, and when
a new column appears) replace the file in one step, so a kill during them loses nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ssl_norms.runs import RunError, write_atomically


def read_complete_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` up to its last complete line (a row a killed writer left without
    its line end is not a row). Raises :class:`RunError` when the file is not a metrics log."""
    text = path.read_text(errors="replace")
    text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    reader_fields = next(csv.reader(io.StringIO(text, newline="")), [])
    if text and "step" not in reader_fields:
        raise RunError(f"{path} is not a metrics log (no 'step' column); move it away to resume this run")
    for row in rows:
        try:
            float(row.get("step") or 0)
        except ValueError:
            raise RunError(f"{path} has a row with step {row['step']!r}; move the file away to resume this run") from None
    return rows


class _ResumingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Instead of deleting an existing metrics.csv, keep its complete rows for the first save."""
        path = Path(self.metrics_file_path)
        self._previous: list[dict[str, str]] = read_complete_rows(path) if path.is_file() else []

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(Path(self.metrics_file_path), buffer.getvalue())

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        self._write_all(rows)

    def save(self) -> None:
        previous = getattr(self, "_previous", None)
        if not (previous and self.metrics):
            super().save()
            return
        first_new_step = min(int(row["step"]) for row in self.metrics if "step" in row)
        kept = [row for row in previous if not row.get("step") or int(float(row["step"])) < first_new_step]
        rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in kept] + self.metrics
        self.metrics = rows
        self._record_new_keys()
        self._write_all(rows)  # the kept history and the new rows, replacing the old file in one step
        self.metrics, self._previous = [], []


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
