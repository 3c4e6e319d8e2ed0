"""Shared fixtures: isolated run/cache dirs, generated image fixtures, the real data root."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Every test writes runs under its own tmp dir and never inherits a run dir."""
    monkeypatch.setenv("SSL_NORMS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("SSL_NORMS_RUN_DIR", "")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("SSL_NORMS_HELP_CACHE", "0")  # tests/test_help_cache.py turns it on, in its own cache dir
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)


@pytest.fixture
def real_data_root() -> Path:
    """``$SSL_NORMS_DATA`` when it holds the CIFAR-10 copy; skips otherwise."""
    root = os.environ.get("SSL_NORMS_DATA")
    if not root or not (Path(root) / "cifar10-jpg" / "train").is_dir():
        pytest.skip("real data not available: set SSL_NORMS_DATA to a folder with cifar10-jpg/")
    return Path(root)


def write_image_folder(root: Path, splits: dict[str, int], num_classes: int = 3, size: int = 32, seed: int = 0) -> Path:
    """``root/<split>/<class_k>/NNNN.png`` with ``splits[split]`` random images per class."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    for split, per_class in splits.items():
        for c in range(num_classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # classes differ in mean colour so a k-NN has something to find
                image = (torch.rand(3, size, size, generator=g) * 128 + 40 * c).clamp(0, 255).to(torch.uint8)
                write_png(image, str(folder / f"{i:04d}.png"))
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "folder_data", {"train": 24, "test": 8})


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def metric_values(path: Path, key: str) -> list[float]:
    return [float(row[key]) for row in read_metrics_csv(path) if row.get(key)]


TINY_DEMO = [
    "--config", str(REPO / "configs" / "demo.yaml"),
    "--data.init_args.train_samples", "512",
    "--data.init_args.val_samples", "256",
    "--data.init_args.batch_size", "64",
    "--trainer.max_epochs", "2",
    "--trainer.log_every_n_steps", "2",
]

TINY_RESNET = [
    "--model.init_args.backbone_width", "4",
    "--model.init_args.projector_dims", "[32,16]",
    "--data.init_args.num_workers", "0",
    "--data.init_args.eval_batch_size", "64",
    "--trainer.log_every_n_steps", "1",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.accelerator", "cpu",
]


def as_launched_rank(rank: int, port: int, world_size: int = 2) -> None:
    """What srun/torchrun do for one process of a ``world_size`` job: its rank and the gloo rendezvous
    (127.0.0.1:port) in the environment; one thread and a short group timeout, so a hang fails fast."""
    import datetime

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world_size),
                       "NODE_RANK": "0", "LOCAL_RANK": str(rank), "RANK": str(rank)})
    torch.set_num_threads(1)
    import lightning.fabric.utilities.distributed as fabric_distributed

    fabric_distributed.default_pg_timeout = datetime.timedelta(seconds=60)


def leave_process_group() -> None:
    """End a spawned rank in step with the others: a rank whose gloo peers already exited can abort
    (SIGABRT) while its process group is torn down at interpreter exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def spawn_ranks(worker, *args, world_size: int = 2, timeout_s: float = 180) -> None:
    """Run ``worker(rank, port, *args)`` in ``world_size`` spawned processes (the gloo rendezvous is
    127.0.0.1:port) and wait; fails the test when a worker raises or the group hangs past the timeout."""
    import socket
    import time

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(worker, args=(port, *args), nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):  # raises if a worker failed
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} spawned ranks did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
