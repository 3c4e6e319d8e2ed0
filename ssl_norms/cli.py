"""``ssl-norms``: LightningCLI (fit / validate / test / predict) plus the project's own commands.

Every run writes into one run directory: ``metrics.csv``, ``config.yaml``, ``checkpoints/``
(``last.ckpt`` always kept), the summary PNG and, with W&B, ``wandb/``. The directory is
``--run_dir`` when given, else ``$SSL_NORMS_RUNS/<method>-<data>/<timestamp or slurm-<job id>[-<array task id>]>``
(``$SSL_NORMS_RUNS`` defaults to ``runs``). ``--ckpt_path last`` without ``--run_dir`` resumes the
newest run of the same method and data.

Resuming: ``fit --ckpt_path last`` continues from the run dir's newest checkpoint
(``checkpoints/last.ckpt``, or Lightning's SLURM preemption checkpoint ``hpc_ckpt_<n>.ckpt`` when it
is newer) and starts fresh when there is none yet. A SLURM requeue (``SLURM_RESTART_COUNT`` > 0)
does the same without any flag: the requeued job has the same job id, hence the same run dir.

Every fit also gets, unless configured: ModelCheckpoint(save_last) into ``checkpoints/``, the
NonFiniteGuard, GlobalBatchLog (global batch and lr stated at fit start, lr never rescaled),
ReproducibleResume (per-epoch seeds and the data position, so a resumed run draws the data of an
uninterrupted one) and a CSVLogger (``metrics.csv``, kept across resumes) next to any other logger.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
import time
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import ssl_norms.callbacks  # noqa: F401  (makes callback class names resolvable in YAML)
from ssl_norms.callbacks import NonFiniteGuard, NonFiniteLossError
from ssl_norms.callbacks.global_batch import GlobalBatchLog
from ssl_norms.callbacks.reproducible_resume import ReproducibleResume
from ssl_norms.commands import COMMANDS, run_command, usage
from ssl_norms.data import SSLDataModule
from ssl_norms.methods import SSLMethod
from ssl_norms.wandb_setup import short_name

RUNS_ENV = "SSL_NORMS_RUNS"
RUN_DIR_ENV = "SSL_NORMS_RUN_DIR"  # set by the launching process so DDP children share the run dir
CSV_LOGGER = "ssl_norms.loggers.CSVLogger"


class UsageError(ValueError):
    """A bad command line or config; printed as one line."""


def experiment_name(cfg: Namespace) -> str:
    return f"{short_name(cfg.model.class_path)}-{short_name(cfg.data.class_path)}"


def _run_id() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"-{task}" if task else "")
    return time.strftime("%Y%m%d-%H%M%S")


def newest_resumable_run(experiment_dir: Path) -> Path | None:
    candidates = sorted(experiment_dir.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1].parent.parent if candidates else None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint a run can continue from: ``checkpoints/last.ckpt`` or the checkpoint
    Lightning's SLURM auto-requeue writes on SIGUSR1 (``hpc_ckpt_<n>.ckpt`` in the run dir)."""
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime) if existing else None


def slurm_restart_count() -> int:
    """How often SLURM has requeued this job (0 outside SLURM or on the first start)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def _is_first_process() -> bool:
    """The process that prints run-level messages (DDP children and other SLURM tasks stay quiet)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _note(message: str) -> None:
    if _is_first_process():
        print(f"ssl-norms: {message}", file=sys.stderr, flush=True)


def resolve_resume(cfg: Namespace, run_dir: Path) -> None:
    """Set ``cfg.ckpt_path`` for ``fit``: ``last`` or a SLURM requeue -> the run's newest checkpoint."""
    ckpt_path = cfg.get("ckpt_path")
    restarts = slurm_restart_count()
    if ckpt_path != "last" and not (ckpt_path is None and restarts > 0):
        return
    found = resume_checkpoint(run_dir)
    why = f"SLURM restart {restarts}" if ckpt_path is None else "--ckpt_path last"
    if found is None:
        _note(f"{why}: no checkpoint in {run_dir} yet, starting fresh")
        cfg.ckpt_path = None
    else:
        _note(f"{why}: resuming {run_dir} from {found.name}")
        cfg.ckpt_path = str(found)


def check_sync_batchnorm(trainer: Trainer, requested: bool) -> None:
    """SyncBatchNorm exists for GPUs only (torch has no CPU kernel): say so before any process starts.
    Runs on the instantiated Trainer, so Lightning has already resolved accelerator and devices."""
    if requested and isinstance(trainer.accelerator, CPUAccelerator) and trainer.world_size > 1:
        raise UsageError(
            "--trainer.sync_batchnorm true needs GPUs (torch's SyncBatchNorm has no CPU kernel); for a multi-process "
            "CPU run pass --trainer.sync_batchnorm false (BatchNorm statistics are then per process)"
        )


