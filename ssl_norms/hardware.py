"""Defaults chosen from the hardware when a run leaves them open: the precision, the memory format of
convolutional backbones, and how the CPU cores are split between data loading and the step.

The precision and the workers are each stated in one line (``ssl_norms.runs.note``); an explicit
setting always wins (``--trainer.precision``, ``--data.init_args.num_workers``, ``SSLMethod.channels_last``).
Measurements behind the rules: benchmarks/README.md.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# With this many CPU cores or fewer the step keeps every core and two DataLoader workers share them:
# the workers sleep most of the time, and augmenting in the training process instead was slower
# (ResNet-18 width 16 on 2 cores: 362-394 pairs/s in process, 425-443 with 2 workers; width 64 equal).
FEW_CORES = 4


def cpu_cores() -> int:
    """CPU cores this process may run on (a SLURM or taskset limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cuda(accelerator: str | None) -> bool:
    return str(accelerator or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def fast_bf16(accelerator: str | None = "auto") -> str | None:
    """Why bf16 matrix maths is fast on the device ``accelerator`` resolves to, or None when it is not:
    CUDA GPUs with bf16 support, CPUs with AMX tiles or AVX-512 bf16 instructions."""
    if _cuda(accelerator):
        return f"{torch.cuda.get_device_name()} supports bf16" if torch.cuda.is_bf16_supported() else None
    if torch.cpu._is_amx_tile_supported():
        return "the CPU has AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "the CPU has AVX-512 bf16"
    return None


def default_precision(accelerator: str | None = "auto") -> tuple[str, str]:
    """(precision, one-line reason) for a run that sets no ``trainer.precision``."""
    why = fast_bf16(accelerator)
    if why:
        return "bf16-mixed", f"precision bf16-mixed ({why}; --trainer.precision 32-true to turn it off)"
    return "32-true", "precision 32-true (no fast bf16 on this device)"


def uses_convolutions(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def channels_last_is_faster(backbone: nn.Module, device: str) -> bool:
    """A convolutional backbone on a CPU (oneDNN's native layout) or a GPU with tensor cores."""
    if not uses_convolutions(backbone):
        return False
    if device == "cuda":
        return torch.cuda.get_device_capability() >= (7, 0)
    return device == "cpu"


def use_channels_last(model: nn.Module, backbone: nn.Module) -> None:
    """Every 4-d weight of ``model`` (its EMA target networks too) and the 4-d inputs of ``backbone``
    in channels_last (NHWC); the values, the state dict and checkpoints are unchanged. Calling it
    again changes nothing."""
    model.to(memory_format=torch.channels_last)
    if _to_channels_last not in backbone._forward_pre_hooks.values():
        backbone.register_forward_pre_hook(_to_channels_last)


def loader_split(cores: int | None = None, threads: int | None = None) -> tuple[int, int, str]:
    """(DataLoader workers, torch intra-op threads, one-line reason) for a DataModule that sets no
    ``num_workers``: one core augments in the training process; up to :data:`FEW_CORES` the step gets
    every core next to 2 workers; on more, workers take a quarter of the cores (2 to 8) and the step
    the rest. The threads never exceed ``threads`` (torch's default: one per physical core)."""
    cores, threads = cores or cpu_cores(), threads or torch.get_num_threads()
    if cores == 1:
        return 0, 1, "1 CPU core: augmenting in the training process (--data.init_args.num_workers to change)"
    workers = 2 if cores <= FEW_CORES else min(8, max(2, cores // 4))
    threads = max(1, min(threads, cores if cores <= FEW_CORES else cores - workers))
    return workers, threads, f"{cores} CPU cores: {workers} DataLoader workers, {threads} torch threads for the step (--data.init_args.num_workers to change)"
