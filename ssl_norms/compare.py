"""Results of runs side by side: the table ``ssl-norms sweep --summary`` writes for a sweep and
``ssl-norms compare RUN...`` for any runs, and compare's overlay of their norm and k-NN curves.

Per run, from its ``metrics.csv`` (read only):

* ``knn/top1 final``: OnlineKNN's ``knn/top1`` at the run's last validation, ``knn/top1 best`` its
  highest value (the metric as logged: a fraction);
* ``norm/mean final``: the last epoch's mean loss-space embedding norm (EmbeddingNormMonitor's
  ``norm/mean_epoch``, else the mean of that epoch's ``norm/mean``).

A row is one setting: a run, or the runs of a sweep setting that differ only in their seed, shown
as mean +- sample std (n - 1) over the runs found; runs without ``metrics.csv`` are counted as missing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from ssl_norms.analysis.curves import plot_runs_over_epochs, read_metrics_by_epoch, run_labels
from ssl_norms.figures import write_csv
from ssl_norms.runs import RUN_FILES, create_unique_dir, timestamp

METRICS = ("knn/top1 final", "knn/top1 best", "norm/mean final")


def run_results(run_dir: Path) -> dict[str, float] | None:
    """The table's numbers of one run (a metric it never logged: absent); None without ``metrics.csv``."""
    if not (Path(run_dir) / "metrics.csv").is_file():
        return None
    by_epoch = read_metrics_by_epoch(run_dir)
    knn = list(by_epoch.get("knn/top1", {}).values())
    norms = by_epoch.get("norm/mean_epoch") or by_epoch.get("norm/mean", {})
    results = {"epochs": 1 + max((e for series in by_epoch.values() for e in series), default=-1)}
    if knn:
        results |= {"knn/top1 final": knn[-1], "knn/top1 best": max(knn)}
    if norms:
        results["norm/mean final"] = list(norms.values())[-1]
    return results


def summary_rows(settings: Sequence[tuple[str, Sequence[Path]]]) -> list[dict[str, object]]:
    """One row per ``(setting, run dirs)``: runs found of expected, epochs reached (``min-max`` when
    they differ), and per metric
    the mean (``<metric>``) and sample std (``<metric> std``, two runs or more) over the runs found."""
    rows = []
    for setting, run_dirs in settings:
        found = [(run, results) for run in run_dirs if (results := run_results(run)) is not None]
        epochs = sorted({r["epochs"] for _, r in found})
        row: dict[str, object] = {"setting": setting, "runs found": len(found), "runs": len(run_dirs),
                                  "epochs": "-".join(str(e) for e in epochs[::max(1, len(epochs) - 1)])}
        for metric in METRICS:
            values = [r[metric] for _, r in found if metric in r]
            row[metric] = statistics.fmean(values) if values else None
            row[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else None
        row["run dirs"] = " ".join(str(run) for run, _ in found)
        rows.append(row)
    return rows


def _cell(row: dict[str, object], metric: str) -> str:
    if row["runs found"] == 0:
        return "missing"
    mean, std = row[metric], row[f"{metric} std"]
    if mean is None:
        return "not logged"
    return f"{mean:.4f} +- {std:.4f}" if std is not None else f"{mean:.4f}"


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """The rows as a Markdown table (``missing``: no run of the setting has a metrics.csv yet)."""
    header = ["setting", "runs", "epochs", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = f"{row['runs found']}/{row['runs']}"
        lines.append("| " + " | ".join([str(row["setting"]), runs, str(row["epochs"] or "-"), *(_cell(row, m) for m in METRICS)]) + " |")
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[dict[str, object]], out_dir: Path) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.md`` in ``out_dir``; prints the Markdown table and both paths."""
    out_dir = Path(out_dir)
    csv_path = write_csv(rows, out_dir / "summary.csv")
    md_path = out_dir / "summary.md"
    md_path.write_text(markdown_table(rows))
    print(md_path.read_text(), end="")
    print(f"table: {csv_path} {md_path}")
    return csv_path, md_path


def compare(runs: list[Path], *, out: Path | None = None) -> Path:
    """Print the results table of runs and overlay their norm and k-NN curves (files only read).

    Args:
        runs: run directories written by `ssl-norms fit`
        out: output folder, not a run directory (default: a new ./compare-<timestamp>/)
    """
    for run in runs:
        if not (Path(run) / "metrics.csv").is_file():
            raise FileNotFoundError(f"no metrics.csv in {run}; pass run directories written by `ssl-norms fit`")
    if out is not None and any((Path(out) / marker).exists() for marker in RUN_FILES):
        raise ValueError(f"--out {out} is a run directory: compare never writes among a run's files; name another folder")
    labels = run_labels(runs)
    out_dir = Path(out) if out is not None else create_unique_dir(Path.cwd(), f"compare-{timestamp()}")
    write_summary(summary_rows([(label, [Path(run)]) for label, run in zip(labels, runs)]), out_dir)
    png, _ = plot_runs_over_epochs(runs, out_dir / "curves.png", labels, title="norm and k-NN accuracy over training")
    print(f"plot: {png}")
    return out_dir
