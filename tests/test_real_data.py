"""SimCLR fit on the real CIFAR-10 copy in $SSL_NORMS_DATA (skipped when absent)."""

from __future__ import annotations

import pytest

from conftest import REPO, TINY_RESNET, metric_values
from ssl_norms.cli import main


@pytest.mark.real_data
def test_simclr_fit_and_validate_on_real_cifar10(real_data_root, tmp_path):
    run_dir = tmp_path / "real"
    common = [
        "--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"), *TINY_RESNET,
        "--data.init_args.max_train_samples", "512", "--data.init_args.max_val_samples", "256",
        "--data.init_args.batch_size", "64",
    ]
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--run_dir", str(run_dir)])
    knn = metric_values(run_dir / "metrics.csv", "knn/top1")
    assert len(knn) == 1 and 0.1 <= knn[0] <= 1.0  # 10 classes; an untrained narrow net is already near or above chance
    norms = metric_values(run_dir / "metrics.csv", "norm/mean")
    assert len(norms) == 8 and all(n > 0 for n in norms)  # 512 / 64 = 8 steps, logged every step
    main(["validate", *common, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert list(run_dir.glob("validate-*/metrics.csv"))
