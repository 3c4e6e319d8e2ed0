"""``ssl-norms``: LightningCLI (fit / validate / test / predict) plus the project's own commands.

Where each command writes, the lock, and which checkpoint continues a run: :mod:`ssl_norms.runs`.
What may change on resume: :mod:`ssl_norms.resume`. In short:

* ``fit`` writes into its run directory: ``--run_dir`` when given, else
  ``$SSL_NORMS_RUNS/<method>-<data>/<timestamp or slurm-<job id>[-<array task id>]>`` (``$SSL_NORMS_RUNS``
  defaults to ``runs``). ``--ckpt_path last`` continues the run's newest checkpoint (the newest run of
  the same method and data without ``--run_dir``) and starts fresh when there is none yet; a SLURM
  requeue (``SLURM_RESTART_COUNT`` > 0) does the same without any flag.
* ``validate``/``test``/``predict`` write into a new ``<run>/<command>-<timestamp>/``; the run is
  ``--run_dir``, else the checkpoint's run. ``--ckpt_path last`` or ``--run_dir`` alone evaluate the
  run's newest checkpoint.
* ``run_dir`` and ``ckpt_path`` are taken from the command line only: ``config.yaml`` does not store
  them, and values in a ``--config`` file are ignored with a note, so a reused config starts a new run.
* Config files and trainer settings are checked first (:mod:`ssl_norms.bad_input`), then the run dir
  and checkpoint; ``run_record.yaml``, ``config.yaml`` and the notes are written when the run starts
  (RecordStart, SaveRunConfig). A command that fails before leaves every run as it was, and any
  failure is one line on stderr (:func:`main`).

Every fit also gets, unless configured: ModelCheckpoint (``checkpoints/last.ckpt`` only, replaced
atomically), the NonFiniteGuard, GlobalBatchLog (global batch and lr stated at fit start, lr never
rescaled), ReproducibleResume (per-epoch seeds and the data position, so a resumed run draws the data
of an uninterrupted one) and a CSVLogger (``metrics.csv``, kept across resumes) next to any other logger.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import ssl_norms.callbacks  # noqa: F401  (makes callback class names resolvable in YAML)
from ssl_norms.bad_input import UsageError, check_config_files, check_trainer, one_line_error
from ssl_norms.callbacks import NonFiniteGuard, NonFiniteLossError
from ssl_norms.callbacks.global_batch import GlobalBatchLog
from ssl_norms.callbacks.reproducible_resume import ReproducibleResume
from ssl_norms.commands import COMMANDS, run_command, usage
from ssl_norms.data import SSLDataModule
from ssl_norms.hardware import default_precision
from ssl_norms.methods import SSLMethod
from ssl_norms.resume import ApplyResumeChanges, check_parameters, compare_with_checkpoint, describe_changes
from ssl_norms.runs import (
    CHECKPOINT_DIR, RUN_DIR_ENV, RUNS_ENV, AtomicCheckpointIO, CheckpointSaveError, RecordStart, RunStart, acquire_lock,
    create_unique_dir, drop_held_notes, evaluation_target, experiment_name, fit_checkpoint, fit_run_dir, hold_notes,
    is_first_process, make_dir, missing_dirs, note, remove_empty_dirs, runs_root, timestamp,
)

CSV_LOGGER = "ssl_norms.loggers.CSVLogger"
RUN_ARGS = ("run_dir", "ckpt_path")  # read from the command line only (module docstring)


def command_line_run_args(words: list[str]) -> dict[str, str | None]:
    """The values of ``--run_dir`` / ``--ckpt_path`` written on the command line (the last one wins)."""
    values: dict[str, str | None] = {}
    for i, word in enumerate(words):
        for key in RUN_ARGS:
            flag = f"--{key}"
            if word == flag and i + 1 < len(words):
                values[key] = words[i + 1]
            elif word.startswith(f"{flag}="):
                values[key] = word[len(flag) + 1:]
    return {key: None if value in ("", "null", "None") else value for key, value in values.items()}


def check_sync_batchnorm(trainer: Trainer, requested: bool) -> None:
    """SyncBatchNorm exists for GPUs only (torch has no CPU kernel): say so before any process starts.
    Runs on the instantiated Trainer, so Lightning has already resolved accelerator and devices."""
    if requested and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        raise UsageError(
            "--trainer.sync_batchnorm true needs GPUs (torch's SyncBatchNorm has no CPU kernel); for a multi-process "
            "CPU run pass --trainer.sync_batchnorm false (BatchNorm statistics are then per process)"
        )


def _configure_logger(logger: Namespace, run_dir: Path, cfg: Namespace) -> Namespace:
    args = logger.get("init_args") or Namespace()
    class_name = logger.class_path.rsplit(".", 1)[-1]
    if class_name == "CSVLogger":
        logger.class_path = CSV_LOGGER  # keeps metrics.csv across resumes (Lightning's would delete it)
    if class_name in ("CSVLogger", "TensorBoardLogger"):
        args.save_dir, args.name, args.version = str(run_dir), "", ""
    elif class_name == "WandbLogger":
        from ssl_norms.wandb_setup import configure_wandb_args

        configure_wandb_args(args, run_dir, cfg)
    logger.init_args = args
    return logger


class SaveRunConfig(RunStart, SaveConfigCallback):
    """``config.yaml`` without ``run_dir`` and ``ckpt_path`` (``run_record.yaml`` keeps them): reusing
    a run's config starts a new run. Written when the run starts, not at ``setup``: a command that
    fails before (data, optimizer, checkpoint) leaves the run's config as it was."""

    def __init__(self, parser: Any, config: Namespace, *args: Any, **kwargs: Any) -> None:
        config = config.clone()
        config.run_dir = config.ckpt_path = None
        super().__init__(parser, config, *args, **kwargs)

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._stage = stage  # saved at start()

    def start(self, trainer: Trainer) -> None:
        SaveConfigCallback.setup(self, trainer, trainer.lightning_module, self._stage)  # Lightning's save, now


