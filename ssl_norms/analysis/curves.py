"""Norm and k-NN accuracy over training, from metrics.csv files (one or several runs)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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


def plot_training_curves(
    source: str | Path | list[dict[str, float]], out_png: str | Path, log_x: bool = False
) -> Path:
    """Two panels: mean loss-space embedding norm (with its 5-95% band when logged) and k-NN
    top-1, both against the optimizer step."""
    series = read_metrics(source) if isinstance(source, (str, Path)) else _series_from_history(source)
    fig, (ax_norm, ax_knn) = plt.subplots(1, 2, figsize=(10, 4))
    if "norm/mean" in series:
        steps, values = zip(*series["norm/mean"])
        ax_norm.plot(steps, values, label="mean ||z||")
        if "norm/q05" in series and "norm/q95" in series:
            lo, hi = dict(series["norm/q05"]), dict(series["norm/q95"])
            common = sorted(set(lo) & set(hi))
            ax_norm.fill_between(common, [lo[s] for s in common], [hi[s] for s in common], alpha=0.25, label="5-95%")
        ax_norm.legend()
    ax_norm.set(title="loss-space embedding norm", xlabel="optimizer step", ylabel="||z||")
    if "knn/top1" in series:
        steps, values = zip(*series["knn/top1"])
        ax_knn.plot(steps, [100 * v for v in values], marker="o")
    ax_knn.set(title="online k-NN accuracy", xlabel="optimizer step", ylabel="top-1 (%)")
    if log_x:
        ax_norm.set_xscale("symlog")
        ax_knn.set_xscale("symlog")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
