"""Run directories: where a run lives, which checkpoint continues it, and who may write it.

A run directory holds one training run: ``metrics.csv``, ``config.yaml``, ``hparams.yaml``,
``checkpoints/last.ckpt``, ``run_record.yaml`` and, with W&B, ``wandb/``. The rules:

* Only ``fit`` writes a run's files, and one ``fit`` at a time: it holds ``run.lock`` (pid, host,
  SLURM job) while it runs. Another fit is refused naming the holder; a lock whose holder is gone (a
  dead pid on the same host, or an earlier start of the same SLURM job after a requeue) is taken over.
* ``fit`` into a directory that already holds checkpoints only continues that run; a directory that
  is neither empty nor a run is refused.
* ``validate``/``test``/``predict`` write into a new sub-folder ``<run>/<command>-<timestamp>/``.
* The checkpoint that continues a run is the one with the highest saved ``global_step`` (ties: the
  newer file) among ``checkpoints/*.ckpt`` and Lightning's SLURM checkpoints ``hpc_ckpt_<n>.ckpt``,
  so a copied or moved run resumes where it stopped.
* Checkpoints are written atomically (a temporary file in the same directory, then a rename), so an
  interrupted save or a full disk leaves the previous file intact, and are read as plain data only
  (``torch.load(weights_only=True)``): a checkpoint cannot run code.
* ``run_record.yaml`` lists every start of the run: command, time, host, the checkpoint and step it
  continued from, and the settings it changed (see :mod:`ssl_norms.resume`). An entry is written when
  the run starts (``RecordStart``), so a command refused before leaves none.

This module imports neither torch nor Lightning, so that a command's ``--help`` can use it; the
Lightning parts (:class:`~ssl_norms.run_hooks.AtomicCheckpointIO`, :class:`~ssl_norms.run_hooks.RecordStart`)
live in :mod:`ssl_norms.run_hooks`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

RUNS_ENV = "SSL_NORMS_RUNS"
RUN_DIR_ENV = "SSL_NORMS_RUN_DIR"  # set by the launching process so DDP children share the run dir
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "run.lock"
RECORD_FILE = "run_record.yaml"
RUN_FILES = (RECORD_FILE, CHECKPOINT_DIR, "metrics.csv", "config.yaml")  # any one marks a run dir


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used as asked; the CLI prints it as one line (exit 2)."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the file it would have replaced is intact."""