class SSLNormsCLI(LightningCLI):
    """LightningCLI with the run rules of :mod:`ssl_norms.runs`. ``cleanup`` releases the run lock,
    drops notes never shown and removes the folders the command made and left empty, when the command
    ends, whichever way it ends."""

    def __init__(self, *args: Any, cleanup: ExitStack, **kwargs: Any) -> None:
        self.cleanup = cleanup
        words = kwargs.get("args")
        words = sys.argv[1:] if words is None else words
        self.requested = command_line_run_args(list(words)) if isinstance(words, (list, tuple)) else None
        super().__init__(*args, save_config_callback=SaveRunConfig, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir", type=str | None, default=None,
            help=f"run directory (default ${RUNS_ENV}/<method>-<data>/<timestamp>; set it to resume a given run)",
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning would replace the configured model by the checkpoint's hyperparameters, silently
        dropping command-line settings; here the config defines the model and a checkpoint holding
        another one is refused (ssl_norms.resume)."""

    def _run_args(self, cfg: Namespace) -> tuple[str | None, str | None]:
        """``--run_dir`` and ``--ckpt_path`` as written on the command line (values from a --config
        file are dropped with a note)."""
        if self.requested is None:  # arguments given as a dict: all of them are explicit
            return cfg.get("run_dir"), cfg.get("ckpt_path")
        for key in RUN_ARGS:
            if key not in self.requested and cfg.get(key) is not None:
                note(f"ignoring {key}: {cfg.get(key)} from the config file (a config never continues a run; pass --{key} for that)")
        return self.requested.get("run_dir"), self.requested.get("ckpt_path")

    def _prepare_run(self, cfg: Namespace) -> Path:
        """Resolve, check and claim the directory this command writes into (see ssl_norms.runs); sets
        ``self.checkpoint`` and ``self.changes``. Nothing of a run is written before every check passed
        (the lock of an existing run aside; it is removed again on exit)."""
        run_dir_arg, ckpt_arg = self._run_args(cfg)
        # DDP children (and other ranks) use the run dir of the process that launched them, which
        # owns it: it alone creates it, locks it and writes the record. Rank 0 never inherits one.
        inherited = None if self.owner else os.environ.get(RUN_DIR_ENV)
        fit = self.subcommand == "fit"
        locked = False
        if fit:
            run_dir = Path(inherited) if inherited else fit_run_dir(cfg, run_dir_arg, ckpt_arg)
            if self.owner and run_dir is not None and run_dir.is_dir():  # lock before choosing the checkpoint
                self.cleanup.callback(acquire_lock(run_dir))
                locked = True
            self.checkpoint = fit_checkpoint(run_dir, ckpt_arg)
        else:
            run, self.checkpoint = evaluation_target(cfg, run_dir_arg, ckpt_arg)  # children resolve the same
        self.changes = compare_with_checkpoint(self.checkpoint, cfg.model) if self.checkpoint is not None else {}
        if self.changes and fit:
            note(f"resuming with changed settings from global step {self.checkpoint.global_step}: {describe_changes(self.changes)}")
        if inherited:
            return Path(inherited)
        if fit and run_dir is not None:
            out, created = run_dir, missing_dirs(run_dir)
        else:  # a new folder; ranks started without our launcher (torchrun) take its name, never a "-2"
            parent = runs_root() / experiment_name(cfg) if fit else run
            stem = timestamp() if fit else f"{self.subcommand}-{timestamp()}"
            created = missing_dirs(parent)
            out = create_unique_dir(parent, stem) if self.owner else parent / stem
            created.insert(0, out)
        make_dir(out)
        if self.owner:  # a command that fails before its run starts leaves no folder behind
            self.cleanup.callback(remove_empty_dirs, created)
        if fit and self.owner and not locked:
            self.cleanup.callback(acquire_lock(out))
        return out

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("weights_only") is False:
            raise UsageError("--weights_only false is not supported: ssl-norms loads checkpoints as plain data only")
        check_trainer(cfg.trainer)
        cfg.weights_only = True
        self.owner = is_first_process()
        hold_notes()  # shown when the run starts (RecordStart): a refused command prints its error alone
        self.cleanup.callback(drop_held_notes)
        if cfg.trainer.get("precision") is None:  # left open: the hardware's choice, recorded in config.yaml
            cfg.trainer.precision, why = default_precision(cfg.trainer.get("accelerator"))
            note(why)
        out = self._prepare_run(cfg)
        os.environ[RUN_DIR_ENV] = str(out)
        cfg.run_dir = str(out)
        cfg.ckpt_path = str(self.checkpoint.path) if self.checkpoint is not None else None
        cfg.trainer.default_root_dir = str(out)
        logger = cfg.trainer.logger
        if logger is None or logger is True:
            logger = []
        if logger is not False:
            loggers = list(logger) if isinstance(logger, list) else [logger]
            if not any(entry.class_path.rsplit(".", 1)[-1] == "CSVLogger" for entry in loggers):
                loggers.insert(0, Namespace(class_path=CSV_LOGGER, init_args=Namespace()))  # metrics.csv, always
            cfg.trainer.logger = [_configure_logger(entry, out, cfg) for entry in loggers]
        self.run_dir = out

    def after_instantiate_classes(self) -> None:
        if self.checkpoint is not None:
            check_parameters(self.model, self.checkpoint)
        views = getattr(self.datamodule, "num_views", None)
        if self.subcommand == "fit" and views is not None:
            self.model.check_views([None] * views)  # refused now, not at the first training step

    def instantiate_trainer(self, **kwargs):
        # Every run keeps last.ckpt in <run_dir>/checkpoints and stops cleanly on a non-finite loss.
        trainer_config = self.config_init[self.subcommand].trainer
        configured = trainer_config.get("callbacks") or []
        callbacks = list(configured) if isinstance(configured, list) else [configured]
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for callback in checkpoints:
            if callback.dirpath is None:
                callback.dirpath = str(self.run_dir / CHECKPOINT_DIR)
                # the lock and check_fit_dir make every file there this run's own: overwrite, never last-v1
                callback._enable_version_counter = False
        if not checkpoints:  # one file, last.ckpt, replaced every epoch (save_last would add a second copy)
            callbacks.append(ModelCheckpoint(dirpath=str(self.run_dir / CHECKPOINT_DIR), filename="last",
                                             enable_version_counter=False))
        for default in (NonFiniteGuard, GlobalBatchLog, ReproducibleResume):
            if not any(isinstance(c, default) for c in callbacks):
                callbacks.append(default())
        if self.changes and self.subcommand == "fit":
            callbacks.append(ApplyResumeChanges(self.changes, self.checkpoint.global_step))
        if self.owner:
            callbacks.insert(0, RecordStart(self.run_dir, self.subcommand, self.checkpoint, self.changes))
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        try:
            trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks, "plugins": plugins})
        except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning refusing --trainer.* settings
            raise UsageError(f"--trainer: {err}") from err
        check_sync_batchnorm(trainer, bool(trainer_config.get("sync_batchnorm")))
        return trainer


def _finish_wandb_run() -> None:
    """Close this run's W&B run (Lightning leaves it open): its files are complete when fit returns,
    and the next run in the same process (``ssl-norms sweep --all``) starts its own W&B run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def run_lightning_cli(args: list[str] | None = None) -> SSLNormsCLI:
    inherited = os.environ.get(RUN_DIR_ENV)
    try:
        with ExitStack() as cleanup, warnings.catch_warnings():
            # a command running fits in-process (sweep) passes their args: sys.argv is its own, not theirs
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended", UserWarning)
            return SSLNormsCLI(
                SSLMethod,
                SSLDataModule,
                cleanup=cleanup,
                subclass_mode_model=True,
                subclass_mode_data=True,
                seed_everything_default=0,
                auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True},
                # raise instead of printing usage + a multi-line Union report; main() condenses it
                parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in LIGHTNING_COMMANDS}},
                args=args,
            )
    finally:  # the run dir is shared with this run's DDP children only, not with later runs in-process
        _finish_wandb_run()
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = inherited


