"""ssl-norms against the compute-only limit and a peer, in view-pairs per second (``make bench``).

Per configuration (ResNet-18 CIFAR stem, bf16-mixed autocast, real CIFAR-10 from ``$SSL_NORMS_DATA``):

* limit: the backbone's fwd+bwd+SGD on random tensors of both views, channels_last: no data, no
  heads, no loss;
* peer: lightly's SimCLR blocks (``NTXentLoss``, ``SimCLRProjectionHead``, ``SimCLRTransform`` per
  image with 2 DataLoader workers) in a plain Lightning fit, the images read by ssl-norms' reader;
  skipped with a note when lightly is not installed (``pip install '.[bench]'``);
* ssl-norms: ``Trainer.fit`` of the method with its monitors, the DataModule left at its defaults.

and the goals' ratios: ssl-norms / limit and / peer (P1), fit / bare loop (P2: the same step and
loader in a hand-written loop), the norm monitor's share of a step (P3), the DataModule's loader
alone / the step alone, in pairs/s (P5),
and the peak RSS of each measurement (main process; + its DataLoader workers' largest).

Every measurement runs in its own fresh process (so peak RSS, threads and allocator state are its
own), interleaved over rounds (limit, peer, ssl-norms, limit, ...): noise hits all alike, and the
ratios of one round are what carries over between machines. It runs the old code too:
``PYTHONPATH=OLD_CHECKOUT python benchmarks/compare_peers.py`` measures that checkout's ssl-norms.

    python benchmarks/compare_peers.py            # 3 configurations, 2 rounds (about 10 min on 2 cores)
    python benchmarks/compare_peers.py --quick    # tiny widths and batches: a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch


# Configurations: the table (width 64, batch 256), the CPU-scale studies (width 16), and SimSiam
# with gradient accumulation (batch x accumulate = the optimizer's batch).
@dataclass(frozen=True)
class Config:
    name: str
    method: str = "simclr"
    width: int = 64
    batch: int = 256
    accumulate: int = 1
    steps: int = 3  # timed training steps (micro-batches)
    warmup: int = 1


CONFIGS = [Config("w64 b256"), Config("w16 b256", width=16, steps=6, warmup=2),
           Config("simsiam w16 b128x2", method="simsiam", width=16, batch=128, accumulate=2, steps=6, warmup=2)]
QUICK = [Config("w4 b32", width=4, batch=32, steps=2), Config("simsiam w4 b16x2", method="simsiam", width=4, batch=16, accumulate=2, steps=2)]
SYSTEMS = ("limit", "peer", "ssl-norms")
PROJECTOR = [2048, 128]  # lightly's SimCLRProjectionHead(feature_dim, 2048, 128): the same head on both sides


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child process (DataLoader workers), MB."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ---- the three systems (each called in a fresh process) ----------------------------------------
def measure_limit(cfg: Config) -> dict:
    from ssl_norms.models import build_backbone

    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", cifar_stem=True, width=cfg.width)
    net = net.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2 * cfg.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for i in range(cfg.warmup + cfg.steps):
        if i == cfg.warmup:
            start = time.perf_counter()
        with autocast():
            loss = net(x).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"pairs_s": cfg.steps * cfg.batch / (time.perf_counter() - start), "workers": 0}


class StepTimer(L.Callback):
    """The time of the training steps after ``warmup`` (whole iterations, callbacks included)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def timed_fit(cfg: Config, model, data, callbacks) -> float:
    timer = StepTimer(cfg.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=(cfg.warmup + cfg.steps) // cfg.accumulate, accumulate_grad_batches=cfg.accumulate, accelerator="cpu",
            precision="bf16-mixed", default_root_dir=tmp, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[*callbacks, timer],
        )
        trainer.fit(model, data)
    return cfg.steps * cfg.batch / (timer.end - timer.start)


def cifar_train_images(count: int):
    from ssl_norms.data import CIFAR10DataModule

    images, labels = CIFAR10DataModule(num_workers=0).load_split(train=True)
    return images[:count], labels[:count]


