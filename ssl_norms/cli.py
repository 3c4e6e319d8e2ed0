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
atomically; a configured one that keeps only its newest file and ``save_last`` keeps ``last.ckpt``
alone, never two identical files), the NonFiniteGuard, GlobalBatchLog (global batch and lr stated at
fit start, lr never rescaled), ReproducibleResume (per-epoch seeds and the data position, so a resumed
run draws the data of an uninterrupted one), WandbValidationMedia (figures into the W&B run, when there
is one) and a CSVLogger (``metrics.csv``, kept across resumes) next to any other logger. ``predict``
gets an EmbeddingWriter (``predictions.npz``) unless a prediction writer is configured;
``validate``/``test``/``predict`` of a run's checkpoint use the run's data settings
(:meth:`SSLNormsCLI._use_run_data`).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

import ssl_norms.callbacks  # noqa: F401  (makes callback class names resolvable in YAML)
from ssl_norms import help_cache
from ssl_norms.bad_input import UsageError, check_trainer
from ssl_norms.callbacks import NonFiniteGuard
from ssl_norms.callbacks.global_batch import GlobalBatchLog
from ssl_norms.callbacks.prediction_writer import EmbeddingWriter
from ssl_norms.callbacks.progress import ModelSummary as QuietModelSummary, ProgressLines
from ssl_norms.callbacks.reproducible_resume import ReproducibleResume
from ssl_norms.callbacks.wandb_media import WandbValidationMedia
from ssl_norms.commands import LIGHTNING_COMMANDS
from ssl_norms.data import SSLDataModule
from ssl_norms.hardware import default_precision
from ssl_norms.lightning_compat import drop_unset_wandb_anonymous
from ssl_norms.methods import SSLMethod
from ssl_norms.resume import ApplyResumeChanges, check_parameters, compare_with_checkpoint, describe_changes, plain
from ssl_norms.run_hooks import AtomicCheckpointIO, RecordStart, RunStart
from ssl_norms.runs import (
    CHECKPOINT_DIR, RUN_DIR_ENV, RUNS_ENV, acquire_lock,
    create_unique_dir, drop_held_notes, evaluation_target, experiment_name, fit_checkpoint, fit_run_dir, hold_notes,
    is_first_process, make_dir, missing_dirs, note, remove_empty_dirs, run_data_config, run_precision, runs_root, timestamp,
)

CSV_LOGGER = "ssl_norms.loggers.CSVLogger"
RUN_ARGS = ("run_dir", "ckpt_path")  # read from the command line only (module docstring)
# data settings of this machine, not of the evaluated run: where the data is and how it is loaded
LOCAL_DATA_SETTINGS = ("root", "num_workers", "batch_size", "eval_batch_size", "augment_on")


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


def command_line_data_keys(words: list[str]) -> set[str] | None:
    """The data settings written on the command line (``--data.init_args.KEY`` or ``--data.KEY``);
    None when ``--data`` itself or ``--data.class_path`` is (the whole data section is then given)."""
    keys: set[str] = set()
    for word in words:
        name = word.split("=", 1)[0]
        if name in ("--data", "--data.class_path"):
            return None
        if name.startswith("--data."):
            keys.add(name.removeprefix("--data.").removeprefix("init_args.").split(".")[0])  # imbalance.preset -> imbalance
    return keys


def check_sync_batchnorm(trainer: Trainer, requested: bool) -> None:
    """SyncBatchNorm exists for GPUs only (torch has no CPU kernel): say so before any process starts.
    Runs on the instantiated Trainer, so Lightning has already resolved accelerator and devices."""
    if requested and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        raise UsageError(
            "--trainer.sync_batchnorm true needs GPUs (torch's SyncBatchNorm has no CPU kernel); for a multi-process "
            "CPU run pass --trainer.sync_batchnorm false (BatchNorm statistics are then per process)"
        )


