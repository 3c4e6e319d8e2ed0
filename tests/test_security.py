"""A checkpoint (or label file) cannot run code: every load is ``weights_only=True``.

The hostile file's unpickling would run ``touch <marker>``; for fit, validate, analyze and every
loader function the marker must never appear and the command must fail with one line.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_DEMO
from ssl_norms import runs
from ssl_norms.analysis.human_labels import load_noisy_labels
from ssl_norms.analysis.loading import TrainedRun, load_model
from ssl_norms.cli import run_lightning_cli
from ssl_norms.run_hooks import AtomicCheckpointIO
from ssl_norms.runs import RunError, newest_checkpoint, read_checkpoint
from test_run_records import assert_one_line_error, cli_error, cli_subprocess, file_hashes

DEMO_CONFIG = {
    "model": {"class_path": "ssl_norms.methods.SimCLR", "init_args": {"backbone": "mlp", "input_dim": 64}},
    "data": {"class_path": "ssl_norms.data.SyntheticLatentClasses", "init_args": {"train_samples": 512, "val_samples": 256}},
}


class Payload:
    """Unpickling it runs ``touch <marker>``: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the hostile file ran its code"


@pytest.fixture
def hostile_run(tmp_path, marker) -> Path:
    """A run dir whose ``checkpoints/last.ckpt`` carries the payload in its hyperparameters."""
    run_dir = tmp_path / "hostile"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(DEMO_CONFIG))
    torch.save({"state_dict": {}, "global_step": 99, "epoch": 9,
                "hyper_parameters": {"_class_path": "ssl_norms.methods.SimCLR", "lr": Payload(marker)}},
               run_dir / "checkpoints" / "last.ckpt")
    return run_dir


def test_the_payload_is_live(hostile_run, tmp_path):
    """The test file really runs code when unpickled without weights_only (so the tests below can fail)."""
    probe = tmp_path / "probe.ckpt"
    torch.save({"x": Payload(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()


@pytest.mark.parametrize("command", [
    ["fit", *TINY_DEMO, "--run_dir", "{tmp}/new", "--ckpt_path", "{ckpt}"],
    ["validate", *TINY_DEMO, "--ckpt_path", "{ckpt}"],
    ["analyze", "knn_by_norm", "--ckpt", "{ckpt}"],
], ids=["fit", "validate", "analyze"])
def test_commands_refuse_a_hostile_checkpoint(hostile_run, marker, tmp_path, command):
    ckpt = hostile_run / "checkpoints" / "last.ckpt"
    before = file_hashes(hostile_run)
    # torch's switch back to unsafe loading does not apply: every load passes weights_only=True itself
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    result = cli_subprocess([word.format(tmp=tmp_path, ckpt=ckpt) for word in command], cwd=tmp_path, env=env)
    assert_one_line_error(result, 2, f"refusing to load {ckpt}: it holds posix.system, which is not plain data")
    assert file_hashes(hostile_run) == before and not (tmp_path / "new").exists()


def test_resuming_a_run_whose_checkpoint_is_hostile(hostile_run, marker, capsys):
    before = file_hashes(hostile_run)
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(hostile_run), "--ckpt_path", "last"], capsys)
    assert code == 2 and f"--ckpt_path last: no readable checkpoint in {hostile_run}: refusing to load" in line
    assert file_hashes(hostile_run) == before


def test_every_loader_refuses_a_hostile_checkpoint(hostile_run, marker):
    ckpt = hostile_run / "checkpoints" / "last.ckpt"
    for load in (read_checkpoint, load_model, TrainedRun.load, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(RunError, match="refusing to load .*posix.system"):
            load(ckpt)
    assert newest_checkpoint(hostile_run) is None  # skipped with a note, never loaded


def test_human_label_files_load_as_plain_arrays(tmp_path, marker):
    labels = {"clean_label": np.arange(10) % 3, "aggre_label": np.arange(10) % 2}
    torch.save(labels, tmp_path / "CIFAR-10_human.pt")
    clean, human = load_noisy_labels(tmp_path / "CIFAR-10_human.pt", "aggre_label")
    assert clean.tolist() == labels["clean_label"].tolist() and human.tolist() == labels["aggre_label"].tolist()
    torch.save({**labels, "aggre_label": Payload(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="refusing to load .*posix.system"):
        load_noisy_labels(tmp_path / "hostile.pt", "aggre_label")


def test_the_real_cifar10n_file_loads_with_weights_only():
    path = Path(os.environ.get("SSL_NORMS_DATA") or "data") / "cifar10n" / "CIFAR-10_human.pt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    clean, human = load_noisy_labels(path, "aggre_label")
    assert len(clean) == len(human) == 50_000


def test_the_image_cache_refuses_a_hostile_file(tmp_path, marker, monkeypatch, image_folder):
    from ssl_norms.data import image_folder as module

    files = sorted((image_folder / "train").rglob("*.png"))[:2]
    torch.save({"images": Payload(marker), "labels": torch.zeros(2)}, tmp_path / "cache.pt")
    monkeypatch.setattr(module, "_cache_path", lambda *args: tmp_path / "cache.pt")
    try:
        module.load_images(files, [0, 0], "hostile")
    except Exception:  # refusing is enough here; how the cache reports it is the data module's business
        pass


@pytest.mark.parametrize("content", [b"", b"just some text\n", b"PK\x03\x04" + b"\x00" * 40, "truncated"],
                         ids=["empty", "text", "garbage-zip", "truncated"])
@pytest.mark.parametrize("command", ["fit", "validate", "analyze"])
def test_damaged_checkpoints_are_one_line_errors(tmp_path, capsys, content, command):
    run_dir = tmp_path / "damaged"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(DEMO_CONFIG))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 1}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:1500])
    else:
        ckpt.write_bytes(content)
    argv = {"fit": ["fit", *TINY_DEMO, "--run_dir", str(tmp_path / "new"), "--ckpt_path", str(ckpt)],
            "validate": ["validate", *TINY_DEMO, "--ckpt_path", str(ckpt)],
            "analyze": ["analyze", "knn_by_norm", "--ckpt", str(ckpt)]}[command]
    code, line = cli_error(argv, capsys)
    assert code == 2 and f"{ckpt} is not a readable checkpoint (truncated, empty or not a PyTorch file" in line
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml"]


def test_lightning_loads_through_the_weights_only_checkpoint_io(tmp_path, capsys):
    cli = run_lightning_cli(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--run_dir", str(tmp_path / "run")])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    code, line = cli_error(["fit", *TINY_DEMO, "--run_dir", str(tmp_path / "run"), "--ckpt_path", "last", "--weights_only", "false"], capsys)
    assert code == 2 and "--weights_only false is not supported" in line


def test_a_moved_checkpoint_is_still_safe_to_load(hostile_run, tmp_path, marker):
    """Renaming does not help a hostile file: hpc_ckpt_*.ckpt is read the same way."""
    shutil.move(hostile_run / "checkpoints" / "last.ckpt", hostile_run / "hpc_ckpt_1.ckpt")
    assert runs.checkpoint_files(hostile_run) == [hostile_run / "hpc_ckpt_1.ckpt"]
    assert newest_checkpoint(hostile_run) is None