LIGHTNING_COMMANDS = tuple(name for name, command in COMMANDS.items() if command.target is None)
# Bad input: the user can fix it (exit 2). MisconfigurationException is Lightning's word for it.
USER_ERRORS = (ValueError, ArgumentError, FileNotFoundError, MisconfigurationException)


class _Stdout(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (looked up per message, as tests swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _lightning_info_to_stdout() -> None:
    """Lightning's progress messages (seed, devices, tips) are information: stdout. Its warnings and
    errors stay on stderr, where an error is then the only line."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if any(isinstance(handler, _Stdout) for handler in logger.handlers):
            continue
        for handler in logger.handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
        info = _Stdout()
        info.addFilter(lambda record: record.levelno < logging.WARNING)
        logger.addHandler(info)


def failure(err: BaseException, command: str) -> tuple[int, str]:
    """Exit code and the one stderr line for ``err``: 2 bad input, 3 a non-finite loss, 1 a failed
    write (disk full, permissions) or an internal fault, 130 an interrupt."""
    if isinstance(err, KeyboardInterrupt):
        return 130, "ssl-norms: interrupted"
    if isinstance(err, NonFiniteLossError):
        return 3, f"ssl-norms: error: {err}"
    if isinstance(err, CheckpointSaveError):
        return 1, f"ssl-norms: error: {err}"
    if isinstance(err, USER_ERRORS):
        hint = f" (see `ssl-norms {command} --help`)" if isinstance(err, ArgumentError) else ""
        return 2, f"ssl-norms: error: {one_line_error(err)}{hint}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return 1, f"ssl-norms: error: {where}{err.strerror or err}"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return 1, f"ssl-norms: internal error: {type(err).__name__}: {first} (SSL_NORMS_DEBUG=1 for the traceback)"


def main(argv: list[str] | None = None) -> None:
    """``ssl-norms COMMAND ...``: LightningCLI for fit/validate/test/predict, :mod:`ssl_norms.commands`
    for the others. Whatever fails, stderr gets one line (:func:`failure`); ``SSL_NORMS_DEBUG=1``
    raises instead, with the traceback."""
    words = list(sys.argv[1:] if argv is None else argv)
    _lightning_info_to_stdout()
    try:
        if words[:1] in (["-h"], ["--help"]):
            print(usage())
        elif words and words[0] in COMMANDS and words[0] not in LIGHTNING_COMMANDS:
            run_command(words[0], words[1:], run_cli=main)
        elif words and not words[0].startswith("-") and words[0] not in LIGHTNING_COMMANDS:
            raise UsageError(f"unknown command {words[0]!r}; commands: {', '.join(COMMANDS)}")
        else:
            check_config_files(words[1:])
            run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get("SSL_NORMS_DEBUG"):
            raise
        code, line = failure(err, next((word for word in words if word in COMMANDS), "<command>"))
        print(line, file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
