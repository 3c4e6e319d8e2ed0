"""The fault suite: every kind of bad input or fault gives one line on stderr and leaves runs intact.

Each case runs the real entry point (``python -m ssl_norms.cli ...``) in its own process, in a
folder of its own holding a copy of one finished run (``run/``), and checks

* the exit code: 2 for bad input, 1 for an internal fault or a failed write, 3 for a non-finite loss,
  0 where the command is meant to work;
* stderr: exactly one line, ``ssl-norms: error: ...`` (``internal error`` for a fault in the code)
  naming the problem. Nothing is filtered, except in the few cases that fail once training runs
  (``Case.trains``: a full disk, a non-finite loss, a ViT fed the wrong size): there the warnings and
  notes printed while it trained are not counted, and the error must be the only line left;
* the SHA-256 of every file and the set of folders of the case folder: unchanged, except what the
  command exists to write (``Case.writes``). The decoded-image cache is not run data and may change.

Starting Python with torch and Lightning takes ~5 s, so the processes are forked from one interpreter
that has imported ``ssl_norms.cli`` (``serve``); each child runs the module as ``__main__`` exactly as
``python -m`` does, with its own environment, working directory and stdout/stderr files. Set
``SSL_NORMS_FAULTS_EXEC=1`` to start a fresh interpreter per case instead;
``test_forked_and_fresh_processes_agree`` checks that both give the same result.
"""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import itertools
import json
import os
import re
import resource
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from conftest import TINY_DEMO, TINY_RESNET, write_image_folder

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TIMEOUT_S = 240


# ---- running the CLI in a process ----------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    code: int
    stderr: str


def _exit_code(code: object) -> int:
    """What the interpreter makes of ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def limit_file_size(limit: int | None) -> None:
    """Make writes beyond ``limit`` bytes fail with EFBIG (as a full disk fails with ENOSPC)."""
    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _child(request: dict) -> None:
    """In the forked child: become ``python -m ssl_norms.cli ARGV`` in the request's folder and env."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        limit_file_size(request["file_size_limit"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["ssl_norms.cli", *request["argv"]]
        sys.modules.pop("ssl_norms.cli", None)  # python -m imports it once, as __main__
        runpy.run_module("ssl_norms.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The fork server: reads one JSON request per line on stdin, forks a child per request and
    answers ``{"id", "pid"}`` when it starts and ``{"id", "code"}`` when it ends."""
    import ssl_norms.cli  # noqa: F401  (what every child would import first)

    def answer(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    running: dict[int, int] = {}
    open_ = True
    while open_ or running:
        if open_ and select.select([sys.stdin], [], [], 0.02)[0]:
            line = sys.stdin.readline()
            if not line:
                open_ = False
                continue
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            running[pid] = request["id"]
            answer({"id": request["id"], "pid": pid})
        elif not open_:
            select.select([], [], [], 0.02)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            answer({"id": running.pop(pid), "code": os.waitstatus_to_exitcode(status)})


class Runner:
    """Runs ``ssl-norms`` command lines in processes, forked by :func:`serve` (``fork=True``) or
    started fresh; ``pythonpath`` is the checkout whose ``ssl_norms`` runs. Thread-safe."""

    def __init__(self, pythonpath: Path = REPO, fork: bool = True) -> None:
        self.pythonpath, self.fork = Path(pythonpath), fork
        self._ids, self._lock, self._waiting = itertools.count(), threading.Lock(), {}
        # read once: tests change os.environ (monkeypatch) while cases run in other threads
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SSL_NORMS_", "PYTEST_"))}
        if fork:
            self._server = subprocess.Popen([sys.executable, __file__, "--serve"], env=self.env(), text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            threading.Thread(target=self._read_answers, daemon=True).start()

    def env(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        """The environment of every command: this one without SLURM and ssl-norms settings, the checkout
        and ``tests/`` (for ``test_faults.Boom``) on the path, one thread."""
        paths = os.pathsep.join([str(self.pythonpath), str(TESTS)])
        return {**self._base_env, "PYTHONPATH": paths, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **extra}

    def _read_answers(self) -> None:
        for line in self._server.stdout:
            message = json.loads(line)
            slot = self._waiting[message["id"]]
            slot.update(message)
            if "code" in message:
                slot["done"].set()

    def run(self, argv: list[str], cwd: Path, env: Mapping[str, str] = {}, file_size_limit: int | None = None) -> Result:
        out, err = cwd.parent / f"{cwd.name}.stdout", cwd.parent / f"{cwd.name}.stderr"
        env = self.env(env)
        if not self.fork:
            done = subprocess.run([sys.executable, "-m", "ssl_norms.cli", *argv], cwd=cwd, env=env, text=True,
                                  capture_output=True, timeout=TIMEOUT_S, preexec_fn=lambda: limit_file_size(file_size_limit))
            return Result(done.returncode, done.stderr)
        with self._lock:
            ident = next(self._ids)
            slot = self._waiting[ident] = {"done": threading.Event()}
            request = dict(id=ident, argv=argv, cwd=str(cwd), env=env, stdout=str(out), stderr=str(err),
                           file_size_limit=file_size_limit)
            self._server.stdin.write(json.dumps(request) + "\n")
            self._server.stdin.flush()
        if not slot["done"].wait(TIMEOUT_S):
            os.kill(slot["pid"], signal.SIGKILL)
            slot["done"].wait(10)
            raise TimeoutError(f"ssl-norms {' '.join(argv)} ran longer than {TIMEOUT_S} s")
        return Result(slot["code"], err.read_text())

    def close(self) -> None:
        if self.fork:
            self._server.stdin.close()
            self._server.wait(30)


# ---- what a case may change ----------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every file (by SHA-256) and folder under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


def changed_entries(before: dict[str, str], after: dict[str, str], allowed: tuple[str, ...]) -> list[str]:
    """Entries added, changed or removed, except those matching a pattern of ``allowed``."""
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return [name for name in changed if not any(fnmatch.fnmatch(name, pattern) for pattern in allowed)]


# ---- the cases -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One command line and what it must do. In ``argv``, ``{run}`` is the case's copy of the finished
    run, ``{work}`` the case folder (also the working directory and ``$SSL_NORMS_RUNS/..``) and
    ``{repo}`` the repository."""

    name: str
    argv: tuple[str, ...]
    code: int = 2
    says: str = ""  # part of the one stderr line (errors)
    setup: Callable[[Place], None] | tuple = ()  # prepares the case folder: functions of it, or commands (argv tuples)
    writes: tuple[str, ...] = ()  # patterns of case-folder paths the command exists to write
    env: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[Place, Result], None] | None = None  # more about what a working command did
    one_line: bool = True  # stderr is exactly the error line (False: only for SSL_NORMS_DEBUG)
    trains: bool = False  # fails once training runs: the warnings and notes printed while it ran are not counted
    file_size_limit: int | None = None  # RLIMIT_FSIZE in bytes: a write beyond it fails like a full disk


