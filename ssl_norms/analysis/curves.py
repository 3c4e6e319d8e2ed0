"""Norm and k-NN accuracy over the epochs of several runs (Fig 5 / S3 / S4), from their metrics.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import distinct_colors, new_figure, save_figure, write_csv, write_json
from ssl_norms.runs import short_name

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
    if isinstance(tree, list) and any(isinstance(sub, (dict, list)) for sub in tree):  # callbacks: one key per entry
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): str(tree)}  # scalars and lists of scalars (projector_dims=[32, 16])


def _label_rank(key: str) -> tuple[int, str]:
    """What a reader looks for first in a label: method, data, then settings, the seed last."""
    return ({"model.class_path": 0, "data.class_path": 1, "seed_everything": 3}.get(key, 2), key)


_CLASS_KEYS = {"model.class_path": "method", "data.class_path": "data"}


def _label_part(key: str, value: str | None) -> str:
    if key in _CLASS_KEYS:
        return f"{_CLASS_KEYS[key]}={short_name(value) if value else '-'}"
    if key.endswith(".class_path"):  # a callback that some runs have (CutInit, GradScale)
        return f"callback={value.rsplit('.', 1)[-1] if value else '-'}"
    short = "seed" if key == "seed_everything" else key.replace(".init_args.", ".").split(".")[-1]
    return f"{short}={'-' if value is None else value}"


def _distinct(labels: list[str], names: list[str]) -> list[str]:
    """``labels`` with the run name, then the position, added to any label that is not unique."""
    for extra in (lambda i: names[i], lambda i: f"#{i + 1}"):
        duplicated = {label for label in labels if labels.count(label) > 1}
        labels = [f"{label} ({extra(i)})" if label in duplicated else label for i, label in enumerate(labels)]
    return labels


def run_labels(runs: list[str | Path]) -> list[str]:
    """A distinct label per run from the settings in which the runs' ``config.yaml`` differ (e.g.
    ``method=simclr, lr=0.1, seed=1``): settings are added, method and data first, while they tell
    more runs apart; a label still shared gets the run's directory name (then its position)."""
    import yaml

    dirs = [Path(run) if Path(run).is_dir() else Path(run).parent for run in runs]
    names = [d.name for d in dirs]
    configs = [_flatten(yaml.safe_load((d / "config.yaml").read_text())) if (d / "config.yaml").is_file() else None for d in dirs]
    if len(runs) < 2 or any(c is None for c in configs):
        return _distinct(names, [str(d) for d in dirs])
    keys = sorted({k for c in configs for k in c if not k.startswith(EXCLUDED_CONFIG_KEYS)}, key=_label_rank)
    chosen: list[str] = []

    def distinct_with(extra: list[str]) -> int:
        return len({tuple(c.get(k) for k in chosen + extra) for c in configs})

    for key in keys:  # greedy: a setting is shown only when it separates runs the others do not
        if distinct_with([]) == len(runs):
            break
        if distinct_with([key]) > distinct_with([]):
            chosen.append(key)
    if not chosen:
        return _distinct(names, [str(d) for d in dirs])
    return _distinct([", ".join(_label_part(k, c.get(k)) for k in chosen) for c in configs], names)


def log_epoch_axis(ax) -> None:
    """Log-scaled x axis labelled with plain epoch numbers (1, 2, 5, 10, 20, ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_runs_over_epochs(
    runs: list[str | Path], out_png: str | Path, labels: list[str] | None = None,
    norm_key: str = "norm/mean", knn_key: str = "knn/top1", title: str = "Fig 5: norm and accuracy over training",
) -> tuple[Path, list[dict[str, float | str]]]:
    """Fig 5: mean embedding norm and k-NN accuracy against the epoch (log scale) for several runs.

    Epoch e (1-based) is the mean of the norms logged during the e-th epoch and the k-NN accuracy
    measured at its end (a run too short to log per-step norms: the epoch aggregate ``<norm_key>_epoch``).
    Returns the PNG and the plotted rows (run, epoch, norm, knn_top1)."""
    if not runs:
        raise ValueError("plot_runs_over_epochs needs at least one run directory")
    labels = list(labels) if labels else run_labels(runs)
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    fig, (ax_norm, ax_knn) = new_figure(1, 2, width=5.5, height=4.2)
    rows: list[dict[str, float | str]] = []
    for run, label, color in zip(runs, labels, distinct_colors(len(runs))):
        by_epoch = read_metrics_by_epoch(run)
        norms, knn = by_epoch.get(norm_key) or by_epoch.get(f"{norm_key}_epoch", {}), by_epoch.get(knn_key, {})
        if not norms and not knn:
            raise AnalysisUnavailable(f"{metrics_file(run)} has neither {norm_key} nor {knn_key}; was the run trained with EmbeddingNormMonitor/OnlineKNN?")
        if norms:
            ax_norm.plot([e + 1 for e in norms], list(norms.values()), marker="o", markersize=3, label=label, color=color)
        if knn:
            ax_knn.plot([e + 1 for e in knn], list(knn.values()), marker="o", markersize=3, label=label, color=color)
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
    fig.suptitle(f"{title} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
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