# ---- where runs live ---------------------------------------------------------------------------
def runs_root() -> Path:
    """``$SSL_NORMS_RUNS``, default ``./runs``: the root of every run directory and simulation output."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def short_name(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1].lower().replace("datamodule", "")


def experiment_name(cfg: Any) -> str:
    """``<method>-<data>`` of a config: the folder under the runs root that holds its runs."""
    return f"{short_name(cfg.model.class_path)}-{short_name(cfg.data.class_path)}"


def run_dir_of(ckpt: str | Path) -> Path:
    """The run directory of a checkpoint (``<run_dir>/checkpoints/x.ckpt`` -> ``<run_dir>``)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else ckpt.parent


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def slurm_run_name() -> str | None:
    """``slurm-<job id>[-<array task id>]`` inside a SLURM job (a requeued job finds its run again)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}" + (f"-{task}" if task else "")


def slurm_restart_count() -> int:
    """How often SLURM has requeued this job (0 outside SLURM or on the first start)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def is_first_process() -> bool:
    """The process that writes run-level files and messages (DDP children and other SLURM tasks do not)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


_held_notes: list[str] | None = None  # notes kept back until the command's run starts (hold_notes)


def note(message: str) -> None:
    if not is_first_process():
        return
    if _held_notes is not None:
        _held_notes.append(message)
    else:
        print(f"ssl-norms: {message}", file=sys.stderr, flush=True)


def hold_notes() -> None:
    """Keep notes back until :func:`show_held_notes` (the run starts); :func:`drop_held_notes` when the
    command fails first, so its error is the only line it prints."""
    global _held_notes
    _held_notes = []


def show_held_notes() -> None:
    global _held_notes
    held, _held_notes = _held_notes or [], None
    for message in held:
        note(message)


def drop_held_notes() -> None:
    global _held_notes
    _held_notes = None


# ---- directories and small files ----------------------------------------------------------------
def make_dir(path: Path) -> None:
    """``mkdir -p`` with one-line errors: a file in the way, no permission, a read-only file system."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"{path} exists and is not a directory; pass a new --run_dir") from None
    except OSError as err:
        raise RunError(f"cannot create {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RunError(f"{path} is not writable")


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, deepest first: what creating it creates."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty: the folders of a command that wrote nothing."""
    for path in dirs:
        try:
            path.rmdir()
        except OSError:  # not empty (the run started), or gone
            return


def create_unique_dir(parent: Path, stem: str) -> Path:
    """A new directory ``parent/stem`` (``stem-2``, ``stem-3``, ... when taken): two commands started
    in the same second never share one."""
    make_dir(parent)
    for n in range(1, 1000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise RunError(f"cannot create {path}: {err.strerror}") from None
    raise RunError(f"cannot create a new {stem} folder in {parent}: 1000 exist")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: readers see the old file or the new one, never a part."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def create_file_once(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists (then False). Atomic across processes and
    hosts sharing the file system: a complete temporary file is hard-linked to the name."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    temp.write_text(text)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink()


# ---- checkpoints -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read without its tensor data: step, hyperparameters, parameter shapes."""

    path: Path
    global_step: int
    hparams: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]


def load_error(path: Path, err: Exception) -> str:
    """One line on why ``path`` cannot be loaded: a refused global (possible code) or an unreadable file."""
    refused = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
    if refused or "Weights only load failed" in str(err):
        what = refused[1] if refused else "an object"
        return f"refusing to load {path}: it holds {what}, which is not plain data (files are loaded with weights_only=True)"
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        detail = "the file is empty"
    elif not zipfile.is_zipfile(path):
        detail = f"{size} bytes that are not the zip archive torch.save writes"
    else:  # torch's message: its first sentence
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__).split(". ")[0]
    return f"{path} is not a readable checkpoint (truncated, empty or not a PyTorch file: {detail})"


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a Lightning checkpoint; memory-mapped, so cheap for large files."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint file at {path}" + (" (a directory: pass a .ckpt file in it)" if path.is_dir() else ""))
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises many types for a damaged file; each becomes one line
        raise RunError(load_error(path, err)) from None
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise RunError(f"{path} is not a Lightning checkpoint (no state_dict)")
    shapes = {name: tuple(value.shape) for name, value in data["state_dict"].items() if isinstance(value, torch.Tensor)}
    return CheckpointInfo(path, int(data.get("global_step", 0)), dict(data.get("hyper_parameters") or {}), shapes)


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Every checkpoint a run dir holds: ``checkpoints/*.ckpt`` and Lightning's ``hpc_ckpt_<n>.ckpt``."""
    return sorted([*(run_dir / CHECKPOINT_DIR).glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")])


def newest_checkpoint(run_dir: Path, why: str = "") -> CheckpointInfo | None:
    """The checkpoint that continues ``run_dir``: highest saved global step, ties to the newer file.
    Unreadable files are skipped with a note (e.g. an interrupted save of Lightning's own writer);
    when ``why`` is given (the flag asking for it), a run whose every checkpoint is unreadable is a
    :class:`RunError` naming the first."""
    readable, unreadable = [], []
    for path in checkpoint_files(run_dir):
        try:
            readable.append(read_checkpoint(path))
        except RunError as err:
            unreadable.append(str(err))
    if why and unreadable and not readable:
        raise RunError(f"{why}: no readable checkpoint in {run_dir}: {unreadable[0]}")
    for reason in unreadable:
        note(f"skipping {reason}")
    return max(readable, key=lambda c: (c.global_step, c.path.stat().st_mtime_ns), default=None)


def newest_run(experiment_dir: Path) -> Path | None:
    """The run under ``experiment_dir`` whose newest checkpoint file was written last."""
    if not experiment_dir.is_dir():
        return None
    runs = [(max(f.stat().st_mtime_ns for f in files), run) for run in experiment_dir.iterdir()
            if run.is_dir() and (files := checkpoint_files(run))]
    return max(runs)[1] if runs else None


# ---- one writer per run ------------------------------------------------------------------------
def _this_process() -> dict[str, Any]:
    holder: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    if os.environ.get("SLURM_JOB_ID"):
        holder.update(slurm_job_id=os.environ["SLURM_JOB_ID"], slurm_restart_count=slurm_restart_count())
    return holder


def _describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('since')}"


def _holder_is_gone(holder: dict[str, Any]) -> bool:
    """True when the lock's process cannot be running: SLURM runs one start of a job at a time, so a
    later restart of the same job replaces it; on the same host a pid that does not exist is gone."""
    me = _this_process()
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me.get("slurm_job_id"):
        if me["slurm_restart_count"] > int(holder.get("slurm_restart_count") or 0):
            return True
    if holder.get("host") != me["host"]:
        return False
    pid = holder.get("pid")
    if pid == me["pid"]:  # this very process: an earlier run in it ended without releasing
        return True
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


def _remove_if_unchanged(path: Path, expected: str) -> None:
    """Remove the stale lock ``path`` unless another process replaced it meanwhile (then put it back)."""
    aside = path.with_name(f".{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.read_text() != expected:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink()


def acquire_lock(run_dir: Path) -> Callable[[], None]:
    """Lock ``run_dir`` for this process (see module docstring); returns the release function."""
    path = run_dir / LOCK_FILE
    mine = json.dumps({**_this_process(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    for _ in range(3):
        try:
            if create_file_once(path, mine):
                return lambda: _release(path, mine)
            text = path.read_text()
        except FileNotFoundError:
            continue  # released between our two looks
        except OSError as err:
            raise RunError(f"cannot lock {run_dir}: {err.strerror}") from None
        try:
            holder = json.loads(text)
        except ValueError:
            raise RunError(f"{path} is not a lock file written by ssl-norms; delete it if no fit is running on {run_dir}") from None
        if not _holder_is_gone(holder):
            raise RunError(f"{run_dir} is in use by another fit ({_describe(holder)}); wait for it to end, "
                           f"or delete {path} if that process is gone")
        note(f"taking over the lock of {run_dir} from {_describe(holder)}: that process is gone")
        _remove_if_unchanged(path, text)
    raise RunError(f"cannot lock {run_dir}: other processes keep taking it")


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (a lock left by a dead one does not count)."""
    try:
        return not _holder_is_gone(json.loads((run_dir / LOCK_FILE).read_text()))
    except (OSError, ValueError):
        return False


def _release(path: Path, mine: str) -> None:
    try:
        if path.read_text() == mine:
            path.unlink()
    except FileNotFoundError:
        pass


# ---- the run record ----------------------------------------------------------------------------
def record_start(run_dir: Path, command: str, checkpoint: CheckpointInfo | None, changes: dict[str, Any]) -> None:
    """Append one start to ``run_dir/run_record.yaml``: command, time, process, where the run directory
    was (a copied run tells its source by it), the checkpoint (relative to the run when it is the
    run's own) and global step it continued from, and the changed settings."""
    entry: dict[str, Any] = {"command": command, "run_dir": str(run_dir.resolve()), "checkpoint": None}
    if checkpoint is not None:
        ckpt, run = checkpoint.path.resolve(), run_dir.resolve()
        entry.update(checkpoint=str(ckpt.relative_to(run) if ckpt.is_relative_to(run) else ckpt), global_step=checkpoint.global_step)
    if changes:
        entry["changes"] = changes
    path = run_dir / RECORD_FILE
    record = yaml.safe_load(path.read_text()) if path.is_file() else None
    record = record if isinstance(record, dict) else {}
    record.setdefault("starts", []).append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), **_this_process(), **entry})
    write_atomically(path, yaml.safe_dump(record, sort_keys=False))


def holds_checkpoints(run_dir: Path) -> bool:
    return run_dir.is_dir() and bool(checkpoint_files(run_dir))


def check_fit_dir(run_dir: Path, checkpoint: CheckpointInfo | None) -> None:
    """Refuse a fit that would overwrite another run: ``run_dir`` must be new, empty, or a run that
    this fit continues (its checkpoint is one of the run's own)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--run_dir {run_dir} is a file, not a directory")
    if not run_dir.is_dir():
        return
    foreign = [path for path in run_dir.iterdir() if path.name != LOCK_FILE]
    if foreign and not any((run_dir / name).exists() for name in RUN_FILES):
        raise RunError(f"{run_dir} is not empty and is not a run directory; pass a new or empty --run_dir")
    own = checkpoint is not None and checkpoint.path.resolve().is_relative_to(run_dir.resolve())
    if holds_checkpoints(run_dir) and not own:
        what = f"a fit from {checkpoint.path}" if checkpoint is not None else "a new fit"
        raise RunError(f"{run_dir} already holds a run with checkpoints; {what} would overwrite it. "
                       "Continue it with --ckpt_path last, or pass a new --run_dir")


# ---- what a command works on -------------------------------------------------------------------
def fit_run_dir(cfg: Any, run_dir_arg: str | None, ckpt_arg: str | None) -> Path | None:
    """The run dir of a fit: ``--run_dir``; with ``--ckpt_path last`` alone the newest run of the
    experiment; under SLURM the job's run; None: a new run (created under the experiment folder)."""
    experiment = runs_root() / experiment_name(cfg)
    if run_dir_arg:
        return Path(run_dir_arg)
    if ckpt_arg == "last":
        run_dir = newest_run(experiment)
        if run_dir is None:
            raise RunError(f"--ckpt_path last: no run with a checkpoint under {experiment}; pass --run_dir DIR")
        return run_dir
    name = slurm_run_name()
    return experiment / name if name else None


def fit_checkpoint(run_dir: Path | None, ckpt_arg: str | None) -> CheckpointInfo | None:
    """The checkpoint a fit continues: ``--ckpt_path last`` -> the run's newest (none yet: a fresh
    start), a path -> that file. A SLURM requeue continues the run's newest whatever the (repeated)
    command line says. Refuses a fit that would overwrite another run."""
    restarts = slurm_restart_count()
    requeued = restarts > 0 and run_dir is not None and (ckpt_arg is None or holds_checkpoints(run_dir))
    checkpoint = None
    if ckpt_arg == "last" or requeued:  # run_dir is known then (fit_run_dir)
        why = "--ckpt_path last" if ckpt_arg == "last" else f"SLURM restart {restarts}"
        checkpoint = newest_checkpoint(run_dir, why)
        if checkpoint is not None:
            note(f"{why}: resuming {run_dir} from {checkpoint.path.name} (global step {checkpoint.global_step})")
        else:
            note(f"{why}: no checkpoint in {run_dir} yet, starting fresh")
    elif ckpt_arg:
        checkpoint = read_checkpoint(ckpt_arg)
    if run_dir is not None:
        check_fit_dir(run_dir, checkpoint)
    return checkpoint


def run_config(run: Path) -> dict[str, Any]:
    """The run's ``config.yaml``; empty when the folder holds no readable one (a checkpoint outside a run)."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def run_data_config(run: Path) -> dict[str, Any] | None:
    """The ``data`` section (``class_path``, ``init_args``) of the run's ``config.yaml``, if any."""
    data = run_config(run).get("data")
    return data if isinstance(data, dict) and data.get("class_path") else None


def run_precision(run: Path) -> str | None:
    """The precision the run was trained at, as its ``config.yaml`` records it."""
    trainer = run_config(run).get("trainer")
    precision = trainer.get("precision") if isinstance(trainer, dict) else None
    return None if precision is None else str(precision)


def evaluation_target(cfg: Any, run_dir_arg: str | None, ckpt_arg: str | None) -> tuple[Path, CheckpointInfo | None]:
    """(run whose ``<command>-<timestamp>/`` sub-folder gets the output, checkpoint) of
    validate/test/predict: a checkpoint path and its run; ``--ckpt_path last`` or ``--run_dir`` alone:
    the run's newest checkpoint; neither: the configured model as initialised, under the experiment."""
    if ckpt_arg and ckpt_arg != "last":
        return Path(run_dir_arg) if run_dir_arg else run_dir_of(ckpt_arg), read_checkpoint(ckpt_arg)
    experiment = runs_root() / experiment_name(cfg)
    run = Path(run_dir_arg) if run_dir_arg else newest_run(experiment) if ckpt_arg == "last" else None
    if run is None:
        if ckpt_arg == "last":
            raise RunError(f"--ckpt_path last: no run with a checkpoint under {experiment}; pass --run_dir RUN")
        return experiment, None
    why = f"--run_dir {run}" if run_dir_arg else "--ckpt_path last"
    if not run.is_dir():
        raise RunError(f"{why}: no such directory")
    checkpoint = newest_checkpoint(run, why)
    if checkpoint is None:
        raise RunError(f"no checkpoint in {run} (looked for {CHECKPOINT_DIR}/*.ckpt and hpc_ckpt_*.ckpt)")
    note(f"evaluating {checkpoint.path} (global step {checkpoint.global_step})")
    return run, checkpoint

