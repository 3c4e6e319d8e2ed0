"""What every analysis and simulation writes: a PNG, its numbers (CSV / JSON / NPZ), and optionally
W&B images. The one home of the figure and file helpers (``ssl_norms.simulations`` uses them too).

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot's global state, so
everything works headless and never opens a window."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ssl_norms.wandb_setup import DEFAULT_PROJECT, RUN_ID_FILE


class AnalysisUnavailable(ValueError):
    """An analysis that cannot run on this data (a missing label file, an unknown image order).
    ``ssl-norms analyze all`` notes it and goes on; a single analysis reports it as its error."""


@dataclass
class AnalysisResult:
    """Paths an analysis wrote and the headline numbers it printed."""

    name: str
    numbers: dict[str, Any]
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def png(self) -> Path | None:
        return next((p for p in self.paths if p.suffix == ".png"), None)


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.5, height: float = 4.2, **subplots: Any) -> tuple[Figure, list]:
    """A headless figure (no pyplot state) and its axes as a flat list; ``width``/``height`` are
    per panel, ``subplots`` go to :meth:`Figure.subplots` (e.g. ``gridspec_kw``)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """``fig`` as a PNG at ``path`` (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plain(value: Any) -> Any:
    """Tensors, numpy values and paths as JSON-ready Python; NaN and inf become None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain(data), indent=2) + "\n")
    return path


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows of flat dicts; the columns are ``columns`` (other keys left out), else the union of the
    rows' keys in first-seen order. None, NaN and inf are written as empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if plain(v) is None else plain(v)) for k, v in row.items()})
    return path


def write_samples(path: Path, **arrays: Any) -> Path:
    """Per-sample values (index, label, norm, ...) as a compressed ``.npz`` for further study."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in arrays.items()})
    return path


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id a training run kept in its directory (see ssl_norms.wandb_setup), if any."""
    id_file = Path(run_dir) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


def wandb_project(config: dict[str, Any] | None) -> str:
    loggers = ((config or {}).get("trainer") or {}).get("logger") or []
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger"):
            project = (logger.get("init_args") or {}).get("project")
            if project:
                return project
    return DEFAULT_PROJECT


class WandbFigures:
    """Logs PNGs (as ``wandb.Image``) and headline numbers into a W&B run.

    * a W&B run already active in this process (``wandb.run``, e.g. a WandbLogger's): logged there,
      and left open;
    * else a training run directory that kept its W&B id (``<run_dir>/wandb_run_id``): that run is
      resumed (same id), so the figures sit next to the training curves;
    * else a new run written into ``<run_dir>/wandb`` (``job_type``, e.g. ``simulation``).

    Offline (never waiting on the network) without credentials or with WANDB_MODE=offline;
    ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None, job_type: str = "analysis", name: str | None = None) -> None:
        import wandb

        from ssl_norms.wandb_setup import wandb_has_credentials

        self.owned = wandb.run is None
        if not self.owned:
            self.run = wandb.run
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not wandb_has_credentials()
        self.run = wandb.init(
            project=wandb_project(config), id=wandb_run_id(run_dir), resume="allow", dir=str(run_dir),
            mode="offline" if offline else "online", job_type=job_type, name=name,
            settings=wandb.Settings(init_timeout=60, console="off", silent=True),
        )

    def log_figures(self, prefix: str, paths: Sequence[Path], numbers: dict[str, Any]) -> None:
        """Every PNG of ``paths`` as ``<prefix>/<file stem>`` and the numeric top-level ``numbers``
        as ``<prefix>/<key>``."""
        import wandb

        images = {f"{prefix}/{Path(p).stem}": wandb.Image(str(p)) for p in paths if Path(p).suffix == ".png"}
        scalars = {f"{prefix}/{k}": v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if images or scalars:
            self.run.log({**images, **scalars})

    def log(self, result: AnalysisResult) -> None:
        self.log_figures(f"analysis/{result.name}", result.paths, result.numbers)

    def finish(self) -> None:
        if self.owned:
            self.run.finish()
