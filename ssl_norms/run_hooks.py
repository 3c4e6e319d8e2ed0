"""The Lightning parts of run directories (:mod:`ssl_norms.runs`): checkpoints written atomically
and read as plain data, and the callback that records a run's start when it starts."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from ssl_norms.runs import CheckpointInfo, CheckpointSaveError, RunError, load_error, record_start, show_held_notes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with two guarantees: a save replaces the file in one step (temporary
    file in the same directory, fsync, rename; Lightning's own stages it in the system temp dir and
    copies it across file systems), and every load is ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except (OSError, RuntimeError) as err:
            cause = err if isinstance(err, OSError) else err.__context__  # torch's zip writer wraps the OSError
            if not isinstance(cause, OSError):
                raise
            kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint of that name exists"
            what = "disk full" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else cause.strerror or str(cause)
            raise CheckpointSaveError(f"could not save checkpoint {path} ({what}); {kept}") from err
        finally:
            temp.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as err:  # as read_checkpoint: one line for any damaged or refused file
            raise RunError(load_error(Path(path), err)) from None


class RunStart(Callback):
    """Calls ``start(trainer)`` once, when the run starts: data loaded, model and optimizer set up,
    checkpoint restored (``on_fit_start``; ``on_<stage>_start`` for validate/test/predict). What a
    command writes there, a command that fails before never writes."""

    _started = False

    def start(self, trainer: Any) -> None:
        raise NotImplementedError

    def _once(self, trainer: Any) -> None:
        if not self._started:
            self._started = True
            self.start(trainer)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._once(trainer)

    on_validation_start = on_test_start = on_predict_start = on_fit_start


class RecordStart(RunStart):
    """When the run starts: append this start to the run record and show the notes held since the
    command began."""

    def __init__(self, run_dir: Path, command: str, checkpoint: CheckpointInfo | None, changes: dict[str, Any]) -> None:
        self.run_dir, self.command, self.checkpoint, self.changes = run_dir, command, checkpoint, changes

    def start(self, trainer: Any) -> None:
        show_held_notes()
        if trainer.is_global_zero:
            record_start(self.run_dir, self.command, self.checkpoint, self.changes)
