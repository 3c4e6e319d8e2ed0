"""Norm and k-NN accuracy over the epochs of several runs (Fig 5 / S3 / S4), from their metrics.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import new_figure, save_figure, write_csv, write_json

EXCLUDED_CONFIG_KEYS = ("run_dir", "ckpt_path", "trainer.logger", "trainer.default_root_dir", "data.init_args.root")


def metrics_file(run: str | Path) -> Path:
    """``metrics.csv`` of a run directory (or the file itself)."""
    path = Path(run)
    path = path / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.csv at {path}; pass run directories written by `ssl-norms fit`")
    return path


def read_metrics_by_epoch(metrics_csv: str | Path) -> dict[str, dict[int, float]]:
    """{metric: {epoch (0-based): mean of the values logged in that epoch}}; rows without an epoch
    (such as per-step learning rates) are skipped."""
    sums: dict[str, dict[int, list[float]]] = {}
    with open(metrics_file(metrics_csv), newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                sums.setdefault(key, {}).setdefault(epoch, []).append(float(value))
    return {key: {e: sum(v) / len(v) for e, v in sorted(by_epoch.items())} for key, by_epoch in sums.items()}


def _flatten(tree, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): str(tree)}


def run_labels(runs: list[str | Path], max_keys: int = 3) -> list[str]:
    """A label per run from the settings in which the runs' ``config.yaml`` differ (e.g.
    ``weight_decay=0.0005``); the directory name when there are no configs or no differences."""
    import yaml

    configs = []
    for run in runs:
        config_path = (Path(run) if Path(run).is_dir() else Path(run).parent) / "config.yaml"
        configs.append(_flatten(yaml.safe_load(config_path.read_text())) if config_path.is_file() else None)
    names = [Path(run).name if Path(run).is_dir() else Path(run).parent.name for run in runs]
    if len(runs) < 2 or any(c is None for c in configs):
        return names
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if not k.startswith(EXCLUDED_CONFIG_KEYS) and len({c.get(k) for c in configs}) > 1]
    if not differing:
        return names
    short = [k.replace(".init_args.", ".").split(".")[-1] if k.count(".") else k for k in differing[:max_keys]]
    return [", ".join(f"{s}={c.get(k, '-')}" for s, k in zip(short, differing[:max_keys])) for c in configs]


def log_epoch_axis(ax) -> None:
    """Log-scaled x axis labelled with plain epoch numbers (1, 2, 5, 10, 20, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_runs_over_epochs(
    runs: list[str | Path], out_png: str | Path, labels: list[str] | None = None,
    norm_key: str = "norm/mean", knn_key: str = "knn/top1",
) -> tuple[Path, list[dict[str, float | str]]]:
    """Fig 5: mean embedding norm and k-NN accuracy against the epoch (log scale) for several runs.

    Epoch e (1-based) is the mean of the norms logged during the e-th epoch and the k-NN accuracy
    measured at its end. Returns the PNG and the plotted rows (run, epoch, norm, knn_top1)."""
    if not runs:
        raise ValueError("plot_runs_over_epochs needs at least one run directory")
    labels = list(labels) if labels else run_labels(runs)
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    fig, (ax_norm, ax_knn) = new_figure(1, 2, width=5.5, height=4.2)
    rows: list[dict[str, float | str]] = []
    for run, label in zip(runs, labels):
        by_epoch = read_metrics_by_epoch(run)
        norms, knn = by_epoch.get(norm_key, {}), by_epoch.get(knn_key, {})
        if not norms and not knn:
            raise AnalysisUnavailable(f"{metrics_file(run)} has neither {norm_key} nor {knn_key}; was the run trained with EmbeddingNormMonitor/OnlineKNN?")
        line = None
        if norms:
            (line,) = ax_norm.plot([e + 1 for e in norms], list(norms.values()), marker="o", markersize=3, label=label)
        if knn:
            ax_knn.plot([e + 1 for e in knn], list(knn.values()), marker="o", markersize=3, label=label,
                        color=line.get_color() if line is not None else None)
        for epoch in sorted(set(norms) | set(knn)):
            rows.append({"run": label, "run_dir": str(Path(run)), "epoch": epoch + 1,
                         "norm_mean": norms.get(epoch, math.nan), "knn_top1": knn.get(epoch, math.nan)})
    ax_norm.set(title=f"mean embedding norm ({norm_key})", xlabel="epoch (log scale)", ylabel="||z||")
    ax_knn.set(title=f"k-NN accuracy ({knn_key})", xlabel="epoch (log scale)", ylabel="top-1 (fraction)")
    for ax in (ax_norm, ax_knn):
        log_epoch_axis(ax)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Fig 5: norm and accuracy over training ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return save_figure(fig, Path(out_png)), rows


def training_curves(runs: list[str | Path], out_dir: str | Path, *, labels: list[str] | None = None) -> AnalysisResult:
    """Fig 5 / S3 / S4: norm and k-NN accuracy over epochs of several runs.

    :func:`plot_runs_over_epochs` plus its numbers as CSV and JSON.

    Args:
        labels: a legend label per run (default: the settings in which their configs differ)
    """
    out_dir = Path(out_dir)
    png, rows = plot_runs_over_epochs(runs, out_dir / "curves.png", labels)
    final = {}
    for row in rows:
        final[row["run"]] = row  # the last epoch of every run
    numbers = {"runs": [str(r) for r in runs], "final": {k: {"epoch": v["epoch"], "norm_mean": v["norm_mean"], "knn_top1": v["knn_top1"]} for k, v in final.items()}}
    paths = [png, write_csv(rows, out_dir / "curves.csv"), write_json(numbers, out_dir / "curves.json")]
    return AnalysisResult("curves", {"num_runs": len(runs)}, paths)
