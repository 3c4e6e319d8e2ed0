"""Training throughput: a bare PyTorch loop vs ``Trainer.fit`` with the monitors attached.

Both run the same SimCLR step (same module, same optimizer and schedule, same DataLoader) and are
interleaved (bare, fit, bare, fit, ...) so machine noise hits both alike; the printed ratios are
what matters, not absolute images/s. Also measures EmbeddingNormMonitor's cost per step.

    python benchmarks/throughput.py                      # CIFAR-10 from $SSL_NORMS_DATA, else random images
    python benchmarks/throughput.py --width 16 --batch 128 --steps 30 --rounds 3 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from ssl_norms.callbacks import EmbeddingNormMonitor, OnlineKNN
from ssl_norms.data import CIFAR10DataModule
from ssl_norms.data.datasets import InMemoryImages
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_transform, simclr_augmentation
from ssl_norms.methods import SimCLR


def make_datamodule(args) -> CIFAR10DataModule:
    data = CIFAR10DataModule(batch_size=args.batch, num_workers=args.workers, max_train_samples=args.batch * (args.steps + args.warmup) * 2, max_val_samples=512)
    try:
        data.setup()
    except FileNotFoundError:  # no CIFAR-10 here: random images through the same pipeline
        images = torch.randint(0, 256, (args.batch * (args.steps + args.warmup) * 2, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (len(images),))
        data.train_set = InMemoryImages(images, labels, simclr_augmentation(32, CIFAR10_MEAN, CIFAR10_STD), num_views=2)
        data.bank_set = data.val_set = InMemoryImages(images[:512], labels[:512], eval_transform(CIFAR10_MEAN, CIFAR10_STD))
    return data


def make_model(args) -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(backbone="resnet18", cifar_stem=True, backbone_width=args.width, projector_dims=[512, 128], warmup_epochs=0)


def autocast(args):
    enabled = args.precision == "bf16-mixed"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def bare_loop(args, data) -> float:
    """images/s of a hand-written loop: forward, backward, SGD step, lr schedule."""
    model = make_model(args).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = iter(data.train_dataloader())
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        batch = next(batches)
        with autocast(args):
            loss = model.ssl_step(batch["views"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return args.steps * args.batch / (time.perf_counter() - start)


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_fit(args, data) -> float:
    """images/s of Trainer.fit with EmbeddingNormMonitor and OnlineKNN attached (validation is
    outside the timed window: it runs at epoch ends, and the window is inside one epoch)."""
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=args.warmup + args.steps, accelerator="cpu", precision=args.precision,
            logger=CSVLogger(tmp), log_every_n_steps=args.log_every, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, callbacks=[EmbeddingNormMonitor(), OnlineKNN(k=20), timer],
        )
        trainer.fit(make_model(args), data)
    # timer.end is after the last step's callbacks: the window covers (steps) full iterations
    return args.steps * args.batch / (timer.end - timer.start)


def monitor_cost(args, data) -> tuple[float, float]:
    """Seconds of one monitor statistics call vs one training step (same batch, same model)."""
    model = make_model(args).train()
    batch = next(iter(data.train_dataloader()))
    monitor = EmbeddingNormMonitor()
    step_times, monitor_times = [], []
    for _ in range(5):
        start = time.perf_counter()
        with autocast(args):
            step = model.ssl_step(batch["views"])
        step.loss.backward()
        step_times.append(time.perf_counter() - start)
        detached = [e.detach() for e in step.embeddings], [f.detach() for f in step.features]
        start = time.perf_counter()
        stats = monitor.statistics(*detached)
        float(stats["norm/mean"])  # include the sync a logger would do
        monitor_times.append(time.perf_counter() - start)
    return statistics.median(monitor_times), statistics.median(step_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare/fit pairs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50, help="trainer.log_every_n_steps")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    data = make_datamodule(args)
    bare, fit = [], []
    for r in range(args.rounds):
        bare.append(bare_loop(args, data))
        fit.append(lightning_fit(args, data))
        print(f"round {r}: bare {bare[-1]:7.1f} img/s   fit+monitors {fit[-1]:7.1f} img/s   ratio {fit[-1] / bare[-1]:.3f}")
    monitor_s, step_s = monitor_cost(args, data)
    ratios = [f / b for f, b in zip(fit, bare)]
    print(f"\nResNet-18 width {args.width}, batch {args.batch}, {args.precision}, {torch.get_num_threads()} threads, {args.workers} workers")
    print(f"bare loop          median {statistics.median(bare):7.1f} img/s")
    print(f"Trainer.fit + mon  median {statistics.median(fit):7.1f} img/s")
    print(f"ratio fit / bare   median {statistics.median(ratios):.3f}   (goal >= 0.95)")
    print(f"monitor per logged step {1e3 * monitor_s:.2f} ms = {100 * monitor_s / step_s:.2f}% of a step "
          f"({100 * monitor_s / step_s / args.log_every:.3f}% amortised over log_every_n_steps={args.log_every}; goal <= 1%)")


if __name__ == "__main__":
    main()
