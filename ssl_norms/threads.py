"""One intra-op thread for work made of many small kernels."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the block (or, as a decorator, the function) on one intra-op thread, then restore the count.

    Many small kernels (batched CPU augmentation, the simulations' step loops on small tensors) gain
    nothing from intra-op parallelism and lose to its synchronisation, badly so on a busy machine
    (see benchmarks/README.md). DataLoader workers run on one thread anyway."""
    import torch  # here, not above: a decorated function's module stays cheap to import

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
