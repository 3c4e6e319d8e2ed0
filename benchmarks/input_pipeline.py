"""Input pipeline versus training step: augmented images/s next to the step's images/s, same batch.

Prints, in one run on the same machine state:

* images/s of the SimCLR augmentation (2 views per image) as the training DataLoader delivers it:
  the per-sample torchvision v2 pipeline (``InMemoryImages`` + ``simclr_augmentation``) and the
  batched pipeline the DataModules use (``AugmentedViews``), each with ``--workers`` workers and
  in the main process (0 workers);
* images/s of one SimCLR training step (forward, backward, SGD) of ResNet-18 with the CIFAR stem at
  each ``--widths``, on batches already in memory;
* the ratio pipeline / step: above 1 the model waits for nothing, below 1 the data is the bottleneck.

    python benchmarks/input_pipeline.py                        # CIFAR-10 from $SSL_NORMS_DATA, else random images
    python benchmarks/input_pipeline.py --batch 256 --workers 2 --widths 64,16,4 --batches 12 --steps 3

Numbers on a shared machine are noisy; each figure is the median of ``--rounds`` timings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from ssl_norms.data import CIFAR10DataModule
from ssl_norms.data.augment import BatchedSimCLRAugmentation
from ssl_norms.data.datasets import AugmentedViews, InMemoryImages
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, simclr_augmentation
from ssl_norms.methods import SimCLR


def cifar_images(count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """uint8 CIFAR-10 training images (from the data root) or random ones when there are none."""
    data = CIFAR10DataModule(num_workers=0)
    try:
        images, labels = data.load_split(train=True)
        return images[:count], labels[:count], f"CIFAR-10 from {data.root}"
    except FileNotFoundError:
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
        return images, torch.randint(0, 10, (count,)), "random 32x32 images (no CIFAR-10 under the data root)"


def loader_rate(dataset, batch: int, workers: int, batches: int) -> float:
    """Augmented images/s delivered by a shuffling DataLoader (after its first batch: worker start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=False,
                        prefetch_factor=2 if workers else None)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch / (time.perf_counter() - start)
    del iterator
    return rate


def step_rate(width: int, batch: int, steps: int) -> float:
    """images/s of SimCLR training steps of ResNet-18 (CIFAR stem) at ``width`` on in-memory views."""
    torch.manual_seed(0)
    model = SimCLR(backbone="resnet18", cifar_stem=True, backbone_width=width, projector_dims=[2048, 2048, 256] if width == 64 else [512, 128]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    views = [torch.randn(batch, 3, 32, 32) for _ in range(2)]

    def step():
        loss = model.ssl_step(views).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocator, kernels)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per pipeline measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per width")
    parser.add_argument("--widths", default="64,16", help="ResNet-18 first-stage widths (64 = standard)")
    parser.add_argument("--step-threads", default=str(torch.get_num_threads()), help="intra-op threads of the training step, e.g. 2,1")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)

    images, labels, source = cifar_images(args.batch * (args.batches + 2) * 2)
    per_sample = InMemoryImages(images, labels, simclr_augmentation(32, CIFAR10_MEAN, CIFAR10_STD), num_views=2)
    batched = AugmentedViews(images, labels, BatchedSimCLRAugmentation(32, CIFAR10_MEAN, CIFAR10_STD), num_views=2)
    print(f"data: {source}; batch {args.batch}; torch threads {torch.get_num_threads()}; {args.rounds} round(s), medians")

    def median(fn):
        return statistics.median(fn() for _ in range(args.rounds))

    pipelines = {
        f"per-sample v2, {args.workers} workers": median(lambda: loader_rate(per_sample, args.batch, args.workers, args.batches)),
        f"batched, {args.workers} workers": median(lambda: loader_rate(batched, args.batch, args.workers, args.batches)),
        "batched, main process": median(lambda: loader_rate(batched, args.batch, 0, args.batches)),
    }
    default_threads, steps = torch.get_num_threads(), {}
    for threads in (int(t) for t in args.step_threads.split(",")):
        torch.set_num_threads(threads)
        for w in args.widths.split(","):
            steps[f"w{w}/{threads}t"] = median(lambda w=w: step_rate(int(w), args.batch, args.steps))
    torch.set_num_threads(default_threads)

    print(f"\n{'pipeline (augmented images/s, 2 views each)':<46}{'img/s':>9}" + "".join(f"{'/ ' + key:>13}" for key in steps))
    for name, rate in pipelines.items():
        print(f"{name:<46}{rate:>9.0f}" + "".join(f"{rate / s:>12.1f}x" for s in steps.values()))
    print(f"\n{'training step (ResNet-18 CIFAR stem, SimCLR)':<46}{'img/s':>9}")
    for key, rate in steps.items():
        width, threads = key.split("/")
        print(f"{f'width {width[1:]}, {threads[:-1]} thread(s)':<46}{rate:>9.0f}")


if __name__ == "__main__":
    main()
