"""InfoNCE with all_gather_with_grad under 2-process gloo equals the 1-process full-batch loss and grads."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist

from conftest import spawn_ranks
from ssl_norms.distributed import all_gather_with_grad
from ssl_norms.losses import info_nce

WORLD_SIZE = 2
PER_RANK = 4
IN_DIM, OUT_DIM = 6, 3
TEMPERATURE = 0.3
TIMEOUT_S = 60.0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = (WORLD_SIZE * PER_RANK, IN_DIM)
    return torch.randn(size, generator=g), torch.randn(size, generator=g)


def _encoder() -> torch.nn.Linear:
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, OUT_DIM)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=30))
    try:
        encoder = _encoder()
        x1, x2 = _batch()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss = info_nce(encoder(x1[mine]), encoder(x2[mine]), TEMPERATURE, gather=all_gather_with_grad)
        loss.backward()
        # What DDP does: average the loss (for logging) and every parameter gradient over ranks.
        for param in encoder.parameters():
            dist.all_reduce(param.grad)
            param.grad /= WORLD_SIZE
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD_SIZE
        # Without gathering, each rank only sees its own negatives: a different loss.
        local_loss = info_nce(encoder(x1[mine]), encoder(x2[mine]), TEMPERATURE).detach()
        dist.all_reduce(local_loss)
        local_loss /= WORLD_SIZE
        _, offset = all_gather_with_grad(torch.zeros(PER_RANK, 1))
        result = {
            "loss": mean_loss,
            "local_loss": local_loss,
            "offset": offset,
            "grads": {name: p.grad.clone() for name, p in encoder.named_parameters()},
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # Tear down together: a rank leaving while its peer still talks to it can abort gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_info_nce_ddp_matches_single_process(tmp_path: Path) -> None:
    spawn_ranks(_worker, str(tmp_path), world_size=WORLD_SIZE, timeout_s=TIMEOUT_S)

    encoder = _encoder()
    x1, x2 = _batch()
    reference = info_nce(encoder(x1), encoder(x2), TEMPERATURE)
    reference.backward()
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["offset"] == rank * PER_RANK
        torch.testing.assert_close(result["loss"], reference.detach(), rtol=0, atol=1e-5)
        for name, param in encoder.named_parameters():
            torch.testing.assert_close(result["grads"][name], param.grad, rtol=0, atol=1e-5)
        assert abs(result["local_loss"].item() - reference.item()) > 1e-3
