"""The training-curves figure of a run: its Fig 2c panel of per-class norms (the demo's promise)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_DEMO, read_metrics_csv
from ssl_norms.analysis.loading import TrainedRun
from ssl_norms.cli import main
from ssl_norms.figures import class_norm_curves, training_curves_figure

CLASS_COLUMNS = [f"val/latent_val/norm_mean/class_{c}" for c in range(10)]


def test_the_per_class_panel_appears_only_when_per_class_norms_were_logged(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,norm/mean,step,val/s/norm_mean,val/s/norm_mean/class_0,val/s/norm_mean/class_10,val/s/norm_mean/class_2,val/t/norm_mean/class_0\n"
        "0,1.5,1,,,,,\n"
        "0,,3,2.0,1.0,3.0,2.5,9.0\n"
        "1,,7,4.0,2.0,6.0,5.0,9.0\n"
    )
    assert class_norm_curves(metrics) == ("s", {0: [(3.0, 1.0), (7.0, 2.0)], 2: [(3.0, 2.5), (7.0, 5.0)], 10: [(3.0, 3.0), (7.0, 6.0)]})
    fig = training_curves_figure(metrics)
    assert len(fig.axes) == 5
    (panel,) = [ax for ax in fig.axes if ax.get_label() == "class"]
    assert "mean norm per class (s" in panel.get_title()
    assert [line.get_label() for line in panel.get_lines()] == ["class 0", "class 2", "class 10"]
    assert list(panel.get_lines()[2].get_ydata()) == [3.0, 6.0]
    assert len({line.get_color() for line in panel.get_lines()}) == 3
    metrics.write_text("epoch,norm/mean,step,val/s/norm_mean\n0,1.5,1,\n0,,3,2.0\n")
    assert class_norm_curves(metrics) == (None, {}) and len(training_curves_figure(metrics).axes) == 4


def test_the_demo_logs_per_class_norms_that_match_its_checkpoint(tmp_path):
    run_dir = tmp_path / "demo"
    main(["fit", *TINY_DEMO, "--run_dir", str(run_dir), "--trainer.precision", "32-true"])  # the analysis embeds in fp32
    rows = read_metrics_csv(run_dir / "metrics.csv")
    logged = [row for row in rows if row.get(CLASS_COLUMNS[0])]
    assert len(logged) == 2 and all(row.get(c) for row in logged for c in CLASS_COLUMNS)  # every class at every validation
    embedded = TrainedRun.load(run_dir, device="cpu").embeddings("test")  # the validation images, last checkpoint
    norms, labels = embedded["embeddings"].norm(dim=-1), embedded["labels"]
    expected = [norms[labels == c].mean().item() for c in range(10)]
    assert [float(logged[-1][c]) for c in CLASS_COLUMNS] == pytest.approx(expected, rel=1e-4)
    assert float(logged[-1]["val/latent_val/norm_mean"]) == pytest.approx(norms.mean().item(), rel=1e-4)
    fig = training_curves_figure(run_dir / "metrics.csv")  # what training_curves.png shows
    assert [len(ax.get_lines()) for ax in fig.axes if ax.get_label() == "class"] == [10]
    assert (run_dir / "training_curves.png").stat().st_size > 50_000
    assert torch.tensor(expected).std() > 0  # norms do differ by class