def _configure_logger(logger: Namespace, run_dir: Path, cfg: Namespace, command: str) -> Namespace:
    args = logger.get("init_args") or Namespace()
    class_name = logger.class_path.rsplit(".", 1)[-1]
    if class_name == "CSVLogger":
        logger.class_path = CSV_LOGGER  # keeps metrics.csv across resumes (Lightning's would delete it)
    if class_name in ("CSVLogger", "TensorBoardLogger"):
        args.save_dir, args.name, args.version = str(run_dir), "", ""
    elif class_name == "WandbLogger":
        from ssl_norms.wandb_setup import configure_wandb_args

        configure_wandb_args(args, run_dir, cfg, command)
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

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """A fit's config also goes into its W&B run (run config and artifact); an evaluation's
        config is its own, not the training run's (rank 0 only, after config.yaml is written)."""
        wandb_logger = next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)
        if stage == "fit" and wandb_logger is not None:
            from ssl_norms.wandb_setup import log_run_config

            log_run_config(wandb_logger.experiment, Path(trainer.log_dir) / self.config_filename)


class SSLNormsCLI(LightningCLI):
    """LightningCLI with the run rules of :mod:`ssl_norms.runs`. ``cleanup`` releases the run lock,
    drops notes never shown and removes the folders the command made and left empty, when the command
    ends, whichever way it ends."""

    def __init__(self, *args: Any, cleanup: ExitStack, **kwargs: Any) -> None:
        self.cleanup = cleanup
        words = kwargs.get("args")
        words = sys.argv[1:] if words is None else words
        listed = isinstance(words, (list, tuple))
        self.requested = command_line_run_args(list(words)) if listed else None
        self.data_keys = command_line_data_keys(list(words)) if listed else None  # a dict: every setting explicit
        self.words = list(words) if listed else []
        super().__init__(*args, save_config_callback=SaveRunConfig, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        # the parser is built: keep its help, so the next `COMMAND --help` and mistyped option answer at once
        command = next((word for word in self.words if word in LIGHTNING_COMMANDS), None)
        if command is not None:
            help_cache.keep_help(command, parser._subcommands_action.choices[command])
        super().parse_arguments(parser, args)

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
            self._choose_precision(cfg, run_dir if self.checkpoint is not None else None)
        else:
            run, self.checkpoint = evaluation_target(cfg, run_dir_arg, ckpt_arg)  # children resolve the same
            if self.checkpoint is not None:
                self._use_run_data(cfg, run)
            self._choose_precision(cfg, run if self.checkpoint is not None else None)
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

    @staticmethod
    def _choose_precision(cfg: Namespace, trained_run: Path | None) -> None:
        """A precision left open in the config: the one a trained run recorded when this command continues
        or evaluates it (a resume never changes the numerics silently), else the hardware's choice; either
        is recorded in config.yaml and stated in one line unless it is the hardware's choice for a trained run."""
        if cfg.trainer.get("precision") is not None:
            return
        chosen, why = default_precision(cfg.trainer.get("accelerator"))
        recorded = run_precision(trained_run) if trained_run is not None else None
        cfg.trainer.precision = recorded or chosen
        if recorded is None:
            note(why)
        elif recorded != chosen:  # the same as the hardware's choice needs no second note
            note(f"precision {recorded}, as the run was trained ({trained_run / 'config.yaml'}; --trainer.precision to change it)")

    def _use_run_data(self, cfg: Namespace, run: Path) -> None:
        """Evaluate a run's checkpoint on the run's own data (its subsets decide the k-NN bank): the data
        settings of ``<run>/config.yaml`` replace the configured ones, except those written on the
        command line and the machine's own (``LOCAL_DATA_SETTINGS``)."""
        saved = run_data_config(run)
        if saved is None or self.data_keys is None:
            return
        current = cfg.data.get("init_args") or Namespace()
        taken = []
        if saved["class_path"] != cfg.data.class_path:
            current = Namespace(**{key: current[key] for key in LOCAL_DATA_SETTINGS if key in current})
            cfg.data.class_path = saved["class_path"]
            taken.append(f"class_path={saved['class_path']}")
        for key, value in (saved.get("init_args") or {}).items():
            if key in self.data_keys or key in LOCAL_DATA_SETTINGS and key in current:
                continue
            if key not in current or plain(current[key]) != value:
                current[key] = value
                taken.append(f"{key}={value}")
        cfg.data.init_args = current
        if taken:
            note(f"data settings of {run / 'config.yaml'}: {', '.join(taken)} (command-line --data.* settings override them)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("weights_only") is False:
            raise UsageError("--weights_only false is not supported: ssl-norms loads checkpoints as plain data only")
        check_trainer(cfg.trainer)
        cfg.weights_only = True
        self.owner = is_first_process()
        hold_notes()  # shown when the run starts (RecordStart): a refused command prints its error alone
        self.cleanup.callback(drop_held_notes)
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
            cfg.trainer.logger = [_configure_logger(entry, out, cfg, self.subcommand) for entry in loggers]
        self.run_dir = out

    def after_instantiate_classes(self) -> None:
        if self.checkpoint is not None:
            check_parameters(self.model, self.checkpoint)
        views = getattr(self.datamodule, "num_views", None)
        if self.subcommand == "fit" and views is not None:
            self.model.check_views([None] * views)  # refused now, not at the first training step
        self.model.check_input_size(getattr(self.datamodule, "eval_image_size", None))  # likewise, not at the first forward

    def instantiate_trainer(self, **kwargs):
        # Every run keeps last.ckpt in <run_dir>/checkpoints and stops cleanly on a non-finite loss.
        trainer_config = self.config_init[self.subcommand].trainer
        configured = trainer_config.get("callbacks") or []
        callbacks = list(configured) if isinstance(configured, list) else [configured]
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for callback in checkpoints:
            if callback.save_last is True and callback.monitor is None and callback.save_top_k == 1:
                callback.save_top_k = 0  # its one kept file would be the newest, a copy of last.ckpt
            if callback.dirpath is None:
                callback.dirpath = str(self.run_dir / CHECKPOINT_DIR)
                # the lock and check_fit_dir make every file there this run's own: overwrite, never last-v1
                callback._enable_version_counter = False
        if not checkpoints and self.subcommand == "fit":  # one file, last.ckpt, replaced every epoch
            callbacks.append(ModelCheckpoint(dirpath=str(self.run_dir / CHECKPOINT_DIR), filename="last",
                                             enable_version_counter=False))
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(EmbeddingWriter())  # predictions.npz in the predict-<timestamp>/ folder
        for default in (NonFiniteGuard, GlobalBatchLog, ReproducibleResume, WandbValidationMedia):
            if not any(isinstance(c, default) for c in callbacks):
                callbacks.append(default())
        quiet, barebones = {}, bool(trainer_config.get("barebones"))
        if (not barebones and trainer_config.get("enable_model_summary") is not False
                and not any(isinstance(c, ModelSummary) for c in callbacks)):
            callbacks.append(QuietModelSummary())
            quiet["enable_model_summary"] = False  # ours replaces Lightning's default, without its note saying so
        if (not barebones and trainer_config.get("enable_progress_bar") is not False and not sys.stdout.isatty()
                and not any(isinstance(c, ProgressBar) for c in callbacks)):
            callbacks.append(ProgressLines())  # off a terminal a bar only draws its final state
        if self.changes and self.subcommand == "fit":
            callbacks.append(ApplyResumeChanges(self.changes, self.checkpoint.global_step))
        if self.owner:
            callbacks.insert(0, RecordStart(self.run_dir, self.subcommand, self.checkpoint, self.changes))
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        try:
            trainer = super().instantiate_trainer(**{**kwargs, **quiet, "callbacks": callbacks, "plugins": plugins})
        except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning refusing --trainer.* settings
            raise UsageError(f"--trainer: {err}") from err
        check_sync_batchnorm(trainer, bool(trainer_config.get("sync_batchnorm")))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                drop_unset_wandb_anonymous(logger)
        return trainer


def _active_wandb_run() -> Any:
    return getattr(sys.modules.get("wandb"), "run", None)


def _finish_wandb_run(active_before: Any) -> None:
    """Close the W&B run this command started (Lightning leaves it open), so its files are complete
    when the command returns and the next run in the same process (``ssl-norms sweep --all``) starts
    its own. A W&B run that was active before the command (e.g. a notebook's) stays open."""
    run = _active_wandb_run()
    if run is not None and run is not active_before:
        from ssl_norms.wandb_setup import finish_run

        finish_run(run)


def run_lightning_cli(args: list[str] | None = None) -> SSLNormsCLI:
    inherited = os.environ.get(RUN_DIR_ENV)
    active_wandb_run = _active_wandb_run()
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
        _finish_wandb_run(active_wandb_run)
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = inherited


# The entry point lives in ssl_norms.main (light: it imports this module only for Lightning's commands);
# named here too for `python -m ssl_norms.cli` and callers of ssl_norms.cli.main.
from ssl_norms.main import failure, main  # noqa: E402,F401

if __name__ == "__main__":
    main()