@dataclass(frozen=True)
class Place:
    """Where a case runs: ``work`` is its folder, ``repo`` the checkout under test."""

    work: Path
    repo: Path

    @property
    def read_only(self) -> Path:
        """A folder nobody may create anything in (as root, chmod does not stop writes: /sys)."""
        return Path("/sys/ssl-norms-faults") if os.geteuid() == 0 else self.work / "read-only"

    def format(self, text: str) -> str:
        return text.format(work=self.work, run=self.work / "run", repo=self.repo, read_only=self.read_only)


def write(relative: str, content: bytes | str) -> Callable[[Place], None]:
    """A setup that writes ``content`` (text: with the case's placeholders filled in)."""
    def setup(place: Place) -> None:
        path = place.work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(place.format(content).encode() if isinstance(content, str) else content)
    return setup


def cut_short(source: str, target: str) -> Callable[[Place], None]:
    """``target``: the first half of the file ``source`` (a save interrupted half-way)."""
    def setup(place: Place) -> None:
        data = (place.work / source).read_bytes()
        (place.work / target).write_bytes(data[: len(data) // 2])
    return setup


def copy(source: str, target: str) -> Callable[[Place], None]:
    def setup(place: Place) -> None:
        shutil.copyfile(place.work / source, place.work / target)
    return setup


def images(place: Place) -> None:
    write_image_folder(place.work / "images", {"train": 8, "test": 4})


def damage_caches(place: Place) -> None:
    """Overwrite every cache file (decoded images, the CLI's help) with garbage of the same size (a disk error)."""
    caches = [path for path in (place.work / "cache").rglob("*") if path.is_file()]
    assert caches, "the first fit wrote no decoded-image cache"
    for path in caches:
        path.write_bytes(b"\xff" * path.stat().st_size)


def cut_last_metrics_row(place: Place) -> None:
    """A process killed while writing: the last row of ``run/metrics.csv`` ends half-way."""
    path = place.work / "run" / "metrics.csv"
    complete, last = path.read_text().rstrip("\n").rsplit("\n", 1)
    path.write_text(f"{complete}\n{last[: len(last) // 2]}")


def config_of_this_run(place: Place) -> None:
    """A run's ``config.yaml`` names that run wherever it names one (a config written before run dirs
    were left out of it names the run it was saved in, not this copy)."""
    import yaml

    path = place.work / "run" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    if config.get("run_dir"):
        path.write_text(path.read_text().replace(config["run_dir"], str(place.work / "run")))


def hostile_checkpoint(place: Place) -> None:
    """``run/checkpoints/hostile.ckpt``: unpickling it creates ``{work}/payload-ran``."""
    import torch

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {place.work / 'payload-ran'}",)

    torch.save({"state_dict": {}, "global_step": 1, "hyper_parameters": {"lr": Payload()}},
               place.work / "run" / "checkpoints" / "hostile.ckpt")


def dead_lock(place: Place) -> None:
    """``run/run.lock`` of a process that has ended on this host (a fit killed with SIGKILL)."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    holder = {"pid": ended.pid, "host": socket.gethostname(), "since": "2025-01-01 00:00:00"}
    (place.work / "run" / "run.lock").write_text(json.dumps(holder))


def live_lock(place: Place) -> None:
    """``run/run.lock`` held by a process that is alive (this one) on this host."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2025-01-01 00:00:00"}
    (place.work / "run" / "run.lock").write_text(json.dumps(holder))


class Boom(Callback):
    """An internal fault: a callback that raises while the fit sets up."""

    def setup(self, trainer, pl_module, stage) -> None:
        raise RuntimeError("boom")


def says_on_stderr(*parts: str) -> Callable[[Place, Result], None]:
    def check(place: Place, result: Result) -> None:
        assert all(place.format(part) in result.stderr for part in parts), result.stderr[-2000:]
    return check


def last_start(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "run_record.yaml").read_text())["starts"][-1]