def measure_peer(cfg: Config) -> dict:
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError:
        return {"skipped": "lightly is not installed (pip install '.[bench]')"}
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms.functional import to_pil_image

    from ssl_norms.models import build_backbone

    class PeerSimCLR(L.LightningModule):  # lightly's SimCLR example, on ssl-norms' backbone
        def __init__(self):
            super().__init__()
            self.backbone, dim = build_backbone("resnet18", cifar_stem=True, width=cfg.width)
            self.head = SimCLRProjectionHead(dim, PROJECTOR[0], PROJECTOR[1])
            self.criterion = NTXentLoss(temperature=0.5)

        def training_step(self, batch, batch_idx):
            (x0, x1), _ = batch
            return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)

    class Images(Dataset):
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.transform(to_pil_image(self.images[i])), int(self.labels[i])

    images, labels = cifar_train_images(cfg.batch * (cfg.warmup + cfg.steps + 2))
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)  # lightly's CIFAR-10 setting
    loader = DataLoader(Images(images, labels, transform), batch_size=cfg.batch, shuffle=True, drop_last=True, num_workers=2,
                        persistent_workers=True)
    torch.manual_seed(0)
    return {"pairs_s": timed_fit(cfg, PeerSimCLR(), loader, []), "workers": loader.num_workers}


def ssl_norms_parts(cfg: Config):
    from ssl_norms.data import CIFAR10DataModule
    from ssl_norms.methods import SimCLR, SimSiam

    torch.manual_seed(0)
    if cfg.method == "simclr":
        model = SimCLR(backbone="resnet18", cifar_stem=True, backbone_width=cfg.width, projector_dims=PROJECTOR, warmup_epochs=0)
    else:
        model = SimSiam(backbone="resnet18", cifar_stem=True, backbone_width=cfg.width, warmup_epochs=0)
    data = CIFAR10DataModule(batch_size=cfg.batch, max_train_samples=cfg.batch * (cfg.warmup + cfg.steps + 2), max_val_samples=512)
    return model, data


def measure_ssl_norms(cfg: Config) -> dict:
    from ssl_norms.callbacks import EmbeddingNormMonitor, OnlineKNN

    model, data = ssl_norms_parts(cfg)
    return {"pairs_s": timed_fit(cfg, model, data, [EmbeddingNormMonitor(), OnlineKNN(k=20)]), "workers": data.num_workers}


def measure_bare(cfg: Config) -> dict:
    """The same ssl-norms step in a hand-written loop over the DataModule's loader (P2's denominator),
    the norm monitor's statistics against the step alone (P3), and the loader alone (P5)."""
    from ssl_norms.callbacks import EmbeddingNormMonitor

    model, data = ssl_norms_parts(cfg)
    data.setup("fit")
    model.setup("fit")  # what Trainer.fit does first (layout choices, where the code makes them)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    count = cfg.warmup + cfg.steps
    batches = iter(data.train_dataloader())
    next(batches)  # worker start-up excluded
    start = time.perf_counter()
    for _ in range(cfg.steps):
        next(batches)
    loader_s = (time.perf_counter() - start) / cfg.steps
    del batches
    monitor, loop_times, step_times, monitor_times = EmbeddingNormMonitor(), [], [], []
    batches = iter(data.train_dataloader())
    for i in range(count):
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        with autocast():
            step = model.ssl_step(batch["views"])
        (step.loss / cfg.accumulate).backward()
        if (i + 1) % cfg.accumulate == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if i >= cfg.warmup:
            loop_times.append(end - start)
            step_times.append(end - loaded)
            stats = monitor.statistics([e.detach() for e in step.embeddings], [f.detach() for f in step.features])
            float(stats["norm/mean"])  # the sync a logger does
            monitor_times.append(time.perf_counter() - end)
    step_s = statistics.median(step_times)
    return {"pairs_s": cfg.steps * cfg.batch / sum(loop_times), "monitor_share": statistics.median(monitor_times) / step_s,
            "loader_over_step": step_s / loader_s, "workers": data.num_workers}


