"""Kill-and-resume: ``ssl-norms fit`` is killed by a signal at a scripted point, resumed with
``--ckpt_path last`` (or, for SIGUSR1, by the SLURM requeue path), and compared with an
uninterrupted run of the same command.

The run: the embedded demo (3 epochs of 8 steps, a checkpoint every 4 steps, so checkpoints fall
both mid-epoch (4, 12, 20) and on the last batch of an epoch (8, 16, 24)). A ``KillPoint`` callback,
given on the killed run's command line, stops at one hook and step, writes a marker file and waits;
the test then sends the signal from outside.

What is exact and what is not (CPU, float32, same thread count):

* step counter, epoch, lr-scheduler position and lr, weights, optimizer state, and the logged
  ``train/loss`` / ``norm/*`` / ``knn/top1`` after the resume are bit-identical to the uninterrupted
  run for every kill point: ReproducibleResume seeds each epoch from (seed, epoch, rank) and the
  training loader skips the batches the checkpoint already covers (RNG and data order continue);
* SIGUSR1 (SLURM's warning signal) makes Lightning write ``hpc_ckpt_1.ckpt`` at whatever point
  the run is; the requeued run resumes from it exactly (weights, optimizer, lr, data). When that
  point is between two batches (``on_train_batch_start``), Lightning's logging-step counter comes
  back one ahead (it assumes checkpoints are written at a batch's end), so after the resume each
  logged row carries the value of the step before its label; the weights are still bit-identical;
* a SIGKILL during the validation that follows a checkpoint written at the epoch's last training
  batch loses that validation's ``knn/top1`` row: Lightning does not re-run a validation that had
  not started when the checkpoint was written, and SIGKILL gives no chance to flush the row. Training
  continues exactly. (SIGTERM stops gracefully after the validation batch and flushes it.)
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import REPO

TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH, EPOCHS, CHECKPOINT_EVERY = 8, 3, 4
FIT = [
    sys.executable, "-m", "ssl_norms.cli", "fit", "--config", str(REPO / "configs" / "demo.yaml"),
    "--data.init_args.train_samples", "512", "--data.init_args.val_samples", "256", "--data.init_args.batch_size", "64",
    "--model.init_args.mlp_hidden_dims", "[64]", "--model.init_args.projector_dims", "[64,16]",
    "--trainer.max_epochs", str(EPOCHS), "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    f"--trainer.callbacks.every_n_train_steps={CHECKPOINT_EVERY}", "--trainer.callbacks.save_last=true",
    "--trainer.callbacks.save_top_k=-1",
]
TIMEOUT_S = 240


class KillPoint(Callback):
    """Test helper: at ``hook`` and global step ``step`` write ``marker`` and wait (up to ``timeout``
    seconds) for a signal; returns early once Lightning has seen SIGTERM so it can stop gracefully."""

    def __init__(self, hook: str, step: int, marker: str, timeout: float = 120.0) -> None:
        self.hook, self.step, self.marker, self.timeout = hook, step, marker, timeout
        self.fired = False

    def _wait_here(self, trainer, hook: str) -> None:
        if self.fired or hook != self.hook or trainer.global_step != self.step or trainer.sanity_checking:
            return
        self.fired = True
        Path(self.marker).write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._wait_here(trainer, "train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._wait_here(trainer, "train_batch_end")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._wait_here(trainer, "validation_batch_end")


# name -> (hook, global step). Checkpoints every 4 steps; an epoch is 8 steps.
KILL_POINTS = {
    # step 11 of 24: epoch 1, batch 3; newest checkpoint: last.ckpt rewritten after epoch 0's validation (step 8)
    "mid-epoch": ("train_batch_end", 11),
    # epoch 1's validation; newest checkpoint: step 16, written at the epoch's last training batch
    "during-validation": ("validation_batch_end", 16),
    # first hook after the mid-epoch checkpoint of step 12 was written
    "after-checkpoint": ("train_batch_start", 12),
}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env["SSL_NORMS_RUN_DIR"] = ""
    env.update(extra or {})
    return env


def run_fit(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*FIT, "--run_dir", str(run_dir), *args], env=env or _env(), capture_output=True,
                            text=True, timeout=TIMEOUT_S, cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_at(run_dir: Path, point: str, sig: signal.Signals, env: dict[str, str] | None = None,
            args: list[str] | None = None) -> int:
    """Start the fit (``args``, default ``--run_dir run_dir``) with a KillPoint, send ``sig`` when it
    reaches ``point``; returns the exit code."""
    hook, step = KILL_POINTS[point]
    marker = run_dir.parent / f"{run_dir.name}.marker"
    args = ["--run_dir", str(run_dir)] if args is None else args
    process = subprocess.Popen(
        [*FIT, *args, "--trainer.callbacks+=test_resume.KillPoint",
         f"--trainer.callbacks.hook={hook}", f"--trainer.callbacks.step={step}", f"--trainer.callbacks.marker={marker}"],
        env=env or _env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=run_dir.parent,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists():
            if process.poll() is not None:
                pytest.fail(f"the fit ended before reaching {point}: {process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the fit did not reach {point} within {TIMEOUT_S} s")
            time.sleep(0.05)
        process.send_signal(sig)
        return process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def metric_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(handle) if row.get(key)]


def assert_continues_exactly(reference: Path, resumed: Path, missing_knn_steps: tuple[int, ...] = (),
                             logged_values_exact: bool = True) -> None:
    """Final checkpoint and logged metrics of ``resumed`` equal those of the uninterrupted ``reference``."""
    ref = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == ref["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert got["epoch"] == ref["epoch"]
    assert got["lr_schedulers"][0]["last_epoch"] == ref["lr_schedulers"][0]["last_epoch"]  # lr schedule position
    assert got["optimizer_states"][0]["param_groups"][0]["lr"] == ref["optimizer_states"][0]["param_groups"][0]["lr"]
    for name, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][name], value), f"weight {name} differs after the resume"
    for index, state in ref["optimizer_states"][0]["state"].items():  # SGD momentum buffers
        assert torch.equal(got["optimizer_states"][0]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    for key in ("train/loss", "norm/mean", "lr/effective"):
        if logged_values_exact:
            assert metric_series(resumed, key) == metric_series(reference, key), key
        else:  # same logging steps; the values are those of the neighbouring step (module docstring)
            assert [s for s, _ in metric_series(resumed, key)] == [s for s, _ in metric_series(reference, key)], key
    expected_knn = [(step, v) for step, v in metric_series(reference, "knn/top1") if step not in missing_knn_steps]
    if logged_values_exact:
        assert metric_series(resumed, "knn/top1") == expected_knn
    else:  # identical k-NN results, the labels after the resume one step later
        assert [v for _, v in metric_series(resumed, "knn/top1")] == [v for _, v in expected_knn]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    run_fit(run_dir)
    return run_dir


def _kill_and_resume(reference: Path, tmp_path: Path, point: str, sig: signal.Signals) -> Path:
    run_dir = tmp_path / f"killed-{point}"
    code = kill_at(run_dir, point, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)  # SIGTERM: Lightning stops gracefully
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert before < STEPS_PER_EPOCH * EPOCHS
    # SIGKILL leaves the lock of a dead process, which the resume takes over; SIGTERM releases it
    assert (run_dir / "run.lock").exists() == (sig == signal.SIGKILL)
    result = run_fit(run_dir, "--ckpt_path", "last")
    assert "--ckpt_path last: resuming" in result.stderr
    assert ("taking over the lock" in result.stderr) == (sig == signal.SIGKILL)
    assert not (run_dir / "run.lock").exists()
    return run_dir


def test_sigkill_right_after_a_checkpoint_resumes_exactly(reference, tmp_path):
    """The default-suite representative: SIGKILL just after the mid-epoch checkpoint of step 12."""
    run_dir = _kill_and_resume(reference, tmp_path, "after-checkpoint", signal.SIGKILL)
    assert_continues_exactly(reference, run_dir)
    # metrics.csv keeps the rows of the interrupted attempt: one row per logged step, no duplicates
    steps = [step for step, _ in metric_series(run_dir, "train/loss")]
    assert steps == sorted(set(steps)) and steps[0] == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_matrix(reference, tmp_path, point, sig):
    run_dir = _kill_and_resume(reference, tmp_path, point, sig)
    # SIGKILL during a validation that no checkpoint covers loses that validation's row (module docstring)
    missing = (2 * STEPS_PER_EPOCH - 1,) if (point, sig) == ("during-validation", signal.SIGKILL) else ()
    assert_continues_exactly(reference, run_dir, missing_knn_steps=missing)


def fake_slurm(tmp_path: Path, job_id: str = "4242") -> tuple[dict[str, str], Path]:
    """A SLURM job environment for one task, and an ``scontrol`` that records the requeue and then
    stops the job with SIGTERM the way SLURM does."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {log}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    env = _env({
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "ssl-norms", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": "0",
    })
    return env, log


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigusr1_requeue_matrix(reference, tmp_path, point):
    """SLURM's warning signal: Lightning writes hpc_ckpt_1.ckpt at the kill point and requeues; the
    requeued job (SLURM_RESTART_COUNT=1) resumes from it without --ckpt_path."""
    env, log = fake_slurm(tmp_path)
    run_dir = tmp_path / f"usr1-{point}"
    assert kill_at(run_dir, point, signal.SIGUSR1, env=env) == 0
    assert log.read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").exists()
    result = run_fit(run_dir, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert "SLURM restart 1: resuming" in result.stderr and "hpc_ckpt_1.ckpt" in result.stderr
    # a checkpoint written between two batches (the signal came at on_train_batch_start) shifts
    # Lightning's logging-step counter by one after the resume; training itself is exact
    assert_continues_exactly(reference, run_dir, logged_values_exact=point != "after-checkpoint")


@pytest.mark.slow
def test_isoloss_ema_target_and_correlation_continue_exactly(tmp_path):
    """IsoLoss with an EMA target: the target network, its tau schedule and the correlation C are
    checkpointed state, so a SIGKILL right after a mid-epoch checkpoint resumes bit-exactly too."""
    method = ["--model", "ssl_norms.methods.IsoLoss", "--model.init_args.projector_dims", "[64,16]"]
    reference = tmp_path / "isoloss-uninterrupted"
    run_fit(reference, *method)
    run_dir = tmp_path / "isoloss-killed"
    assert kill_at(run_dir, "after-checkpoint", signal.SIGKILL, args=["--run_dir", str(run_dir), *method]) == -signal.SIGKILL
    run_fit(run_dir, *method, "--ckpt_path", "last")
    assert_continues_exactly(reference, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "correlation" in state and any(name.startswith("target.") for name in state)
