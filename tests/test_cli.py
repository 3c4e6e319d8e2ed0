"""End-to-end: the ssl-norms command on the embedded data and on image folders. Bad input and faults:
tests/test_faults.py."""

from __future__ import annotations

import errno

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from conftest import REPO, TINY_DEMO, TINY_RESNET, metric_values, read_metrics_csv
from ssl_norms.callbacks import NonFiniteLossError
from ssl_norms.cli import failure, main

NORM_KEYS = ["norm/mean", "norm/std", "norm/min", "norm/max", "norm/q50", "features/norm_mean", "lr/effective", "pairs/opposite_rate"]


def test_fit_demo_logs_norms_and_knn_then_validate_and_resume(tmp_path):
    run_dir = tmp_path / "demo_run"
    main(["fit", *TINY_DEMO, "--run_dir", str(run_dir)])
    metrics = run_dir / "metrics.csv"
    header = read_metrics_csv(metrics)[0].keys()
    for key in [*NORM_KEYS, "knn/top1", "train/loss"]:
        assert key in header, key
    knn = metric_values(metrics, "knn/top1")
    assert len(knn) == 2 and all(0.0 <= v <= 1.0 for v in knn)
    assert knn[-1] > 0.3  # 10 classes: far above chance after two epochs
    norms = metric_values(metrics, "norm/mean")
    lr_eff = metric_values(metrics, "lr/effective")
    assert all(n > 0 for n in norms) and all(e >= 0 for e in lr_eff)
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists()

    # validate from the checkpoint: same k-NN as the last validation of fit (deterministic eval)
    main(["validate", *TINY_DEMO, "--ckpt_path", str(last)])
    validate_dirs = sorted(run_dir.glob("validate-*"))
    assert validate_dirs, "validate writes next to the run, not over it"
    assert metric_values(validate_dirs[0] / "metrics.csv", "knn/top1")[-1] == pytest.approx(knn[-1], abs=1e-6)

    # resume for one more epoch: the step counter continues from the checkpoint
    steps_before = torch.load(last, weights_only=True)["global_step"]
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run_dir), "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["global_step"] == steps_before * 3 // 2


def test_resume_last_without_run_dir_finds_newest_run(tmp_path):
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1"])
    runs = list((tmp_path / "runs" / "simclr-syntheticlatentclasses").iterdir())
    assert len(runs) == 1
    main(["fit", *TINY_DEMO, "--ckpt_path", "last"])
    assert len(list((tmp_path / "runs" / "simclr-syntheticlatentclasses").iterdir())) == 1
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1


def test_fit_on_image_folder_fixture(image_folder, tmp_path):
    run_dir = tmp_path / "folder_run"
    main([
        "fit", "--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"), *TINY_RESNET,
        "--data.init_args.root", str(image_folder), "--data.init_args.batch_size", "16",
        "--trainer.max_epochs", "1", "--run_dir", str(run_dir),
    ])
    header = read_metrics_csv(run_dir / "metrics.csv")[0].keys()
    assert {"norm/mean", "knn/top1", "pairs/opposite_rate"} <= set(header)


def test_bf16_mixed_precision_fit(tmp_path):
    run_dir = tmp_path / "bf16"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--run_dir", str(run_dir)])
    assert all(torch.isfinite(torch.tensor(metric_values(run_dir / "metrics.csv", "train/loss"))))


@pytest.mark.parametrize("error, code, line", [
    (ValueError("lr must be >= 0"), 2, "ssl-norms: error: lr must be >= 0"),
    (MisconfigurationException("`max_epochs` must be >= -1"), 2, "ssl-norms: error: `max_epochs` must be >= -1"),
    (NonFiniteLossError("non-finite loss (nan)"), 3, "ssl-norms: error: non-finite loss (nan)"),
    (OSError(errno.ENOSPC, "No space left on device", "run/metrics.csv"), 1, "ssl-norms: error: run/metrics.csv: No space left on device"),
    (RuntimeError("CUDA error: device-side assert\ntriggered"), 1,
     "ssl-norms: internal error: RuntimeError: CUDA error: device-side assert (SSL_NORMS_DEBUG=1 for the traceback)"),
    (KeyboardInterrupt(), 130, "ssl-norms: interrupted"),
])
def test_every_failure_is_one_line_with_its_exit_code(error, code, line):
    assert failure(error, "fit") == (code, line)


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'; commands: fit, validate, test, predict, sweep" in capsys.readouterr().err


def test_help_lists_every_command_with_one_line(capsys):
    from ssl_norms.commands import COMMANDS

    main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for name, command in COMMANDS.items():
        assert sum(line.split()[:1] == [name] and line.endswith(command.help) for line in lines) == 1, name


def test_wandb_logger_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run_dir = tmp_path / "wandb_run"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
          "--trainer.logger.project", "ssl-norms-test", "--run_dir", str(run_dir)])
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "an offline run directory is written"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert run_id in offline_runs[0].name
