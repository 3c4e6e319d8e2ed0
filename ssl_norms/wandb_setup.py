"""W&B without surprises: offline when no credentials, one run id per run directory, project /
group / name / tags derived from the run so a dashboard can group and filter sweeps, and the run's
full config in the W&B run.

Naming (any field set explicitly on the WandbLogger wins):

* project: ``ssl-norms``;
* group: the sweep name for a sweep point (``ssl-norms sweep`` sets ``$SSL_NORMS_SWEEP``; a point
  run by its printed ``fit`` command lives in ``$SSL_NORMS_RUNS/<sweep name>/<label>``, so the folder
  under ``$SSL_NORMS_RUNS`` names it), else ``<method>-<data>`` (also for a ``--run_dir`` elsewhere);
* name: ``<method>-<data>-<run dir name>`` (the sweep point's label, the SLURM job id or the timestamp);
* tags: ``method=``, ``data=``, ``wd=`` (weight decay), ``cut=`` (CutInit c) and ``power=``
  (GradScale p) when those callbacks are configured.

``validate``/``test`` of a run that kept a W&B id, and ``analyze``, log into that run's W&B run (same
id, resumed, metrics prefixed with the command) instead of starting another one. They leave its
``job_type`` alone: resuming a run with a job type relabels the training run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from ssl_norms.runs import RECORD_FILE, create_file_once, note, runs_root, short_name, write_atomically

DEFAULT_PROJECT = "ssl-norms"
RUN_ID_FILE = "wandb_run_id"  # in the run dir: one W&B run per run dir, across requeues and analyses
SWEEP_ENV = "SSL_NORMS_SWEEP"  # set by `ssl-norms sweep` while it runs a point: the point's W&B group


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def existing_run_id(run_dir: Path) -> str | None:
    """The W&B run id a run directory kept (``wandb_run_id``), if it logged to W&B."""
    id_file = Path(run_dir) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run directory (``wandb_run_id``), created once. Every SLURM task of a job
    runs this at the same time; the file is created atomically (:func:`ssl_norms.runs.create_file_once`),
    so all tasks, and every requeue, read the same id."""
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.exists():
        create_file_once(id_file, uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def copied_from(run_dir: Path) -> Path | None:
    """The run directory ``run_dir`` is a copy of: its record's last start ran in another directory
    that still holds the same W&B id. A moved run (its old directory gone) is the same run, and
    keeps its id; a copy taken to a machine without the source cannot be told from a move."""
    try:
        starts = (yaml.safe_load((Path(run_dir) / RECORD_FILE).read_text()) or {}).get("starts") or []
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    last = starts[-1].get("run_dir") if isinstance(starts, list) and starts and isinstance(starts[-1], dict) else None
    if not last or Path(last) == Path(run_dir).resolve():
        return None
    source, source_id = Path(last), existing_run_id(Path(last))
    return source if source_id is not None and source_id == existing_run_id(run_dir) else None


def _callback_arg(callbacks: Any, class_name: str, arg: str, default: Any = None) -> Any:
    """``init_args.<arg>`` of the first configured callback named ``class_name`` (None if absent)."""
    entries = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    for entry in entries:
        if isinstance(entry, (Namespace, dict)):
            class_path = entry.get("class_path") or ""
            if class_path.rsplit(".", 1)[-1] == class_name:
                init_args = entry.get("init_args") or {}
                value = init_args.get(arg) if hasattr(init_args, "get") else None
                return default if value is None else value
        elif type(entry).__name__ == class_name:  # an already instantiated callback
            return getattr(entry, arg, default)
    return None


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _group(run_dir: Path, experiment: str) -> str:
    if os.environ.get(SWEEP_ENV):
        return os.environ[SWEEP_ENV]
    parent = run_dir.resolve().parent
    under_runs_root = parent.parent == runs_root().resolve() and parent.name
    return parent.name if under_runs_root else experiment


def run_labels(cfg: Namespace, run_dir: Path) -> dict[str, Any]:
    """W&B ``project``, ``group``, ``name`` and ``tags`` of a fit config and its run directory."""
    method = short_name(cfg.model.class_path) if cfg.get("model") else "model"
    data = short_name(cfg.data.class_path) if cfg.get("data") else "data"
    experiment = f"{method}-{data}"
    tags = [f"method={method}", f"data={data}"]
    model_args = cfg.model.get("init_args") if cfg.get("model") else None
    weight_decay = model_args.get("weight_decay") if model_args is not None else None
    if weight_decay is not None:
        tags.append(f"wd={_fmt(weight_decay)}")
    callbacks = cfg.trainer.get("callbacks") if cfg.get("trainer") else None
    cut = _callback_arg(callbacks, "CutInit", "c")
    if cut is not None:
        tags.append(f"cut={_fmt(cut)}")
    power = _callback_arg(callbacks, "GradScale", "power", default=1.0)
    if power is not None:
        tags.append(f"power={_fmt(power)}")
    return {
        "project": DEFAULT_PROJECT,
        "group": _group(Path(run_dir), experiment),
        "name": f"{experiment}-{run_dir.name}",
        "tags": tags,
    }


def configure_wandb_args(args: Namespace, run_dir: Path, cfg: Namespace | None = None, command: str = "fit") -> None:
    """Point a WandbLogger's init args at ``run_dir`` and keep its run id there, so a resumed run
    (``--ckpt_path last``, a SLURM requeue) continues the same W&B run. Project, group, name and tags
    come from :func:`run_labels` unless set. Without credentials (or with WANDB_MODE=offline) the
    run is offline and never waits on the network; ``wandb sync <run_dir>/wandb/offline-run-*``
    uploads it later. The id is always the run directory's: an id in a reused config names another
    run's W&B run, and continuing it would mix two runs.

    ``validate``/``test``/``predict`` write into ``<run>/<command>-<timestamp>/``: when ``<run>``
    kept a W&B id, they log into that W&B run (files under ``<run>/wandb``), their metrics prefixed
    ``<command>-`` so they never join the training curves; else into a new W&B run of their own
    folder (``job_type`` the command)."""
    run_dir = Path(run_dir)
    evaluated = run_dir.parent if command != "fit" else None
    attach = existing_run_id(evaluated) if evaluated is not None else None
    if attach:
        own_id, labels_dir = attach, evaluated
        args.save_dir = str(evaluated)
        args.prefix = args.get("prefix") or command
    else:
        own_id, labels_dir = run_id(run_dir), evaluated or run_dir
        source = copied_from(run_dir) if command == "fit" else None
        if source is not None:  # training the copy further must not write into the source's W&B run
            own_id = hashlib.sha1(f"{own_id}:{run_dir.resolve()}".encode()).hexdigest()[:12]  # same in every task
            write_atomically(run_dir / RUN_ID_FILE, own_id)
            note(f"{run_dir} is a copy of {source}: it logs to its own W&B run {own_id}")
        args.save_dir = str(run_dir)
        if command != "fit":
            args.job_type = args.get("job_type") or command
    if args.get("id") and args.id != own_id:
        note(f"W&B id {args.id} from the config belongs to another run; {run_dir} logs to W&B run {own_id}")
    args.id = own_id
    if cfg is not None:
        labels = run_labels(cfg, labels_dir)
        if not args.get("project"):
            args.project = labels["project"]
        if not args.get("group"):
            args.group = labels["group"]  # WandbLogger forwards unknown kwargs to wandb.init
        if not args.get("name"):
            args.name = labels["name"]
        args.tags = list(args.get("tags") or []) + [t for t in labels["tags"] if t not in (args.get("tags") or [])]
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_has_credentials():
        args.offline = True
    args.resume = "allow"  # forwarded to wandb.init: same id continues the run


def attach_kwargs(run_dir: Path) -> dict[str, Any]:
    """``wandb.init`` arguments that join the W&B run a training run directory kept (empty when it
    kept none): its id and the project / group / name / tags its WandbLogger used (from the run's
    ``config.yaml``), so nothing of the training run's labels changes when the joined run is synced."""
    run_id_ = existing_run_id(run_dir)
    if run_id_ is None:
        return {}
    config_file = Path(run_dir) / "config.yaml"
    init_args = wandb_logger_args(yaml.safe_load(config_file.read_text()) if config_file.is_file() else None)
    labels = {k: init_args[k] for k in ("project", "entity", "group", "name", "tags") if init_args.get(k)}
    return {"project": DEFAULT_PROJECT, **labels, "id": run_id_, "resume": "allow", "dir": str(run_dir)}


def wandb_logger_args(config: dict[str, Any] | None) -> dict[str, Any]:
    """The ``init_args`` of the WandbLogger in a run's config (as read from ``config.yaml``), else {}."""
    loggers = ((config if isinstance(config, dict) else {}).get("trainer") or {}).get("logger") or []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger"):
            return logger.get("init_args") or {}
    return {}


def code_version() -> dict[str, Any]:
    """``commit`` of the ssl_norms source that runs and ``dirty`` (uncommitted changes to tracked
    files); empty when the package is not a git checkout of its own (e.g. installed from a wheel)."""
    root = Path(__file__).resolve().parent.parent

    def git(*words: str) -> str:
        return subprocess.run(["git", "-C", str(root), *words], capture_output=True, text=True, timeout=30, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return {}  # a repository around an installed copy is not this code's history
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def _keyed_by_class(entries: Any) -> Any:
    """A list of ``class_path``/``init_args`` entries as a mapping by class name (``Name``, ``Name_2``
    for repeats), so every setting gets its own filterable key; anything else is returned as is."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "class_path" in e for e in entries):
        return entries
    keyed: dict[str, Any] = {}
    for entry in entries:
        name = base = str(entry["class_path"]).rsplit(".", 1)[-1]
        repeat = 1
        while name in keyed:
            repeat += 1
            name = f"{base}_{repeat}"
        keyed[name] = entry
    return keyed


def wandb_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved ``config.yaml`` as a nested W&B run config (``model``, ``data``, ``trainer``,
    ``seed_everything``, ...; ``trainer.callbacks`` and ``trainer.logger`` keyed by class name, e.g.
    ``trainer.callbacks.OnlineKNN.init_args.k``) plus ``git`` (:func:`code_version`)."""
    config = dict(config)
    trainer = dict(config.get("trainer") or {})
    for key in ("callbacks", "logger"):
        if key in trainer:
            trainer[key] = _keyed_by_class(trainer[key])
    return {**config, "trainer": trainer, "git": code_version()}


def log_run_config(run: Any, config_file: Path) -> None:
    """Put the run's ``config.yaml`` into its W&B run: as the nested run config (:func:`wandb_config`)
    and as the artifact ``config-<run id>`` (type ``config``; a resume with an unchanged file adds
    no new version)."""
    import wandb

    run.config.update(wandb_config(yaml.safe_load(Path(config_file).read_text()) or {}), allow_val_change=True)
    artifact = wandb.Artifact(f"config-{run.id}", type="config", description="the run's resolved config.yaml")
    artifact.add_file(str(config_file), name="config.yaml")
    run.log_artifact(artifact)


def finish_run(run: Any) -> None:
    """Finish ``run`` and wait until its files are written: ``finish()`` only hands the run to W&B's
    service process, which may still be writing the ``.wandb`` file when it returns;
    ``wandb.teardown()`` waits for the service to finish and stop (not while another run is active)."""
    import wandb

    run.finish()
    if wandb.run is None:
        wandb.teardown()
