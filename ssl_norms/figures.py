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
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ssl_norms.wandb_setup import DEFAULT_PROJECT, attach_kwargs, wandb_logger_args

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, so a command's --help does not load it
    from matplotlib.figure import Figure


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.5, height: float = 4.2, **subplots: Any) -> tuple[Figure, list]:
    """A headless figure (no pyplot state) and its axes as a flat list; ``width``/``height`` are
    per panel, ``subplots`` go to :meth:`Figure.subplots` (e.g. ``gridspec_kw``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplots)
    return fig, [ax for row in axes for ax in row]


def distinct_colors(n: int) -> list[Any]:
    """``n`` different line colours: matplotlib's default cycle up to 10, tab20 up to 20, else
    evenly spaced on a continuous map."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


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


_CLASS_NORM = re.compile(r"val/(?P<set>[^/]+)/norm_mean/class_(?P<c>\d+)")


def class_norm_curves(source: str | Path | list[dict[str, float]]) -> tuple[str | None, dict[int, list[tuple[float, float]]]]:
    """(validation set, {class: [(optimizer step, mean norm), ...]}) of the first validation set
    whose per-class mean norms were logged (``EmbeddingNormMonitor(per_class=True)``); (None, {}) when none were."""
    series = read_metrics(source) if isinstance(source, (str, Path)) else _series_from_history(source)
    matches = [(m, values) for key, values in series.items() if (m := _CLASS_NORM.fullmatch(key))]
    if not matches:
        return None, {}
    first = matches[0][0]["set"]
    return first, {int(m["c"]): values for m, values in sorted(matches, key=lambda mv: int(mv[0]["c"])) if m["set"] == first}


def _plot_curve(ax: Any, points: list[tuple[float, float]], **kwargs: Any) -> None:
    """``points`` as a line, with markers when few (a one-epoch run's single point stays visible)."""
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o" if len(points) <= 30 else None, **kwargs)


def plot_training_curves(
    source: str | Path | list[dict[str, float]], out_png: str | Path, log_x: bool = False
) -> Path:
    """:func:`training_curves_figure` as a PNG at ``out_png``."""
    return save_figure(training_curves_figure(source, log_x), out_png)


def training_curves_figure(source: str | Path | list[dict[str, float]], log_x: bool = False) -> Figure:
    """Four panels against the optimizer step (:func:`training_curves`): mean loss-space embedding
    norm (with its 5-95% band when logged), online k-NN top-1, training loss and learning rate;
    a fifth, the mean validation norm per class (Fig 2c), when the run logged it (:func:`class_norm_curves`)."""
    curves = training_curves(source)
    class_set, class_curves = class_norm_curves(source)
    if class_curves:  # a fifth panel, as tall as the figure, to the right
        from matplotlib.figure import Figure

        fig = Figure(figsize=(15.0, 8.0), layout="constrained")
        panels = fig.subplot_mosaic([["norm", "knn", "class"], ["loss", "lr", "class"]])
        axes = [panels[name] for name in ("norm", "knn", "loss", "lr", "class")]
        for (c, points), color in zip(class_curves.items(), distinct_colors(len(class_curves))):
            _plot_curve(panels["class"], points, label=f"class {c}", color=color)
        panels["class"].set(title=f"mean norm per class ({class_set}, Fig 2c)", ylabel="||z||")
        panels["class"].legend(fontsize=8, ncols=2)
    else:
        fig, axes = new_figure(2, 2, width=5.0, height=4.0)
    ax_norm, ax_knn, ax_loss, ax_lr = axes[:4]
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
    return fig


# ---- W&B images ---------------------------------------------------------------------------------------


def _wandb_table(path: Path) -> Any:
    """A CSV written by :func:`write_csv` as a ``wandb.Table`` (numeric cells as numbers, empty as None)."""
    import wandb

    def cell(text: str) -> Any:
        try:
            return float(text) if text else None
        except ValueError:
            return text

    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle)) or [[]]
    return wandb.Table(columns=header, data=[[cell(c) for c in row] for row in rows])


class WandbFigures:
    """Logs PNGs (as ``wandb.Image``) and headline numbers into a W&B run.

    * a W&B run already active in this process (``wandb.run``, e.g. a WandbLogger's): logged there,
      and left open;
    * else a training run directory that kept its W&B id (``<run_dir>/wandb_run_id``): that run is
      resumed (same id, project, group, name and tags; its job type left alone), so the figures sit
      next to the training curves (:func:`ssl_norms.wandb_setup.attach_kwargs`);
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
        project = wandb_logger_args(config).get("project") or DEFAULT_PROJECT
        own = {"project": project, "dir": str(run_dir), "job_type": job_type, "name": name}
        self.run = wandb.init(
            **(attach_kwargs(run_dir) or own), mode="offline" if offline else "online",
            settings=wandb.Settings(init_timeout=60, console="off", silent=True),
        )

    def log_figures(self, prefix: str, paths: Sequence[Path], numbers: dict[str, Any]) -> None:
        """Every PNG of ``paths`` as ``<prefix>/<file stem>``, every CSV as a ``wandb.Table``
        ``<prefix>/<file stem>_table`` and the numeric top-level ``numbers`` as ``<prefix>/<key>``."""
        import wandb

        images = {f"{prefix}/{Path(p).stem}": wandb.Image(str(p)) for p in paths if Path(p).suffix == ".png"}
        tables = {f"{prefix}/{Path(p).stem}_table": _wandb_table(Path(p)) for p in paths if Path(p).suffix == ".csv"}
        scalars = {f"{prefix}/{k}": v for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if images or tables or scalars:
            self.run.log({**images, **tables, **scalars})

    def finish(self) -> None:
        if self.owned:
            from ssl_norms.wandb_setup import finish_run

            finish_run(self.run)
