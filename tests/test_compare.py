"""`ssl-norms compare RUN...`: the results table of any runs and their overlaid curves, without touching them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from conftest import REPO, read_metrics_csv
from ssl_norms.cli import main
from ssl_norms.figures import distinct_colors
from test_analysis import _method_run


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _expected(run: Path) -> dict[str, float]:
    """The table's numbers straight from metrics.csv: k-NN at the last validation and its best, the last epoch's mean norm."""
    rows = read_metrics_csv(run / "metrics.csv")
    knn = [float(r["knn/top1"]) for r in rows if r.get("knn/top1")]
    last = max(int(r["epoch"]) for r in rows if r.get("epoch"))
    norms = [float(r["norm/mean"]) for r in rows if r.get("norm/mean") and int(r["epoch"]) == last]
    return {"knn/top1 final": knn[-1], "knn/top1 best": max(knn), "norm/mean final": sum(norms) / len(norms)}


def test_compare_prints_the_table_and_overlays_curves_without_touching_the_runs(tmp_path):
    runs = [_method_run(tmp_path / "runs" / name, method, wd) for name, method, wd in
            [("a", "SimCLR", 0.0), ("b", "SimCLR", 0.01), ("c", "SimSiam", 0.0)]]
    before = _hashes(tmp_path / "runs")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-m", "ssl_norms.cli", "compare", *map(str, runs)], cwd=work,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert _hashes(tmp_path / "runs") == before  # every file of every run byte-identical, nothing added
    (out,) = work.glob("compare-*")  # the default: a new folder in the working directory
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "summary.csv", "summary.md"]
    assert (out / "curves.png").stat().st_size > 20_000
    labels = ["method=simclr, weight_decay=0.0", "method=simclr, weight_decay=0.01", "method=simsiam, weight_decay=0.0"]
    rows = read_metrics_csv(out / "summary.csv")
    assert [r["setting"] for r in rows] == labels
    for row, run in zip(rows, runs):
        for metric, value in _expected(run).items():
            assert float(row[metric]) == pytest.approx(value) and row[f"{metric} std"] == ""
        assert row["runs found"] == "1" and row["epochs"] == "2" and row["run dirs"] == str(run)
    assert (out / "summary.md").read_text() in result.stdout
    assert f"| {labels[1]} | 1/1 | 2 | 0.2000 | 0.2000 | {_expected(runs[1])['norm/mean final']:.4f} |" in result.stdout
    assert f"plot: {out / 'curves.png'}" in result.stdout


def test_compare_writes_into_out_and_refuses_a_run_as_out(tmp_path, capsys):
    runs = [_method_run(tmp_path / name, "SimCLR", 0.0, seed) for seed, name in enumerate("ab")]
    main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert "| seed=1 | 1/1 |" in capsys.readouterr().out and (tmp_path / "cmp" / "curves.png").is_file()
    for args, message in [([str(runs[0]), "--out", str(runs[1])], f"--out {runs[1]} is a run directory"),
                          ([str(runs[0]), str(tmp_path / "nowhere")], "no metrics.csv in"),
                          ([], "the following arguments are required: runs")]:
        before = _hashes(runs[1])
        with pytest.raises(SystemExit) as stop:
            main(["compare", *args])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1, err
        assert _hashes(runs[1]) == before


@pytest.mark.parametrize("n", [1, 3, 10, 15, 30])
def test_line_colours_differ_for_any_number_of_runs(n):
    assert len({to_rgba(c) for c in distinct_colors(n)}) == n
