"""Norms at every scale: a run with fewer optimizer steps per epoch than the configs'
``log_every_n_steps: 50`` (the README's CPU-scale command, SimSiam with accumulation) still logs
``norm/*``, ``train/loss`` and the lr every epoch, and its training-curves PNG has data."""

from __future__ import annotations

from collections import Counter

import lightning as L
import pytest

from conftest import REPO, read_metrics_csv
from ssl_norms.callbacks import EmbeddingNormMonitor
from ssl_norms.callbacks.norm_monitor import logging_interval
from ssl_norms.cli import main
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.figures import training_curves
from ssl_norms.methods import SimCLR

# The README's CPU-scale command (narrow ResNet, a training subset, k-NN every 2 epochs) at test size:
# 256 images in batches of 32 are 8 micro-batches per epoch, far fewer than the configured 50.
TINY_CPU_SCALE = [
    "--model.init_args.backbone_width", "4", "--model.init_args.projector_dims", "[32,16]",
    "--data.init_args.max_train_samples", "256", "--data.init_args.batch_size", "32",
    "--data.init_args.max_val_samples", "64", "--data.init_args.eval_batch_size", "64",
    "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.limit_val_batches", "1",
]
NORM_KEYS = ["norm/mean", "norm/std", "norm/q50", "features/norm_mean", "lr/effective", "pairs/opposite_rate"]


def rows_per_epoch(rows: list[dict[str, str]], key: str) -> Counter:
    return Counter(int(row["epoch"]) for row in rows if row.get(key))


def fit(tmp_path, config: str, *args: str):
    run_dir = tmp_path / "run"
    main(["fit", "--config", str(REPO / "configs" / config), *TINY_CPU_SCALE, *args, "--run_dir", str(run_dir)])
    return run_dir, read_metrics_csv(run_dir / "metrics.csv")


@pytest.mark.parametrize(("configured", "steps_per_epoch", "expected"), [
    (50, 19, 4),   # the README's CPU-scale run: 4 logged steps per epoch
    (50, 2, 1),    # SimSiam's 8 micro-batches accumulated 4 at a time: every optimizer step
    (50, 50, 50),  # an epoch as long as the interval keeps it
    (4, 32, 4),    # the demo: shorter than the epoch, kept
    (0, 19, 0),    # logging off stays off
])
def test_logging_interval_gives_every_epoch_logged_steps(configured, steps_per_epoch, expected):
    assert logging_interval(configured, steps_per_epoch) == expected


def test_cpu_scale_run_logs_norms_loss_and_lr_every_epoch(real_data_root, tmp_path):
    run_dir, rows = fit(tmp_path, "simclr/cifar10.yaml")
    assert "log_every_n_steps: 50" in (run_dir / "config.yaml").read_text()  # the configured value is recorded
    for key in [*NORM_KEYS, "train/loss", "lr/base"]:  # interval 8 // 4 = 2: 4 steps per epoch
        assert rows_per_epoch(rows, key) == {0: 4, 1: 4}, key
    for key in [f"{k}_epoch" for k in NORM_KEYS] + ["train/loss_epoch"]:
        assert rows_per_epoch(rows, key) == {0: 1, 1: 1}, key
    for key in ["norm/mean", "lr-SGD"]:  # LearningRateMonitor follows the trainer's interval too
        assert [int(row["step"]) for row in rows if row.get(key)] == [1, 3, 5, 7, 9, 11, 13, 15], key
    for epoch in (0, 1):  # the aggregate is the mean over the epoch's logged steps
        logged = [float(row["norm/mean"]) for row in rows if row.get("norm/mean") and int(row["epoch"]) == epoch]
        (aggregate,) = [float(row["norm/mean_epoch"]) for row in rows if row.get("norm/mean_epoch") and int(row["epoch"]) == epoch]
        assert aggregate == pytest.approx(sum(logged) / len(logged), rel=1e-5)
    curves = training_curves(run_dir / "metrics.csv")
    assert len(curves["norm"]) == len(curves["loss"]) == len(curves["lr"]) == 8 and len(curves["norm_q05"]) == 8
    assert len(curves["knn"]) == 1


def test_simsiam_with_accumulation_logs_every_optimizer_step_once(real_data_root, tmp_path):
    """4 micro-batches per optimizer step, 2 optimizer steps per epoch: one row per optimizer step."""
    _, rows = fit(tmp_path, "simsiam/cifar10.yaml")
    for key in [*NORM_KEYS, "train/loss", "lr/base"]:
        assert rows_per_epoch(rows, key) == {0: 2, 1: 2}, key
        assert [int(row["step"]) for row in rows if row.get(key)] == [0, 1, 2, 3], key
    for key in ["norm/mean_epoch", "train/loss_epoch"]:
        assert rows_per_epoch(rows, key) == {0: 1, 1: 1}, key
    # the lr the step used: warmup from 0 over 10 epochs of 2 optimizer steps to 0.12
    lrs = [float(row["lr/base"]) for row in rows if row.get("lr/base")]
    assert lrs == pytest.approx([0.12 * step / 20 for step in range(4)], abs=1e-8)


def test_curves_fall_back_to_the_epoch_aggregates(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,knn/top1,lr-SGD,norm/mean_epoch,norm/q05_epoch,norm/q95_epoch,step,train/loss_epoch\n"
        ",,0.1,,,,0,\n"
        "0,,,5.0,4.0,6.0,1,3.0\n"
        "1,0.4,,,,,3,\n"
        "1,,,7.0,6.0,8.0,3,2.5\n"
    )
    curves = training_curves(metrics)
    assert curves["norm"] == [(1.0, 5.0), (3.0, 7.0)] and curves["norm_q95"] == [(1.0, 6.0), (3.0, 8.0)]
    assert curves["loss"] == [(1.0, 3.0), (3.0, 2.5)]
    assert curves["lr"] == [(0.0, 0.1)]  # LearningRateMonitor's column when lr/base was not logged
    assert curves["knn"] == [(3.0, 0.4)]
    history = [{"epoch": 0.0, "step": 7.0, "norm/mean": 5.0, "knn/top1": float("nan"), "train/loss": 3.0, "lr/base": 0.1}]
    assert training_curves(history) == {"norm": [(7.0, 5.0)], "norm_q05": [], "norm_q95": [], "loss": [(7.0, 3.0)],
                                        "lr": [(7.0, 0.1)], "knn": []}


def test_monitor_works_only_on_written_micro_batches_and_restores_the_interval():
    """Accumulating 2 micro-batches, 4 optimizer steps per epoch, log_every_n_steps 50: every optimizer
    step is logged and the statistics are computed once per optimizer step, not per micro-batch."""
    computed = []

    class Counting(EmbeddingNormMonitor):
        def statistics(self, *args, **kwargs):
            computed.append(1)
            return super().statistics(*args, **kwargs)

    data = SyntheticLatentClasses(num_classes=4, train_samples=256, val_samples=64, batch_size=32)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=2, accumulate_grad_batches=2, log_every_n_steps=50,
                        limit_val_batches=0, callbacks=[Counting()])
    trainer.fit(SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[32], projector_dims=[16], warmup_epochs=0), data)
    assert len(computed) == trainer.global_step == 8
    assert "norm/mean" in trainer.progress_bar_metrics
    assert {"norm/mean_epoch", "train/loss_epoch", "lr/base"} <= set(trainer.callback_metrics)
    assert trainer.log_every_n_steps == 50