def lr_applied(place: Place, result: Result) -> None:
    import torch

    run = place.work / "run"
    assert last_start(run)["changes"]["lr"] == {"from": 0.3, "to": 0.05}
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert saved["global_step"] == 24 and saved["lr_schedulers"][0]["base_lrs"] == [0.05]


def continued_in_one_file(folder: str) -> Callable[[Place, Result], None]:
    def check(place: Place, result: Result) -> None:
        import torch

        checkpoints = place.work / folder / "checkpoints"
        assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
        assert torch.load(checkpoints / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 24
    return check


def rows_complete(place: Place, result: Result) -> None:
    import csv

    with open(place.work / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len({len(row) for row in rows}) == 1 and rows[-1][rows[0].index("step")] == "23"


def new_run_from_scratch(place: Place, result: Result) -> None:
    import torch

    (run,) = (place.work / "runs").glob("*/*")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 8
    assert last_start(run)["checkpoint"] is None


DEMO = ("--config", "{repo}/configs/demo.yaml", *TINY_DEMO[2:])
FROSSL = ("--model", "ssl_norms.methods.FroSSL", "--model.init_args.backbone", "mlp", "--model.init_args.input_dim", "64",
          "--model.init_args.mlp_hidden_dims", "[256,256]")
FIT_NEW = ("fit", *DEMO, "--run_dir", "{work}/new")
RESUME = ("fit", *DEMO, "--run_dir", "{run}", "--ckpt_path", "last")
IMAGES = ("--config", "{repo}/configs/simclr/cifar10.yaml", *TINY_RESNET, "--data.init_args.root", "{work}/images",
          "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1", "--model.init_args.warmup_epochs", "0")
CKPT = "{run}/checkpoints/last.ckpt"
SWEEP = "name: s\nconfig: {repo}/configs/demo.yaml\ngrid:\n  model.init_args.lr: [0.1, 0.2]\n"
DAMAGED = {
    "empty": write("run/checkpoints/bad.ckpt", b""),
    "text": write("run/checkpoints/bad.ckpt", "just some text\n"),
    "garbage": write("run/checkpoints/bad.ckpt", b"PK\x03\x04" + bytes(range(256)) * 4),
    "truncated": cut_short("run/checkpoints/last.ckpt", "run/checkpoints/bad.ckpt"),
}
BAD_CKPT = "{run}/checkpoints/bad.ckpt"
READS_CKPT = {
    "fit": ("fit", *DEMO, "--run_dir", "{work}/new", "--ckpt_path", BAD_CKPT),
    "validate": ("validate", *DEMO, "--ckpt_path", BAD_CKPT),
    "analyze": ("analyze", "knn_by_norm", "--ckpt", BAD_CKPT),
}

CASES = [
    # ---- damaged checkpoints: refused in one line, nothing written
    *[Case(f"{kind}-checkpoint-{command}", argv, says=f"{BAD_CKPT} is not a readable checkpoint", setup=setup)
      for kind, setup in DAMAGED.items() for command, argv in READS_CKPT.items()],
    Case("resume-from-an-unreadable-last-ckpt", RESUME, setup=write("run/checkpoints/last.ckpt", "text\n"),
         says="--ckpt_path last: no readable checkpoint in {run}: {run}/checkpoints/last.ckpt is not a readable checkpoint"),
    Case("validate-a-run-with-an-unreadable-checkpoint", ("validate", *DEMO, "--run_dir", "{run}"),
         says="--run_dir {run}: no readable checkpoint in {run}: {run}/checkpoints/last.ckpt is not a readable checkpoint",
         setup=write("run/checkpoints/last.ckpt", b"")),
    Case("fit-from-a-missing-checkpoint", (*FIT_NEW, "--ckpt_path", "{work}/missing.ckpt"),
         says="no checkpoint file at {work}/missing.ckpt"),
    Case("validate-a-run-dir-as-checkpoint", ("validate", *DEMO, "--ckpt_path", "{run}"),
         says="no checkpoint file at {run} (a directory: pass a .ckpt file in it)"),
    Case("hostile-checkpoint-validate", ("validate", *DEMO, "--ckpt_path", "{run}/checkpoints/hostile.ckpt"),
         says="refusing to load {run}/checkpoints/hostile.ckpt: it holds posix.system", setup=hostile_checkpoint),
    Case("hostile-checkpoint-analyze", ("analyze", "knn_by_norm", "--ckpt", "{run}/checkpoints/hostile.ckpt"),
         says="refusing to load {run}/checkpoints/hostile.ckpt: it holds posix.system", setup=hostile_checkpoint),
    Case("analyze-missing-checkpoint", ("analyze", "knn_by_norm", "--ckpt", "{run}/checkpoints/missing.ckpt"),
         says="{run}/checkpoints/missing.ckpt"),
    Case("analyze-run-dir-as-checkpoint", ("analyze", "knn_by_norm", "--ckpt", "{run}"), code=0, writes=("run/analyze-*",),
         check=says_on_stderr("analyzing {run}/checkpoints/last.ckpt (global step 16)")),
    Case("analyze-garbage-metrics", ("analyze", "curves", "--runs", "{run}"), says="{run}/metrics.csv", writes=("run/analyze-*",),
         setup=write("run/metrics.csv", "\x00\x01garbage\n1,2\n")),
    Case("analyze-unknown-analysis", ("analyze", "fig99"), says="invalid choice: 'fig99' (choose from 'novelty'"),
    # ---- run directories
    Case("run-dir-is-a-file", ("fit", *DEMO, "--run_dir", "{work}/notes.txt"), says="--run_dir {work}/notes.txt is a file",
         setup=write("notes.txt", "mine")),
    Case("run-dir-under-a-file", ("fit", *DEMO, "--run_dir", "{work}/notes.txt/run"),
         says="cannot create {work}/notes.txt/run: Not a directory", setup=write("notes.txt", "mine")),
    Case("run-dir-under-a-read-only-parent", ("fit", *DEMO, "--run_dir", "{read_only}/run"), says="cannot create {read_only}/run: "),
    Case("run-dir-under-a-missing-parent", ("fit", *DEMO, "--run_dir", "{work}/a/b/run", "--trainer.max_epochs", "1"), code=0,
         writes=("a", "a/*")),
    Case("run-dir-is-a-foreign-folder", ("fit", *DEMO, "--run_dir", "{work}/foreign"), setup=write("foreign/thesis.tex", "mine"),
         says="{work}/foreign is not empty and is not a run directory"),
    Case("fresh-fit-into-a-finished-run", ("fit", *DEMO, "--run_dir", "{run}"),
         says="{run} already holds a run with checkpoints; a new fit would overwrite it"),
    Case("fit-into-a-run-from-another-checkpoint", ("fit", *DEMO, "--run_dir", "{run}", "--ckpt_path", "{work}/other.ckpt"),
         says="a fit from {work}/other.ckpt would overwrite it", setup=copy("run/checkpoints/last.ckpt", "other.ckpt")),
    Case("second-fit-on-a-locked-run", RESUME, says="{run} is in use by another fit", setup=live_lock),
    Case("garbage-lock-file", RESUME, says="{run}/run.lock is not a lock file", setup=write("run/run.lock", "\x00")),
    Case("validate-a-missing-run-dir", ("validate", *DEMO, "--run_dir", "{work}/nothing"),
         says="--run_dir {work}/nothing: no such directory"),
    Case("validate-an-empty-run-dir", ("validate", *DEMO, "--run_dir", "{work}/empty"), says="no checkpoint in {work}/empty",
         setup=lambda place: (place.work / "empty").mkdir()),
    Case("resume-last-without-runs", ("fit", *DEMO, "--ckpt_path", "last"), says="--ckpt_path last: no run with a checkpoint"),
    Case("validate-last-without-runs", ("validate", *DEMO, "--ckpt_path", "last"), says="--ckpt_path last: no run with a checkpoint"),
    # ---- using a finished run: evaluations in a new folder, a reused config starts a new run, resumes continue it
    Case("validate-a-finished-run", ("validate", *DEMO, "--run_dir", "{run}", "--ckpt_path", "last"), code=0, writes=("run/validate-*",)),
    Case("test-a-finished-run", ("test", *DEMO, "--run_dir", "{run}", "--ckpt_path", "last"), code=0, writes=("run/test-*",)),
    Case("predict-a-finished-run", ("predict", *DEMO, "--run_dir", "{run}"), code=0, writes=("run/predict-*",)),
    Case("validate-with-the-runs-config", ("validate", "--config", "{run}/config.yaml"), code=0, writes=("runs", "runs/*"),
         setup=config_of_this_run),
    Case("fit-with-the-runs-config", ("fit", "--config", "{run}/config.yaml", "--model.init_args.lr", "0.1", "--trainer.max_epochs", "1"),
         code=0, writes=("runs", "runs/*"), setup=config_of_this_run, check=new_run_from_scratch),
    Case("resume-a-finished-run", (*RESUME, "--trainer.max_epochs", "3"), code=0, writes=("run/*",), check=continued_in_one_file("run")),
    Case("resume-a-copied-run", ("fit", *DEMO, "--run_dir", "{work}/copy", "--ckpt_path", "last", "--trainer.max_epochs", "3"), code=0,
         setup=lambda place: shutil.copytree(place.work / "run", place.work / "copy"), writes=("copy/*",),
         check=continued_in_one_file("copy")),
    Case("resume-after-a-row-was-cut-short", (*RESUME, "--trainer.max_epochs", "3"), code=0, setup=cut_last_metrics_row,
         writes=("run/*",), check=rows_complete),
    Case("resume-takes-over-a-dead-fits-lock", (*RESUME, "--trainer.max_epochs", "3"), code=0, setup=dead_lock, writes=("run/*",),
         check=says_on_stderr("taking over the lock of {run}")),
    Case("resume-with-another-lr", (*RESUME, "--trainer.max_epochs", "3", "--model.init_args.lr", "0.05"), code=0, writes=("run/*",),
         check=lr_applied),
    # ---- the resume policy: another model is refused before anything is written
    Case("resume-with-another-projector", (*RESUME, "--model.init_args.projector_dims", "[128,64]"),
         says="holds another model than the config asks for: projector_dims [256, 64] -> [128, 64]"),
    Case("resume-with-another-method", (*RESUME, *FROSSL), says="holds another model than the config asks for: method SimCLR -> FroSSL"),
    Case("fit-from-a-checkpoint-of-another-method", (*FIT_NEW, "--ckpt_path", CKPT, *FROSSL), says="method SimCLR -> FroSSL"),
    Case("validate-with-another-projector", ("validate", *DEMO, "--run_dir", "{run}", "--model.init_args.projector_dims", "[128,64]"),
         says="projector_dims [256, 64] -> [128, 64]"),
    Case("resume-with-a-garbage-metrics-file", (*RESUME, "--trainer.max_epochs", "3"), says="{run}/metrics.csv is not a metrics log",
         setup=write("run/metrics.csv", "\x00\x01garbage\n1,2\n")),
    Case("resume-with-max-epochs--1", (*RESUME, "--trainer.max_epochs", "-1"), says="--trainer.max_epochs -1: give a number of epochs"),
    # ---- trainer settings, refused before anything is built or written
    *[Case(f"trainer-{option}-{value}", (*FIT_NEW, f"--trainer.{option}", value), says=f"--trainer.{option} {value}: {says}")
      for option, value, says in [
          ("max_epochs", "-1", "give a number of epochs >= 0 (-1, no limit, only with --trainer.max_steps N"),
          ("max_epochs", "-5", "give a number of epochs >= 0"),
          ("max_steps", "-5", "give a number of steps >= 0, or -1 for no limit"),
          ("devices", "0", "give a number of devices >= 1"),
          ("devices", "-2", "give a number of devices >= 1"),
          ("accumulate_grad_batches", "0", "give a positive whole number"),
          ("check_val_every_n_epoch", "0", "give a positive whole number"),
          ("num_nodes", "0", "give a positive whole number"),
          ("accelerator", "gpu", "no GPU is visible here")]],
    Case("trainer-devices--1-on-cpu", (*FIT_NEW, "--trainer.devices", "-1"),
         says="--trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
    Case("trainer-strategy-nonsense", (*FIT_NEW, "--trainer.strategy", "nonsense"),
         says="--trainer: You selected an invalid strategy name: `strategy='nonsense'`"),
    Case("trainer-precision-3", (*FIT_NEW, "--trainer.precision", "3"), says="--trainer.precision: expected one of 64, 32, 16, "),
    Case("trainer-option-typo", (*FIT_NEW, "--trainer.max_epohcs", "3"),
         says="Trainer has no option 'max_epohcs' (did you mean 'max_epochs'?)"),
    Case("max-epochs-not-a-number", (*FIT_NEW, "--trainer.max_epochs", "x"), says="--trainer.max_epochs: Expected a <class 'int'>"),
    Case("seed-not-a-number", (*FIT_NEW, "--seed_everything", "abc"), says="--seed_everything: expected bool or int, got 'abc'"),
    # ---- config files
    Case("empty-config-file", ("fit", "--config", "{work}/empty.yaml"), says="{work}/empty.yaml is empty", setup=write("empty.yaml", "")),
    Case("config-yaml-syntax-error", ("fit", "--config", "{work}/broken.yaml"),
         says="{work}/broken.yaml, line 4: YAML syntax error: expected ',' or ']', but got '<stream end>' (in a flow sequence from line 3)",
         setup=write("broken.yaml", "model:\n  class_path: ssl_norms.methods.SimCLR\n  init_args: {{lr: [0.1\n")),
    Case("config-file-is-a-list", ("fit", "--config", "{work}/list.yaml"), says="{work}/list.yaml must be a mapping of options, got a list",
         setup=write("list.yaml", "- 1\n- 2\n")),
    Case("config-file-is-binary", ("fit", "--config", "{work}/binary.yaml"), says="{work}/binary.yaml is not a text (YAML) file",
         setup=write("binary.yaml", bytes(range(256)))),
    Case("missing-config-file", ("fit", "--config", "{work}/nope.yaml"), says="--config {work}/nope.yaml: no such file"),
    Case("missing-base-config", ("fit", "--config", "{work}/child.yaml"), says="{work}/child.yaml: config: base.yaml: no such file",
         setup=write("child.yaml", "config: base.yaml\ntrainer.max_epochs: 1\n")),
    Case("missing-data-file", (*FIT_NEW, "--data", "{work}/nope.yaml"), says="--data {work}/nope.yaml: no such file"),
    Case("data-file-syntax-error", (*FIT_NEW, "--data", "{work}/data.yaml"),
         says="{work}/data.yaml, line 2: YAML syntax error: mapping values are not allowed here",
         setup=write("data.yaml", "init_args:\n  batch_size: 8: 9\n")),
    Case("data-file-as-config", ("fit", "--config", "{repo}/configs/data/cifar10.yaml"),
         says="{repo}/configs/data/cifar10.yaml is a data block, not a config: pass it with --data {repo}/configs/data/cifar10.yaml"),
    Case("data-file-stacked-as-config", ("fit", "--config", "{repo}/configs/simclr/cifar10.yaml", "--config",
                                         "{repo}/configs/data/cifar100.yaml"),
         says="{repo}/configs/data/cifar100.yaml is a data block, not a config: pass it with --data {repo}/configs/data/cifar100.yaml"),
    Case("unknown-top-level-key", ("fit", *DEMO, "--config", "{work}/extra.yaml"), says="does not accept option 'foo'",
         setup=write("extra.yaml", "foo: 1\n")),
    # ---- classes and their options
    Case("unknown-method", (*FIT_NEW, "--model", "NoSuchMethod"),
         says="--model: NoSuchMethod does not exist; known: BYOL, FroSSL, IsoLoss, SimCLR, SimSiam"),
    Case("unknown-data", (*FIT_NEW, "--data", "NoSuchData"), says="--data: NoSuchData does not exist; known: CIFAR100DataModule"),
    Case("unknown-callback-class", (*FIT_NEW, "--trainer.callbacks+=ssl_norms.callbacks.NoSuchMonitor"),
         says="ssl_norms.callbacks.NoSuchMonitor does not exist; the project's callbacks: CompileBackbone, CutInit, EmbeddingNormMonitor, GradScale"),
    Case("not-a-callback-class", (*FIT_NEW, "--trainer.callbacks+=ssl_norms.methods.SimCLR"),
         says="--trainer.callbacks: ssl_norms.methods.SimCLR is not one of the classes it takes; the project's callbacks: CompileBackbone, CutInit"),
    Case("method-option-typo", (*FIT_NEW, "--model.init_args.temprature", "0.3"),
         says="--model: SimCLR has no option 'temprature' (did you mean 'temperature'?)"),
    Case("data-option-typo", (*FIT_NEW, "--data.init_args.batchsize", "8"),
         says="--data: SyntheticLatentClasses has no option 'batchsize' (did you mean 'batch_size'?)"),
    Case("gradscale-power-nan", (*FIT_NEW, '--trainer.callbacks+={{"class_path": "ssl_norms.callbacks.GradScale", '
                                           '"init_args": {{"power": NaN}}}}'),
         says="--trainer.callbacks: GradScale power: expected a finite number, got NaN"),
    Case("gradscale-power-not-a-number", (*FIT_NEW, "--trainer.callbacks+=ssl_norms.callbacks.GradScale", "--trainer.callbacks.power",
                                          "abc"), says="--trainer.callbacks: GradScale power: Expected a <class 'float'>. Got value: abc"),
    Case("temperature-not-a-number", (*FIT_NEW, "--model.init_args.temperature", "abc"),
         says="--model.init_args.temperature: Expected a <class 'float'>. Got value: abc"),
    Case("negative-lr", (*FIT_NEW, "--model.init_args.lr", "-1"), says="lr must be a finite number >= 0, got -1.0"),
    Case("zero-temperature", (*FIT_NEW, "--model.init_args.temperature", "0"), says="temperature must be > 0, got 0.0"),
    Case("zero-size-projector", (*FIT_NEW, "--model.init_args.projector_dims", "[0]"),
         says="projector_dims must list layer widths >= 1, got [0]"),
    Case("batch-larger-than-the-data", (*FIT_NEW, "--data.init_args.batch_size", "100000"),
         says="the training set has 512 samples, fewer than batch_size=100000: lower --data.init_args.batch_size"),
    Case("batch-size-zero", (*FIT_NEW, "--data.init_args.batch_size", "0"), says="batch_size and eval_batch_size must be >= 1"),
    Case("negative-num-workers", (*FIT_NEW, "--data.init_args.num_workers", "-1"), says="num_workers >= 0"),
    Case("three-views-for-simclr", ("fit", *IMAGES, "--data.init_args.num_views", "3", "--run_dir", "{work}/new"), setup=images,
         says="SimCLR uses exactly 2 views, got 3: set --data.init_args.num_views 2"),
    Case("vit-on-32-px-images", ("fit", *IMAGES, "--model.init_args.backbone", "vit_tiny_patch16_224", "--run_dir", "{work}/new"),
         setup=images,  # refused before the run starts: no run folder
         says="backbone vit_tiny_patch16_224 takes 224x224 images, got 32x32"),
    Case("missing-data-root", ("fit", "--config", "{repo}/configs/simclr/cifar10.yaml", "--data.init_args.root", "{work}/nowhere"),
         says="{work}/nowhere (searched cifar-10-batches-py/ and {{cifar10-jpg,cifar10,.}}/{{train,test}}/<class>/); set the root "
              "with --data.init_args.root or $SSL_NORMS_DATA, or pass --data.init_args.download true"),
    # ---- working commands that must say something
    Case("warmup-longer-than-training", (*FIT_NEW, "--trainer.max_epochs", "1", "--model.init_args.warmup_epochs", "5"), code=0,
         writes=("new", "new/*"), check=says_on_stderr("warmup_epochs 5 is longer than training")),
    Case("single-class-data", (*FIT_NEW, "--data.init_args.num_classes", "1", "--data.init_args.class_weights", "null",
                               "--trainer.max_epochs", "1"), code=0, writes=("new", "new/*"), check=says_on_stderr("k-NN")),
    Case("damaged-decoded-image-cache", ("fit", *IMAGES, "--run_dir", "{work}/second"), code=0,
         setup=(images, ("fit", *IMAGES, "--run_dir", "{work}/first"), damage_caches), writes=("second", "second/*"),
         check=says_on_stderr("the decoded-image cache {work}/cache/", "is unreadable", "rebuilding it")),
    # ---- faults while running
    Case("internal-fault", (*FIT_NEW, "--trainer.callbacks+=test_faults.Boom"), code=1,
         says="ssl-norms: internal error: RuntimeError: boom (SSL_NORMS_DEBUG=1 for the traceback)"),
    Case("internal-fault-debug", (*FIT_NEW, "--trainer.callbacks+=test_faults.Boom"), code=1, one_line=False,
         says='raise RuntimeError("boom")', env={"SSL_NORMS_DEBUG": "1"}),
    Case("disk-full-during-a-checkpoint", (*RESUME, "--trainer.max_epochs", "3"), code=1, trains=True, file_size_limit=500_000,
         says="could not save checkpoint {run}/checkpoints/last.ckpt (File too large); the previous last.ckpt is intact",
         writes=("run/metrics.csv", "run/run_record.yaml", "run/config.yaml", "run/hparams.yaml")),
    Case("non-finite-loss", (*FIT_NEW, "--model.init_args.lr", "1e30", "--model.init_args.warmup_epochs", "0"), code=3, trains=True,
         says="non-finite loss (nan) at global step 1", writes=("new", "new/*")),
    # ---- the other commands
    Case("unknown-command", ("trian",), says="unknown command 'trian'; commands: fit, validate, test, predict, sweep"),
    Case("sweep-reversed-index-range", ("sweep", "{work}/sweep.yaml", "--index", "1-0"), says="--index 1-0: a range runs from low to high",
         setup=write("sweep.yaml", SWEEP)),
    Case("sweep-index-out-of-range", ("sweep", "{work}/sweep.yaml", "--index", "7"), setup=write("sweep.yaml", SWEEP),
         says="--index 7 is out of range: the sweep has 2 points (0-1)"),
    Case("sweep-label-dot-dot", ("sweep", "{work}/sweep.yaml", "--list"), says="label '..' must name one directory",
         setup=write("sweep.yaml", "name: s\nconfig: {repo}/configs/demo.yaml\npoints:\n  - {{label: '..', model.init_args.lr: 0.1}}\n")),
    Case("missing-sweep-file", ("sweep", "{work}/nope.yaml", "--list"), says="sweep file {work}/nope.yaml does not exist"),
    Case("sweep-point-with-a-bad-fit-argument", ("sweep", "{work}/sweep.yaml", "--index", "0", "--", "--trainer.max_epochs", "-5"),
         says="--trainer.max_epochs -5: give a number of epochs", setup=write("sweep.yaml", SWEEP)),
    Case("simulate-negative-num-pairs", ("simulate", "fig2a", "--num_pairs", "-5"), says="--num_pairs"),
    Case("simulate-nan-lr", ("simulate", "fig2a", "--lr", "nan"), says="--lr"),
    Case("simulate-zero-dim", ("simulate", "theory_checks", "--dim", "0"), says="--dim"),
    Case("simulate-num-pairs-not-a-number", ("simulate", "fig2a", "--num_pairs", "abc"),
         says="--num_pairs: Expected a <class 'int'>. Got value: abc"),
    Case("simulate-unknown", ("simulate", "fig9"), says="invalid choice: 'fig9' (choose from 'fig2a'"),
]


# ---- running a case ------------------------------------------------------------------------------
ALWAYS_ALLOWED = ("cache", "cache/*")  # the decoded-image cache is no run's data


@dataclass(frozen=True)
class Outcome:
    case: Case
    place: Place
    result: Result
    unexpected: list[str]  # case-folder entries changed although the case may not change them
    lost: list[str]  # of those, files that existed before (changed or removed)

    @property
    def lines(self) -> list[str]:
        """The stderr lines; for a case that trains, without the warnings and notes printed while it ran."""
        lines = self.result.stderr.splitlines()
        return while_running(lines) if self.case.trains else lines

    def expected_line(self) -> str:
        return self.place.format(self.case.says)


WARNING_LINE = re.compile(r"\S+\.py:\d+: ")  # Python's warning format: "file.py:12: Category: message"


def while_running(lines: list[str]) -> list[str]:
    """``lines`` without what a run prints while it runs: warnings (a ``file.py:N: ...`` line and the
    indented source lines after it) and notes (``ssl-norms: `` lines that are not errors)."""
    kept, in_warning = [], False
    for line in lines:
        in_warning = bool(WARNING_LINE.match(line)) or in_warning and line.startswith((" ", "\t"))
        note = line.startswith("ssl-norms: ") and not line.startswith(("ssl-norms: error: ", "ssl-norms: internal error: "))
        if not in_warning and not note:
            kept.append(line)
    return kept


def run_case(runner: Runner, case: Case, finished: Path, work: Path) -> Outcome:
    """``case`` in the new folder ``work`` holding a copy of the run ``finished`` at ``work/run``."""
    place = Place(work, runner.pythonpath)
    shutil.copytree(finished, work / "run")
    if "{read_only}" in " ".join(case.argv) and os.geteuid() != 0:
        place.read_only.mkdir(mode=0o555)
    env = {"SSL_NORMS_RUNS": str(work / "runs"), "SSL_NORMS_CACHE": str(work / "cache")}
    for step in case.setup if isinstance(case.setup, tuple) else (case.setup,):
        if callable(step):
            step(place)
        else:
            prepared = runner.run([place.format(word) for word in step], work, env)
            assert prepared.code == 0, prepared.stderr[-3000:]
    before = snapshot(work)
    env.update(case.env)
    result = runner.run([place.format(word) for word in case.argv], work, env, case.file_size_limit)
    after = snapshot(work)
    unexpected = changed_entries(before, after, tuple(place.format(p) for p in (*ALWAYS_ALLOWED, *case.writes)))
    return Outcome(case, place, result, unexpected, [name for name in unexpected if name in before])


def verdict(outcome: Outcome) -> tuple[str, str]:
    """What a user saw, and why: ``clean`` (what the case expects), ``data-lost`` (a file of the case
    folder changed or vanished), ``traceback``, ``silent-wrong`` (exit 0 instead of an error, or a
    working command that did something else), ``noisy`` (the error among other stderr lines) or
    ``misleading`` (one line, but another exit code or message, stray files, or a refusal of what
    should work)."""
    case, result = outcome.case, outcome.result
    seen = f"exit {result.code}, stderr {outcome.lines[-3:]}"
    if outcome.lost:
        return "data-lost", f"changed or removed: {outcome.lost[:5]}; {seen}"
    if "Traceback (most recent call last)" in result.stderr and case.one_line:
        return "traceback", seen
    if case.code != 0 and result.code == 0:
        return "silent-wrong", f"no error; {seen}"
    if case.code == 0 and result.code != 0:  # refused what should work
        return ("misleading" if len(outcome.lines) == 1 else "noisy"), f"failed; {seen}"
    if case.code == 0:
        if outcome.unexpected:
            return "silent-wrong", f"wrote {outcome.unexpected[:5]}; {seen}"
        try:
            if case.check is not None:
                case.check(outcome.place, result)
        except Exception as err:  # noqa: BLE001  (a check that finds nothing to check fails too)
            return "silent-wrong", f"check failed: {type(err).__name__}: {err}; {seen}"
        return "clean", ""
    problems = [f"exit {result.code}, expected {case.code}"] if result.code != case.code else []
    if outcome.expected_line() not in result.stderr:
        problems.append(f"stderr does not say {outcome.expected_line()!r}")
    if outcome.unexpected:
        problems.append(f"wrote {outcome.unexpected[:5]}")
    one_line = len(outcome.lines) == 1 and outcome.lines[0].startswith("ssl-norms: ")
    if not problems and (one_line or not case.one_line):
        return "clean", ""
    return ("misleading" if one_line else "noisy"), f"{'; '.join(problems) or 'more than one line'}; {seen}"


# ---- the tests -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner() -> Runner:
    runner = Runner(fork=not os.environ.get("SSL_NORMS_FAULTS_EXEC"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def finished(runner, tmp_path_factory) -> Path:
    """One finished two-epoch run of the tiny demo (global step 16), made by the runner like every case."""
    root = tmp_path_factory.mktemp("finished")
    place = Place(root, REPO)
    argv = ["fit", *map(place.format, DEMO), "--run_dir", str(root / "run"), "--trainer.enable_progress_bar", "false"]
    result = runner.run(argv, root, {"SSL_NORMS_RUNS": str(root / "runs")})
    assert result.code == 0, result.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def outcomes(request, runner, finished, tmp_path_factory) -> dict[str, Future]:
    """Every selected case started at once, two at a time per core; each test waits for its own."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    root = tmp_path_factory.mktemp("cases")
    pool = ThreadPoolExecutor(2 * (os.cpu_count() or 1))
    yield {case.name: pool.submit(run_case, runner, case, finished, root / f"{i:03d}")
           for i, case in enumerate(selected)}
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_fault(case, outcomes):
    if case.name == "trainer-accelerator-gpu" and _cuda_available():
        pytest.skip("a GPU is visible")
    outcome = outcomes[case.name].result(TIMEOUT_S)
    label, why = verdict(outcome)
    assert label == "clean", f"{label}: {why}"
    shutil.rmtree(outcome.place.work, ignore_errors=True)  # a failing case's folder stays for a look


def test_the_cases_are_many_and_distinct():
    assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)


def test_forked_and_fresh_processes_agree(runner, finished, tmp_path):
    """The fork server runs a command as ``python -m ssl_norms.cli`` would: same code and stderr."""
    fresh = Runner(fork=False)
    for case in (case for case in CASES if case.name in ("method-option-typo", "second-fit-on-a-locked-run")):
        forked, started = (run_case(r, case, finished, tmp_path / f"{case.name}-{r.fork}") for r in (runner, fresh))
        assert (forked.result.code, forked.lines) == (started.result.code, [line.replace(f"{case.name}-False", f"{case.name}-True")
                                                                           for line in started.lines])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
