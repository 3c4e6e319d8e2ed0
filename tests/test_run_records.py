"""Run records are never lost, mixed or corrupted by ordinary use (ssl_norms.runs, ssl_norms.resume).

Each case runs the real CLI (in-process through ``main``, or as a subprocess where processes
matter) against a copy of one finished run and compares the SHA-256 of every file of the run before
and after: only a command whose purpose is to change the run may change it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from conftest import TINY_DEMO, read_metrics_csv
from ssl_norms import runs
from ssl_norms.cli import main, run_lightning_cli
from ssl_norms.loggers import read_complete_rows
from ssl_norms.run_hooks import AtomicCheckpointIO
from ssl_norms.runs import CheckpointSaveError, RunError, acquire_lock, newest_checkpoint

STEPS_PER_EPOCH = 8  # TINY_DEMO: 512 samples / batch 64; two epochs -> global step 16


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_untouched(root: Path, before: dict[str, str], new_folder: str | None = None) -> None:
    """Every file of ``before`` is byte-identical and no file was added (except under ``new_folder``)."""
    after = file_hashes(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    added = [name for name in after if name not in before and not (new_folder and name.startswith(f"{new_folder}/"))]
    assert not changed and not added, f"changed: {changed}, added: {added}"


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and the last stderr line of an in-process ``ssl-norms`` call that must fail."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("ssl-norms: error: ") and "Traceback" not in "\n".join(err)
    return stop.value.code, err[-1]


def cli_subprocess(args: list[str], cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, "-m", "ssl_norms.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, expected: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ssl-norms: error: ") and expected in last, last
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch run of the tiny demo (global step 16)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    main(["fit", *TINY_DEMO, "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false"])
    return run_dir


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"]


# ---- 1. validate / test / predict never write over the run ---------------------------------------
@pytest.mark.parametrize("command, args", [
    ("validate", ["--run_dir", "{run}", "--ckpt_path", "last"]),
    ("validate", ["--run_dir", "{run}"]),
    ("validate", ["--ckpt_path", "{run}/checkpoints/last.ckpt"]),
    ("test", ["--run_dir", "{run}", "--ckpt_path", "last"]),
    ("predict", ["--run_dir", "{run}", "--ckpt_path", "last"]),
])
def test_evaluation_writes_a_new_subfolder_and_leaves_the_run_byte_identical(run, command, args):
    before = file_hashes(run)
    main([command, *TINY_DEMO, *[a.format(run=run) for a in args]])
    (out,) = [p for p in run.iterdir() if p.name.startswith(f"{command}-")]
    assert_untouched(run, before, new_folder=out.name)
    record = yaml.safe_load((out / "run_record.yaml").read_text())["starts"][0]
    assert record["command"] == command and record["global_step"] == 2 * STEPS_PER_EPOCH
    assert record["checkpoint"] == str((run / "checkpoints" / "last.ckpt").resolve())
    if command == "validate":
        assert float(read_metrics_csv(out / "metrics.csv")[-1]["knn/top1"]) > 0.3


def test_validate_with_the_runs_config_writes_elsewhere(run, tmp_path):
    before = file_hashes(run)
    main(["validate", "--config", str(run / "config.yaml"), "--trainer.enable_progress_bar", "false"])
    assert_untouched(run, before)
    (out,) = (tmp_path / "runs" / "simclr-syntheticlatentclasses").iterdir()
    assert out.name.startswith("validate-") and (out / "metrics.csv").is_file()


def test_two_validations_in_the_same_second_get_two_folders(run):
    main(["validate", *TINY_DEMO, "--run_dir", str(run)])
    main(["validate", *TINY_DEMO, "--run_dir", str(run)])
    assert len([p for p in run.iterdir() if p.name.startswith("validate-")]) == 2


# ---- 2. a saved config starts a new run ----------------------------------------------------------
def test_saved_config_holds_no_run_dir_or_checkpoint(finished):
    config = yaml.safe_load((finished / "config.yaml").read_text())
    assert config["run_dir"] is None and config["ckpt_path"] is None
    assert yaml.safe_load((finished / "run_record.yaml").read_text())["starts"][0]["command"] == "fit"


def test_reusing_a_runs_config_starts_a_new_run(run, tmp_path, capsys):
    # an older config.yaml (or a hand-written one) naming the run and its checkpoint
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(run_dir=str(run), ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = file_hashes(run)
    main(["fit", "--config", str(run / "config.yaml"), "--model.init_args.lr", "0.1", "--trainer.max_epochs", "1"])
    assert_untouched(run, before)
    err = capsys.readouterr().err
    assert f"ignoring run_dir: {run}" in err and "ignoring ckpt_path" in err
    (new,) = (tmp_path / "runs" / "simclr-syntheticlatentclasses").iterdir()
    assert global_step(new / "checkpoints" / "last.ckpt") == STEPS_PER_EPOCH  # trained from scratch
    assert yaml.safe_load((new / "config.yaml").read_text())["model"]["init_args"]["lr"] == 0.1


def test_explicit_run_dir_after_the_config_wins(run, tmp_path):
    main(["fit", "--run_dir", str(tmp_path / "new"), "--config", str(run / "config.yaml"), "--trainer.max_epochs", "1"])
    assert (tmp_path / "new" / "checkpoints" / "last.ckpt").is_file()


# ---- 3. one writer per run -----------------------------------------------------------------------
def write_lock(run_dir: Path, **holder) -> None:
    (run_dir / runs.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "since": "then", **holder}))


def test_a_live_lock_holder_refuses_a_second_fit(run, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(run, pid=sleeper.pid)
        before = file_hashes(run)
        code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run), "--ckpt_path", "last"], capsys)
        assert code == 2 and f"in use by another fit (pid {sleeper.pid} on {socket.gethostname()}" in line
        assert_untouched(run, before)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_holders_lock_is_taken_over_and_released(run, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(run, pid=gone.pid)
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last"])
    assert f"taking over the lock of {run} from pid {gone.pid}" in capsys.readouterr().err
    assert not (run / runs.LOCK_FILE).exists()
    assert global_step(run / "checkpoints" / "last.ckpt") == 3 * STEPS_PER_EPOCH


def test_the_lock_is_released_when_the_command_fails(run, capsys):
    code, _ = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run), "--ckpt_path", "last", "--model.init_args.projector_dims", "[32,16]"], capsys)
    assert code == 2 and not (run / runs.LOCK_FILE).exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    write_lock(tmp_path, pid=1, host="other-node", slurm_job_id="77", slurm_restart_count=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same start of the job, elsewhere: still running
    with pytest.raises(RunError, match="SLURM job 77"):
        acquire_lock(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeue: the earlier start is gone
    release = acquire_lock(tmp_path)
    holder = json.loads((tmp_path / runs.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["slurm_restart_count"] == 1
    release()
    assert not (tmp_path / runs.LOCK_FILE).exists()


def test_a_requeued_job_continues_its_run_whatever_its_command_line_says(run, finished, monkeypatch):
    """The requeued job repeats its sbatch command, e.g. the --ckpt_path it started from."""
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    found = runs.fit_checkpoint(run, str(finished / "checkpoints" / "last.ckpt"))
    assert found.path == run / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(RunError, match="already holds a run with checkpoints"):
        runs.fit_checkpoint(run, str(finished / "checkpoints" / "last.ckpt"))


def test_a_lock_on_another_host_is_not_taken_over(tmp_path):
    write_lock(tmp_path, pid=1, host="other-node")
    with pytest.raises(RunError, match="pid 1 on other-node"):
        acquire_lock(tmp_path)


def test_two_concurrent_fits_on_one_run_dir(tmp_path):
    """The second fit is refused naming the first; the first finishes normally and releases the lock."""
    from test_resume import FIT, _env

    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    first = subprocess.Popen([*FIT, "--run_dir", str(run_dir), "--trainer.callbacks+=test_resume.KillPoint",
                              "--trainer.callbacks.hook=train_batch_end", "--trainer.callbacks.step=3",
                              f"--trainer.callbacks.marker={marker}"], env=_env(), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = file_hashes(run_dir)
        second = subprocess.run([*FIT, "--run_dir", str(run_dir), "--ckpt_path", "last"], env=_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert_one_line_error(second, 2, f"in use by another fit (pid {first.pid} on {socket.gethostname()}")
        assert_untouched(run_dir, before)
        first.send_signal(signal.SIGTERM)  # Lightning stops gracefully
        assert first.wait(timeout=240) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (run_dir / runs.LOCK_FILE).exists()


# ---- 4. copied and moved runs resume where they stopped ------------------------------------------
def test_a_copied_run_resumes_from_its_newest_step_and_keeps_one_checkpoint(run, finished, tmp_path):
    original = file_hashes(finished)
    copy = Path(shutil.move(run, tmp_path / "moved"))
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(copy), "--ckpt_path", "last"])
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "4", "--run_dir", str(copy), "--ckpt_path", "last"])
    assert [p.name for p in (copy / "checkpoints").iterdir()] == ["last.ckpt"]  # no last-v1, no second copy
    assert global_step(copy / "checkpoints" / "last.ckpt") == 4 * STEPS_PER_EPOCH
    steps = [int(row["step"]) for row in read_metrics_csv(copy / "metrics.csv") if row.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 4 * STEPS_PER_EPOCH - 1
    assert_untouched(finished, original)


def test_newest_checkpoint_is_chosen_by_global_step_not_by_file_time(run, tmp_path):
    """A stale last.ckpt with a newer file time loses to a checkpoint with more steps; unreadable
    files are skipped."""
    older = tmp_path / "older"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--run_dir", str(older)])
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt")  # step 16
    shutil.copy(older / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")  # step 8, newer mtime
    (run / "checkpoints" / "broken.ckpt").write_bytes(b"PK\x03\x04 cut short")
    found = newest_checkpoint(run)
    assert found.path.name == "hpc_ckpt_1.ckpt" and found.global_step == 2 * STEPS_PER_EPOCH


# ---- 5 and 6. the resume policy --------------------------------------------------------------------
class LrProbe(Callback):
    """Test helper: the lr of the first parameter group at every training step (class-level, in-process)."""

    seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        LrProbe.seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def test_resume_applies_and_records_a_changed_lr(run, capsys):
    LrProbe.seen = []
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last",
          "--model.init_args.lr", "0.05", "--model.init_args.warmup_epochs", "0", "--trainer.callbacks+=test_run_records.LrProbe"])
    err = capsys.readouterr().err
    assert "resuming with changed settings from global step 16: lr 0.3 -> 0.05, warmup_epochs 1.0 -> 0.0" in err
    # cosine from 0.05 without warmup over 24 steps, continued at step 16 (the old schedule gave 0.15 there)
    expected = [(step, 0.05 * 0.5 * (1 + math.cos(math.pi * step / 24))) for step in range(16, 24)]
    assert [step for step, _ in LrProbe.seen] == [step for step, _ in expected]
    assert [lr for _, lr in LrProbe.seen] == pytest.approx([lr for _, lr in expected], rel=1e-9)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["lr_schedulers"][0]["base_lrs"] == [0.05]
    assert all(group["initial_lr"] == 0.05 for group in saved["optimizer_states"][0]["param_groups"])
    record = yaml.safe_load((run / "run_record.yaml").read_text())["starts"][-1]
    assert record["global_step"] == 16 and record["checkpoint"] == "checkpoints/last.ckpt"
    assert record["changes"] == {"lr": {"from": 0.3, "to": 0.05}, "warmup_epochs": {"from": 1.0, "to": 0.0}}


def test_explicit_checkpoint_keeps_command_line_settings(run, tmp_path):
    before = file_hashes(run)
    cli = run_lightning_cli(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(tmp_path / "branch"),
                             "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--model.init_args.temperature", "0.2"])
    assert cli.model.temperature == 0.2  # not the checkpoint's 0.5
    record = yaml.safe_load((tmp_path / "branch" / "run_record.yaml").read_text())["starts"][0]
    assert record["changes"] == {"temperature": {"from": 0.5, "to": 0.2}} and record["global_step"] == 16
    assert_untouched(run, before)


@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.projector_dims", "[128,64]"], "projector_dims [256, 64] -> [128, 64]"),
    (["--model.init_args.mlp_hidden_dims", "[128,128]"], "mlp_hidden_dims [256, 256] -> [128, 128]"),
    (["--model", "ssl_norms.methods.FroSSL", "--model.init_args.backbone", "mlp", "--model.init_args.input_dim", "64",
      "--model.init_args.mlp_hidden_dims", "[256,256]"], "method SimCLR -> FroSSL"),
])
def test_architecture_or_method_changes_are_refused_before_anything_is_written(run, capsys, args, expected):
    before = file_hashes(run)
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run), "--ckpt_path", "last", *args], capsys)
    assert code == 2 and expected in line and "holds another model than the config asks for" in line
    assert_untouched(run, before)
    code, line = cli_error(["validate", *TINY_DEMO, "--run_dir", str(run), *args], capsys)
    assert code == 2 and expected in line
    assert_untouched(run, before)


def test_a_checkpoint_without_hyperparameters_is_checked_by_shape(run, capsys):
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    del saved["hyper_parameters"]
    torch.save(saved, run / "checkpoints" / "last.ckpt")
    before = file_hashes(run)
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run), "--ckpt_path", "last", "--model.init_args.projector_dims", "[256,32]"], capsys)
    assert code == 2 and "does not fit the configured SimCLR: projector" in line and "(32, 256) configured" in line
    assert_untouched(run, before)


# ---- 8. fits that would overwrite, bad run dirs, disk full, a cut-off metrics row -----------------
def test_a_fresh_fit_into_a_run_is_refused(run, capsys):
    before = file_hashes(run)
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run)], capsys)
    assert code == 2 and "already holds a run with checkpoints" in line and "--ckpt_path last" in line
    assert_untouched(run, before)


def test_run_dir_that_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert cli_error(["fit", *TINY_DEMO, "--run_dir", str(target)], capsys) == (2, f"ssl-norms: error: --run_dir {target} is a file, not a directory")
    assert target.read_text() == "mine"
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(target / "run")], capsys)
    assert code == 2 and "cannot create" in line
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(tmp_path)], capsys)  # holds notes.txt
    assert code == 2 and "is not empty and is not a run directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_run_dir_under_a_missing_parent_is_created(tmp_path):
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--run_dir", str(tmp_path / "a" / "b" / "run")])
    assert (tmp_path / "a" / "b" / "run" / "checkpoints" / "last.ckpt").is_file()


def test_run_dir_under_a_read_only_parent(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # the test may run as root, for whom chmod does not stop writes
        if self.parent == parent:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert cli_error(["fit", *TINY_DEMO, "--run_dir", str(parent / "run")], capsys) == (
        2, f"ssl-norms: error: cannot create {parent / 'run'}: Permission denied")
    assert list(parent.iterdir()) == []


def test_a_read_only_run_is_not_resumed_or_evaluated(run, capsys, monkeypatch):
    before = file_hashes(run)

    def read_only(path, *args):  # the test may run as root, for whom chmod does not stop writes
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runs, "create_file_once", read_only)
    real_access = os.access
    monkeypatch.setattr(runs.os, "access", lambda path, mode, **kw: Path(path) != run and real_access(path, mode, **kw))
    code, line = cli_error(["validate", *TINY_DEMO, "--run_dir", str(run)], capsys)
    assert code == 2 and line == f"ssl-norms: error: {run} is not writable"
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(run), "--ckpt_path", "last"], capsys)
    assert code == 2 and line == f"ssl-norms: error: cannot lock {run}: Permission denied"
    assert_untouched(run, before)


def test_disk_full_during_a_checkpoint_keeps_the_last_good_one(run, capsys, monkeypatch):
    before = file_hashes(run)

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    code, line = cli_error(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last"], capsys)
    assert code == 1
    assert line == f"ssl-norms: error: could not save checkpoint {run / 'checkpoints' / 'last.ckpt'} (disk full); the previous last.ckpt is intact"
    assert file_hashes(run)["checkpoints/last.ckpt"] == before["checkpoints/last.ckpt"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]  # no temporary file left
    assert not (run / runs.LOCK_FILE).exists()


def test_atomic_checkpoint_io_replaces_or_keeps(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 2

    def killed_mid_write(obj, handle):
        handle.write(b"cut")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 3}, path)
    assert io.load_checkpoint(path)["global_step"] == 2 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

    def io_error(obj, handle):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", io_error)
    with pytest.raises(CheckpointSaveError, match=r"\(Input/output error\); the previous last.ckpt is intact"):
        io.save_checkpoint({"global_step": 3}, path)


def test_a_cut_off_metrics_row_does_not_survive_a_resume(run):
    metrics = run / "metrics.csv"
    text = metrics.read_text()
    complete, last = text.rstrip("\r\n").rsplit("\n", 1)
    cut = last[: len(last) // 2]  # the process died in the middle of the last row
    metrics.write_text(f"{complete}\n{cut}")
    kept = read_metrics_csv(metrics)[:-1]
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last"])
    rows = read_metrics_csv(metrics)
    assert cut not in metrics.read_text().splitlines()
    for old in kept:  # every complete row survives, with the same values
        assert any(all(row.get(k) == v for k, v in old.items() if v) for row in rows), old
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 3 * STEPS_PER_EPOCH - 1


GARBAGE_METRICS = {
    "control bytes": (b"\x00\x01garbage\n1,2\n", "no 'step' column in its header '\\x00\\x01garbage'"),
    "binary, no line end": (bytes(range(128, 256)) * 2, "no complete line in its 256 bytes"),
    "not UTF-8": (b"step,loss\n1,\xff\xfe\n", "not UTF-8 text: byte 12 is b'\\xff'"),
    "no step column": (b"epoch,loss\n0,1.5\n", "no 'step' column in its header 'epoch,loss'"),
    "a row of another width": (b"epoch,step,loss\n0,1,2.5\n0,2,2.4,9\n", "line 3 has 4 fields, its header 3"),
    "text in a cell": (b"epoch,step,loss\n0,1,low\n", "line 2 holds 'low' in column 'loss', not a number"),
    "an infinite step": (b"epoch,step,loss\n0,inf,2.5\n", "line 2 holds 'inf' in column 'step', not a number"),
}


@pytest.mark.parametrize("kind", GARBAGE_METRICS)
def test_a_metrics_file_that_cannot_be_continued_is_refused_untouched(tmp_path, kind):
    content, problem = GARBAGE_METRICS[kind]
    path = tmp_path / "metrics.csv"
    path.write_bytes(content)
    with pytest.raises(RunError) as refused:
        read_complete_rows(path)
    assert str(refused.value) == (f"{path} is not a metrics log this run can continue ({problem}); it is left as it is: "
                                  "move it away (or repair it) to resume the run")
    assert path.read_bytes() == content


def test_readable_metrics_files_keep_their_complete_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    for content, rows in [(b"", []), (b"epoch,step,loss\n", []), (b"epoch,step,loss\n0,1,nan\n0,2,", [{"epoch": "0", "step": "1", "loss": "nan"}]),
                          (b"epoch,step,loss\n,,2.5\n", [{"epoch": "", "step": "", "loss": "2.5"}])]:
        path.write_bytes(content)
        assert read_complete_rows(path) == rows, content


@pytest.mark.parametrize("kind", ["control bytes", "binary, no line end", "a row of another width"])
def test_a_garbage_metrics_file_is_named_before_training(run, capsys, kind):
    content, problem = GARBAGE_METRICS[kind]
    (run / "metrics.csv").write_bytes(content)
    before = file_hashes(run)
    code, line = cli_error(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last"], capsys)
    assert code == 2 and f"{run / 'metrics.csv'} is not a metrics log this run can continue ({problem})" in line
    assert global_step(run / "checkpoints" / "last.ckpt") == 2 * STEPS_PER_EPOCH
    assert (run / "metrics.csv").read_bytes() == content and file_hashes(run)["metrics.csv"] == before["metrics.csv"]


def test_an_empty_metrics_file_gets_a_header_when_the_run_resumes(run):
    (run / "metrics.csv").write_bytes(b"")  # e.g. emptied by hand; rows appended to it would have no header
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "3", "--run_dir", str(run), "--ckpt_path", "last"])
    rows = read_complete_rows(run / "metrics.csv")
    assert rows and all(row["step"] for row in rows)
    assert max(int(row["step"]) for row in rows if row.get("train/loss")) == 3 * STEPS_PER_EPOCH - 1