MEASURE = {"limit": measure_limit, "peer": measure_peer, "ssl-norms": measure_ssl_norms, "bare": measure_bare}


def child(system: str, cfg: Config) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    result = MEASURE[system](cfg)
    result["rss_mb"], workers_rss = peak_rss_mb()
    if result.get("workers"):  # other child processes (none here) would count too
        result["workers_rss_mb"] = workers_rss
    print("RESULT " + json.dumps(result), flush=True)


def run_child(system: str, cfg: Config) -> dict:
    words = [sys.executable, __file__, "--child", system, json.dumps(asdict(cfg))]
    done = subprocess.run(words, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed: {tail}"}
    return json.loads(lines[-1][len("RESULT "):])


def median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else None


def report(cfg: Config, results: dict[str, list[dict]]) -> None:
    pairs = {name: median(rs, "pairs_s") for name, rs in results.items()}
    ours, limit, peer = pairs["ssl-norms"], pairs["limit"], pairs["peer"]
    print(f"\n{cfg.name} ({cfg.method}, ResNet-18 width {cfg.width}, batch {cfg.batch} x accumulate {cfg.accumulate}, bf16-mixed)")
    for name in (*SYSTEMS, "bare"):
        skipped = next((r["skipped"] for r in results[name] if "skipped" in r), None)
        label = {"bare": "ssl-norms bare loop"}.get(name, name)
        if pairs[name] is None:
            print(f"  {label:<22} skipped: {skipped}")
            continue
        workers = median(results[name], "workers_rss_mb")
        rss = f"peak RSS {median(results[name], 'rss_mb'):6.0f} MB" + (f" (+ largest worker {workers:4.0f} MB)" if workers else "")
        print(f"  {label:<22} {pairs[name]:7.2f} pairs/s   {rss}")

    def ratio(a, b):
        return f"{a / b:.3f}" if a and b else "n/a"

    print(f"  P1 ssl-norms / limit {ratio(ours, limit)} (goal >= 0.9)   ssl-norms / peer {ratio(ours, peer)} (goal >= 1.1)")
    # per-round ratios: the same machine state for numerator and denominator
    rounds = [r["pairs_s"] / l["pairs_s"] for r, l in zip(results["ssl-norms"], results["limit"]) if "pairs_s" in r and "pairs_s" in l]
    if rounds:
        print(f"     per round ssl-norms / limit: {', '.join(f'{x:.3f}' for x in rounds)}")
    print(f"  P2 fit / bare loop {ratio(ours, pairs['bare'])} (goal >= 0.95)")
    share, feed = median(results["bare"], "monitor_share"), median(results["bare"], "loader_over_step")
    workers = median(results["ssl-norms"], "workers")
    if share is not None:
        print(f"  P3 norm monitor {100 * share:.3f}% of a step (goal <= 1%)")
        print(f"  P5 input pipeline / step {feed:.1f}x with the DataModule's {workers if workers is not None else '?'} workers (goal >= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny configurations, one round: checks the script runs")
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Config(**json.loads(args.child[1])))
    configs, rounds = (QUICK, 1) if args.quick else (CONFIGS, args.rounds)
    import ssl_norms

    print(f"ssl-norms from {ssl_norms.__file__}; {rounds} round(s) of every configuration; medians; each in a fresh process")
    results = {cfg: {name: [] for name in (*SYSTEMS, "bare")} for cfg in configs}
    begin = time.perf_counter()
    for r in range(rounds):
        for cfg in configs:
            for name in (*SYSTEMS, "bare"):
                if name == "peer" and cfg.method != "simclr":
                    results[cfg][name].append({"skipped": "the peer runs SimCLR only"})
                    continue
                results[cfg][name].append(run_child(name, cfg))
        print(f"round {r} done ({time.perf_counter() - begin:.0f} s)", flush=True)
    for cfg in configs:
        report(cfg, results[cfg])


if __name__ == "__main__":
    main()
