"""CSVLogger that keeps a run's ``metrics.csv`` across resumes and never leaves it half-written.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts in a non-empty directory, so
a resumed run (``--ckpt_path last``, a SLURM requeue) would lose the history before the interruption.
This one keeps it: the old rows stay, and rows an interrupted attempt logged at or beyond the first
step the resumed run logs are dropped, because the resumed run logs those steps again. A last line
cut short by a killed process (no line end) is dropped too. Whole-file rewrites (on resume, and when
a new column appears) replace the file in one step, so a kill during them loses nothing. A file it
cannot continue (not UTF-8 CSV, no ``step`` column, a row of another width, a cell that is not a
number) is refused, untouched, at setup before training: one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from ssl_norms.runs import RunError, write_atomically


def read_complete_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` up to its last complete line (a row a killed writer left without
    its line end is not a row). Raises :class:`RunError` naming the file and what is wrong when it is
    not a metrics log this logger can continue; the file is left as it is."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if data and not complete:
        _refuse(path, f"no complete line in its {len(data)} bytes")
    try:
        lines = list(csv.reader(io.StringIO(complete.decode("utf-8"), newline="")))
    except UnicodeDecodeError as err:
        _refuse(path, f"not UTF-8 text: byte {err.start} is {complete[err.start:err.start + 1]!r}")
    except csv.Error as err:
        _refuse(path, f"not CSV: {err}")
    if not lines:
        return []
    header = lines[0]
    if "step" not in header:
        _refuse(path, f"no 'step' column in its header {','.join(header)[:80]!r}")
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) != len(header):
            _refuse(path, f"line {number} has {len(cells)} fields, its header {len(header)}")
        for column, cell in zip(header, cells):
            if cell and not _is_number(cell, finite=column == "step"):
                _refuse(path, f"line {number} holds {cell[:40]!r} in column {column!r}, not a number")
    return [dict(zip(header, cells)) for cells in lines[1:]]


def _is_number(cell: str, finite: bool) -> bool:
    try:
        value = float(cell)
    except ValueError:
        return False
    return math.isfinite(value) or not finite


def _refuse(path: Path, what: str) -> NoReturn:
    raise RunError(f"{path} is not a metrics log this run can continue ({what}); it is left as it is: "
                   "move it away (or repair it) to resume the run")


class _ResumingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Instead of deleting an existing metrics.csv, keep its complete rows for the first save
        (None: no file, Lightning's writer starts one)."""
        path = Path(self.metrics_file_path)
        self._previous: list[dict[str, str]] | None = read_complete_rows(path) if path.is_file() else None

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
        if previous is None or not self.metrics:
            super().save()
            return
        first_new_step = min(int(row["step"]) for row in self.metrics if "step" in row)
        kept = [row for row in previous if not row.get("step") or int(float(row["step"])) < first_new_step]
        rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in kept] + self.metrics
        self.metrics = rows
        self._record_new_keys()
        self._write_all(rows)  # the kept history and the new rows, replacing the old file in one step
        self.metrics, self._previous = [], None


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger (same arguments) that appends to the run's metrics.csv when resumed and
    writes the file whenever a checkpoint is saved, so a killed run loses no row its checkpoint covers.
    An existing metrics.csv it cannot continue is refused at setup, before training (Lightning creates
    the writer in its setup hook)."""

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
