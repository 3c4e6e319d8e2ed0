"""Figures and the numbers behind them: headless matplotlib figures, PNG / CSV / JSON / NPZ files,
the training-curves PNG of a run, and W&B images. Callbacks, analyses and simulations all write
through these helpers, so there is one way to build a figure and to write numbers.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot's global state, so
everything works headless and never opens a window."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ssl_norms.wandb_setup import DEFAULT_PROJECT, RUN_ID_FILE


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


# ---- the training curves of one run ----------------------------------------------------------------


def read_metrics(metrics_csv: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``metrics.csv`` (Lightning CSVLogger) -> {metric: [(step, value), ...]} with empty cells skipped."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = float(row.get("step") or "nan")
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def _series_from_history(history: list[dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in history:
        for key, value in row.items():
            if key not in ("step", "epoch") and not math.isnan(value):
                series.setdefault(key, []).append((row["step"], value))
    return series


def training_curves(source: str | Path | list[dict[str, float]]) -> dict[str, list[tuple[float, float]]]:
    """The curves of the training-curves PNG, each ``[(optimizer step, value), ...]`` and empty when
    never logged: ``norm`` (mean loss-space embedding norm) with its band ``norm_q05``/``norm_q95``,
    ``loss``, ``lr`` and ``knn`` (top-1). ``source`` is a ``metrics.csv`` or rows of
    ``{"step": ..., metric: value}``. A statistic with no per-step value (a run shorter than its
    logging interval) is read from its per-epoch aggregate ``<name>_epoch``; the lr is
    EmbeddingNormMonitor's ``lr/base``, else LearningRateMonitor's first ``lr-<optimizer>`` column."""
    series = read_metrics(source) if isinstance(source, (str, Path)) else _series_from_history(source)

    def per_step_or_epoch(key: str) -> list[tuple[float, float]]:
        return series.get(key) or series.get(f"{key}_epoch", [])

    lr_monitor = [values for key, values in sorted(series.items()) if key.startswith("lr-")]
    return {
        "norm": per_step_or_epoch("norm/mean"),
        "norm_q05": per_step_or_epoch("norm/q05"),
        "norm_q95": per_step_or_epoch("norm/q95"),
        "loss": per_step_or_epoch("train/loss"),
        "lr": series.get("lr/base") or (lr_monitor[0] if lr_monitor else []),
        "knn": series.get("knn/top1", []),
    }


def _plot_curve(ax: Any, points: list[tuple[float, float]], **kwargs: Any) -> None:
    """``points`` as a line, with markers when few (a one-epoch run's single point stays visible)."""
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) <= 30 else None, **kwargs)


def plot_training_curves(
    source: str | Path | list[dict[str, float]], out_png: str | Path, log_x: bool = False
) -> Path:
    """Four panels against the optimizer step (:func:`training_curves`): mean loss-space embedding
    norm (with its 5-95% band when logged), online k-NN top-1, training loss and learning rate."""
    curves = training_curves(source)
    fig, axes = new_figure(2, 2, width=5.0, height=4.0)
    ax_norm, ax_knn, ax_loss, ax_lr = axes
    if curves["norm"]:
        _plot_curve(ax_norm, curves["norm"], label="mean ||z||")
        lo, hi = dict(curves["norm_q05"]), dict(curves["norm_q95"])
        common = sorted(set(lo) & set(hi))
        if common:
            ax_norm.fill_between(common, [lo[s] for s in common], [hi[s] for s in common], alpha=0.25, label="5-95%")
        ax_norm.legend()
    ax_norm.set(title="loss-space embedding norm", ylabel="||z||")
    if curves["knn"]:
        _plot_curve(ax_knn, curves["knn"])
    ax_knn.set(title="online k-NN accuracy", ylabel="top-1 (fraction)")  # the unit of knn/top1 everywhere
    if curves["loss"]:
        _plot_curve(ax_loss, curves["loss"])
    ax_loss.set(title="training loss", ylabel="loss")
    if curves["lr"]:
        _plot_curve(ax_lr, curves["lr"])
    ax_lr.set(title="learning rate", ylabel="lr")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        if log_x:
            ax.set_xscale("symlog")
    return save_figure(fig, out_png)


# ---- W&B images ---------------------------------------------------------------------------------------


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

    def finish(self) -> None:
        if self.owned:
            self.run.finish()
