"""End-to-end: the ssl-norms command on the embedded data and on image folders. Bad input and faults:
tests/test_faults.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from conftest import REPO, TINY_DEMO, TINY_RESNET, metric_values, read_metrics_csv
from ssl_norms.callbacks import NonFiniteLossError
from ssl_norms.main import failure, main

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


def entry_point(args: list[str], cwd, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """``ssl-norms ARGS`` in a new process with stdout piped (not a terminal), and its wall time."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ssl_norms.main", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)
    return done, time.perf_counter() - start


# --help and argument errors of every project command: (words, exit code)
LIGHT_CALLS = [
    (["--help"], 0), (["sweep", "--help"], 0), (["sweep", "--bogus"], 2), (["slurm", "array", "--bogus"], 2), (["trian"], 2),
    (["analyze", "--help"], 0), (["analyze", "novelty", "--help"], 0), (["analyze", "--bogus"], 2),
    (["simulate", "--help"], 0), (["simulate", "fig2a", "--help"], 0), (["simulate", "fig2a", "--bogus"], 2),
    (["compare", "--help"], 0), (["compare", "--bogus"], 2), (["export", "--help"], 0), (["export", "--bogus"], 2),
]


@pytest.mark.parametrize("args, code", LIGHT_CALLS)
def test_help_and_argument_errors_answer_fast(tmp_path, args, code):
    # 3 s: generous for a loaded machine; the same commands took 6-8 s when every command imported Lightning
    done, seconds = entry_point(args, tmp_path, timeout=60)
    assert done.returncode == code, done.stderr
    assert seconds < 3, f"ssl-norms {' '.join(args)} took {seconds:.1f} s"
    assert done.stdout if code == 0 else done.stderr.count("\n") == 1


def test_help_and_argument_errors_import_neither_torch_nor_lightning(tmp_path):
    script = (
        "import sys\nfrom ssl_norms.main import main\n"
        f"for words in {[words for words, _ in LIGHT_CALLS]!r}:\n"
        "    try:\n        main(words)\n    except SystemExit:\n        pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'lightning', 'wandb', 'matplotlib', 'scipy', 'timm') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.stdout.splitlines()[-1] == "heavy: []", done.stdout + done.stderr


NOISE = ("Tip:", "estimate number of stepping batches", "litlogger", "litmodels", "FLOPs", "LeafSpec", "Deprecat", "deprecat", "LightningCLI's args", "anonymous", "not supported by the model summary")


def test_fit_off_a_terminal_prints_progress_lines_and_no_noise(tmp_path):
    run_dir = tmp_path / "a-run-directory-whose-path-is-longer-than-the-eighty-columns-a-console-assumes-off-a-terminal"
    done, _ = entry_point(["fit", *TINY_DEMO, "--run_dir", str(run_dir)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) >= 2, done.stdout
    for field in ("batch ", " it/s", "train/loss ", "norm/mean ", "lr ", "ETA "):
        assert all(field in line for line in lines), (field, lines)
    assert lines[-1].startswith("epoch 2/2  batch 16/16  ")  # 512 samples / batch 64 = 8 batches per epoch
    assert f"run directory: {run_dir}\n" in done.stdout  # one line, to copy
    assert not any(line.startswith("Epoch ") for line in done.stdout.splitlines())  # no bar drawn into the pipe
    found = [noise for noise in NOISE if noise in done.stdout + done.stderr]
    assert found == [], done.stdout + done.stderr

    resumed, _ = entry_point(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run_dir), "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")][-1].startswith("epoch 3/3  batch 24/24  ")
    assert resumed.stderr.splitlines() == [f"ssl-norms: --ckpt_path last: resuming {run_dir} from last.ckpt (global step 16)"]


@pytest.mark.parametrize("every_n_batches, every_seconds", [(0, 30.0), (50, 0.0)])
def test_progress_lines_refuse_a_cadence_that_never_prints(every_n_batches, every_seconds):
    from ssl_norms.callbacks import ProgressLines

    with pytest.raises(ValueError, match="every_n_batches must be >= 1 and every_seconds > 0"):
        ProgressLines(every_n_batches, every_seconds)


@pytest.mark.parametrize("terminal", [True, False])
def test_a_terminal_keeps_lightnings_progress_bar(tmp_path, monkeypatch, terminal):
    from lightning.pytorch.callbacks import RichProgressBar

    from ssl_norms.callbacks import ProgressLines
    from ssl_norms.cli import run_lightning_cli

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    cli = run_lightning_cli(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                             "--trainer.limit_val_batches", "1", "--run_dir", str(tmp_path / "run")])
    assert type(cli.trainer.progress_bar_callback) is (RichProgressBar if terminal else ProgressLines)


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


def test_progress_lines_leave_validation_time_out_of_speed_and_eta(monkeypatch, capsys):
    import types

    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from ssl_norms.callbacks import ProgressLines, progress

    clock = [0.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    class Clock(L.Callback):  # one second per training batch, a long validation
        def on_train_batch_start(self, *args) -> None:
            clock[0] += 1.0

        def on_validation_epoch_end(self, *args) -> None:
            clock[0] += 1000.0

    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=2, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[Clock(), ProgressLines(every_n_batches=2)])
    trainer.fit(BoringModel())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[1] for line in lines] == ["batch 2/8", "batch 4/8", "batch 6/8", "batch 8/8"]
    assert all("  1.00 it/s  " in line for line in lines), lines
    assert [line.rsplit("ETA ", 1)[1] for line in lines] == ["0:00:06", "0:00:04", "0:00:02", "0:00:00"]
