"""W&B without surprises: offline when no credentials, one run id per run directory, and project /
group / name / tags derived from the run so a dashboard can group and filter sweeps.

Naming (any field set explicitly on the WandbLogger wins):

* project: ``ssl-norms``;
* group: the run directory's parent, i.e. ``<method>-<data>`` for a plain run
  (``$SSL_NORMS_RUNS/<method>-<data>/<id>``) and the sweep name for a sweep point
  (``$SSL_NORMS_RUNS/<sweep name>/<point label>``);
* name: ``<method>-<data>-<run dir name>`` (the sweep point's label, the SLURM job id or the timestamp);
* tags: ``method=``, ``data=``, ``wd=`` (weight decay), ``cut=`` (CutInit c) and ``power=``
  (GradScale p) when those callbacks are configured.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from ssl_norms.runs import create_file_once, note, short_name

DEFAULT_PROJECT = "ssl-norms"
RUN_ID_FILE = "wandb_run_id"  # in the run dir: one W&B run per run dir, across requeues and analyses


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run directory (``wandb_run_id``), created once. Every SLURM task of a job
    runs this at the same time; the file is created atomically (:func:`ssl_norms.runs.create_file_once`),
    so all tasks, and every requeue, read the same id."""
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.exists():
        create_file_once(id_file, uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


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
    run_dir = Path(run_dir)
    return {
        "project": DEFAULT_PROJECT,
        "group": run_dir.parent.name or experiment,
        "name": f"{experiment}-{run_dir.name}",
        "tags": tags,
    }


def configure_wandb_args(args: Namespace, run_dir: Path, cfg: Namespace | None = None) -> None:
    """Point a WandbLogger's init args at ``run_dir`` and keep its run id there, so a resumed run
    (``--ckpt_path last``, a SLURM requeue) continues the same W&B run. Project, group, name and tags
    come from :func:`run_labels` unless set. Without credentials (or with WANDB_MODE=offline) the
    run is offline and never waits on the network; ``wandb sync <run_dir>/wandb/offline-run-*``
    uploads it later. The id is always the run directory's: an id in a reused config names another
    run's W&B run, and continuing it would mix two runs."""
    args.save_dir = str(run_dir)
    own_id = run_id(run_dir)
    if args.get("id") and args.id != own_id:
        note(f"W&B id {args.id} from the config belongs to another run; {run_dir} logs to its own W&B run {own_id}")
    args.id = own_id
    if cfg is not None:
        labels = run_labels(cfg, run_dir)
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