def resolve_run_dir(cfg: Namespace, subcommand: str) -> Path:
    """Where this run writes (see module docstring)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    experiment_dir = Path(os.environ.get(RUNS_ENV, "runs")) / experiment_name(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if subcommand == "fit":
        if ckpt_path == "last":
            run = newest_resumable_run(experiment_dir)
            if run is None:
                raise UsageError(f"--ckpt_path last: no run with checkpoints/last.ckpt under {experiment_dir}; pass --run_dir DIR")
            return run
        return experiment_dir / _run_id()
    # validate/test/predict write next to the checkpoint's run, never over its files
    if ckpt_path and ckpt_path not in ("last", "best"):
        ckpt = Path(ckpt_path)
        base = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return base / f"{subcommand}-{_run_id()}"
    return experiment_dir / f"{subcommand}-{_run_id()}"


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


class SSLNormsCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir", type=str | None, default=None,
            help=f"run directory (default ${RUNS_ENV}/<method>-<data>/<timestamp>; set it to resume a given run)",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        run_dir = resolve_run_dir(cfg, self.subcommand)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_DIR_ENV] = str(run_dir)
        cfg.run_dir = str(run_dir)
        cfg.trainer.default_root_dir = str(run_dir)
        if self.subcommand == "fit":
            resolve_resume(cfg, run_dir)
        logger = cfg.trainer.logger
        if logger is None or logger is True:
            logger = []
        if logger is not False:
            loggers = list(logger) if isinstance(logger, list) else [logger]
            if not any(entry.class_path.rsplit(".", 1)[-1] == "CSVLogger" for entry in loggers):
                loggers.insert(0, Namespace(class_path=CSV_LOGGER, init_args=Namespace()))  # metrics.csv, always
            cfg.trainer.logger = [_configure_logger(entry, run_dir, cfg) for entry in loggers]
        self.run_dir = run_dir

    def instantiate_trainer(self, **kwargs):
        # Every run keeps last.ckpt in <run_dir>/checkpoints and stops cleanly on a non-finite loss.
        configured = self.config_init[self.subcommand].trainer.get("callbacks") or []
        callbacks = list(configured) if isinstance(configured, list) else [configured]
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        for callback in checkpoints:
            if callback.dirpath is None:
                callback.dirpath = str(self.run_dir / "checkpoints")
        if not checkpoints:
            callbacks.append(ModelCheckpoint(dirpath=str(self.run_dir / "checkpoints"), save_last=True))
        for default in (NonFiniteGuard, GlobalBatchLog, ReproducibleResume):
            if not any(isinstance(c, default) for c in callbacks):
                callbacks.append(default())
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": callbacks})
        check_sync_batchnorm(trainer, bool(self.config_init[self.subcommand].trainer.get("sync_batchnorm")))
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
        return SSLNormsCLI(
            SSLMethod,
            SSLDataModule,
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

# Lines of jsonargparse's report that explain its type machinery rather than the user's mistake.
_PARSER_NOISE = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given class_path")


def one_line_error(message: str) -> str:
    """The option at fault and the first real reason, from jsonargparse's nested multi-line report."""
    lines = [line.strip().removeprefix("- ").strip() for line in str(message).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_PARSER_NOISE) and line != "Expected a <class 'NoneType'>"]
    if len(lines) == 1 or not reasons:
        return " ".join(line for line in lines if line)
    keys = re.findall(r'Parser key "([^"]+)"', str(message))
    option = ".init_args.".join(keys) if "Problem with given class_path" in str(message) else ".".join(keys)
    prefix = f"--{option}: " if option else ""
    return f"{prefix}{reasons[0]}{_known_choices(option)}"


def _known_choices(option: str) -> str:
    """For a bad --model / --data class, name the classes that exist: that is the fix."""
    import ssl_norms.data
    import ssl_norms.methods

    base, package = {"model": (SSLMethod, ssl_norms.methods), "data": (SSLDataModule, ssl_norms.data)}.get(option, (None, None))
    if base is None:
        return ""
    names = sorted(
        name for name in dir(package)
        if isinstance(getattr(package, name), type) and issubclass(getattr(package, name), base) and getattr(package, name) is not base
    )
    return f"; known: {', '.join(names)}"


def main(argv: list[str] | None = None) -> None:
    """``ssl-norms COMMAND ...``: LightningCLI for fit/validate/test/predict, :mod:`ssl_norms.commands`
    for the others; bad input is one line on stderr (exit 2; 3 for a non-finite loss)."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if words[:1] in (["-h"], ["--help"]):
            print(usage())
        elif words and words[0] in COMMANDS and words[0] not in LIGHTNING_COMMANDS:
            run_command(words[0], words[1:], run_cli=main)
        elif words and not words[0].startswith("-") and words[0] not in LIGHTNING_COMMANDS:
            raise UsageError(f"unknown command {words[0]!r}; commands: {', '.join(COMMANDS)}")
        else:
            run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except (UsageError, NonFiniteLossError, FileNotFoundError, ValueError, ArgumentError) as err:
        if os.environ.get("SSL_NORMS_DEBUG"):
            raise
        command = next((word for word in words if word in COMMANDS), "<command>")
        hint = f" (see `ssl-norms {command} --help`)" if isinstance(err, ArgumentError) else ""
        print(f"ssl-norms: error: {one_line_error(err)}{hint}", file=sys.stderr)
        sys.exit(2 if not isinstance(err, NonFiniteLossError) else 3)


if __name__ == "__main__":
    main()
