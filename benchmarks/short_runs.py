"""Short CPU study: method x intervention (default / cut-initialisation / GradScale p=1), one table.

Every run is one ``ssl-norms fit`` in its own subprocess (one at a time), with the same seed and the
same number of steps; the table is read back from each run's ``metrics.csv``:

* ``loss``: mean ``train/loss`` over the logged steps of the last epoch;
* ``norm e0`` / ``norm eN``: mean ``norm/mean`` (mean norm of the loss-space embeddings of the
  training batch, see EmbeddingNormMonitor) over the logged steps of the first / last epoch;
* ``knn e0`` / ``knn eN``: ``knn/top1`` (OnlineKNN, validation set vs. the un-augmented training
  set, on backbone features) after the first / last epoch.

Interventions, as in Draganov et al. 2025:

* ``default``: the base config unchanged;
* ``cut``: ``ssl_norms.callbacks.CutInit(c)`` with c = 3 for contrastive methods (SimCLR; also
  IsoLoss and FroSSL here) and c = 9 for the non-contrastive SimSiam, BYOL and VICReg (the paper's
  values);
* ``gradscale``: ``ssl_norms.callbacks.GradScale(power=1)`` through the paper's preset
  ``configs/presets/gradscale_simclr.yaml`` (peak lr / 6, warmup 1/5 of training); the preset's
  absolute values (lr 0.05, 100 warmup epochs) are for SimCLR's 500-epoch runs, so the script
  passes the method's own lr / 6 and epochs / 5 warmup epochs after it.

Data:

* ``demo`` (default): ``configs/demo.yaml`` (SyntheticLatentClasses, MLP backbone; ~20-30 s per run
  at 10 epochs = 320 steps). Other methods swap the model class and use demo-sized heads; every
  method uses the demo's optimiser (SGD, peak lr 0.3, 1 warmup epoch, cosine) with its own config's
  weight decay (SimCLR 1e-6, SimSiam 5e-4, BYOL/IsoLoss/FroSSL 1e-5, VICReg 1e-4), except that
  VICReg keeps its config's lr 0.01 (with SGD its loss diverges at 0.3).
* ``cifar10``: the real CIFAR-10 copy under ``$SSL_NORMS_DATA`` with each method's
  ``configs/<method>/cifar10.yaml`` (paper heads and lr) shrunk for a CPU: ResNet-18 width 16,
  a seeded subset of ``--train-samples`` training images (the k-NN bank) and ``--val-samples`` test
  images, batch ``--batch-size``, no gradient accumulation, 1 warmup epoch.

    python benchmarks/short_runs.py                                    # 6 methods x 3 interventions on demo
    python benchmarks/short_runs.py --methods simclr simsiam --interventions default cut
    SSL_NORMS_DATA=/data python benchmarks/short_runs.py --data cifar10 --methods simclr simsiam --epochs 8
    python benchmarks/short_runs.py --report-only                      # re-print the table from --out

Each run gets ``<out>/<data>/<method>-<intervention>/`` (default ``--out runs/short_runs``), replaced
when this script made it: the fit's run dir ``run/`` (which ``ssl-norms fit`` wants new or empty) and,
beside it, the command, the subprocess output ``fit.log`` and the status.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "simsiam", "byol", "isoloss", "frossl", "vicreg")
INTERVENTIONS = ("default", "cut", "gradscale")
CUT_C = {"simclr": 3, "simsiam": 9, "byol": 9, "isoloss": 3, "frossl": 3, "vicreg": 9}  # paper: 3 contrastive, 9 non-contrastive
CLASS_NAME = {"simclr": "SimCLR", "simsiam": "SimSiam", "byol": "BYOL", "isoloss": "IsoLoss", "frossl": "FroSSL", "vicreg": "VICReg"}
# demo-sized heads (the MLP backbone gives 256-d features), each method's config weight decay, and
# VICReg's own lr (configs/vicreg/cifar10.yaml: its loss diverges with SGD at the demo's 0.3)
DEMO_MODEL = {
    "simclr": {},  # configs/demo.yaml as it is: projector 256-64, temperature 0.5, wd 1e-6
    "simsiam": {"projector_dims": [256, 256], "predictor_hidden_dims": [64], "weight_decay": 5e-4},
    "byol": {"projector_dims": [256, 256], "predictor_hidden_dims": [64], "weight_decay": 1e-5},
    "isoloss": {"projector_dims": [256, 64], "weight_decay": 1e-5},
    "frossl": {"projector_dims": [256, 256, 128], "weight_decay": 1e-5},
    "vicreg": {"projector_dims": [256, 256, 256], "weight_decay": 1e-4, "lr": 0.01},
}
DEMO_LR = 0.3  # configs/demo.yaml
MARKER = ".short_runs"  # marks run dirs this script may replace


def read_yaml_lr(config: Path) -> float:
    import yaml

    return float(yaml.safe_load(config.read_text())["model"]["init_args"]["lr"])


def fit_arguments(args, method: str, intervention: str, run_dir: Path) -> list[str]:
    """The ``ssl-norms fit`` arguments of one run."""
    words = ["fit"]
    if args.data == "demo":
        words += ["--config", str(REPO / "configs" / "demo.yaml")]
        if method != "simclr":
            words += ["--model", f"ssl_norms.methods.{CLASS_NAME[method]}"]
        for key, value in DEMO_MODEL[method].items():
            words.append(f"--model.init_args.{key}={value}".replace(" ", ""))
        lr = DEMO_MODEL[method].get("lr", DEMO_LR)
    else:
        config = REPO / "configs" / method / "cifar10.yaml"
        words += ["--config", str(config)]
        words += [
            f"--model.init_args.backbone_width={args.width}",
            f"--data.init_args.max_train_samples={args.train_samples}",
            f"--data.init_args.max_val_samples={args.val_samples}",
            f"--data.init_args.batch_size={args.batch_size}",
            f"--data.init_args.eval_batch_size={max(args.batch_size, 256)}",
            "--data.init_args.num_workers=0",
            "--trainer.accumulate_grad_batches=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--model.init_args.warmup_epochs=1",
        ]
        lr = read_yaml_lr(config)
    words += [f"--trainer.max_epochs={args.epochs}", f"--seed_everything={args.seed}", "--trainer.enable_progress_bar=false"]
    if intervention == "cut":
        words.append('--trainer.callbacks+={"class_path":"ssl_norms.callbacks.CutInit","init_args":{"c":%d}}' % CUT_C[method])
    elif intervention == "gradscale":
        words += [
            "--config", str(REPO / "configs" / "presets" / "gradscale_simclr.yaml"),  # GradScale(power=1), lr / 6, long warmup
            f"--model.init_args.lr={lr / 6:.6g}",
            f"--model.init_args.warmup_epochs={max(1, round(args.epochs / 5))}",
        ]
    words.append(f"--run_dir={run_dir}")
    return words


def run(args, method: str, intervention: str, box: Path) -> tuple[str, float]:
    """Run one fit in a subprocess, its run dir ``box/run``; returns (status, wall seconds)."""
    if box.exists():
        if not (box / MARKER).exists():
            sys.exit(f"short_runs: {box} exists and was not made by this script; choose another --out")
        shutil.rmtree(box)
    box.mkdir(parents=True)
    (box / MARKER).write_text("made by benchmarks/short_runs.py; replaced on the next run\n")
    command = [sys.executable, "-m", "ssl_norms.cli", *fit_arguments(args, method, intervention, box / "run")]
    (box / "command.txt").write_text(" ".join(command) + "\n")
    start = time.perf_counter()
    with open(box / "fit.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    seconds = time.perf_counter() - start
    status = {0: "ok", 3: "diverged"}.get(code, f"exit {code}")
    (box / "status.txt").write_text(f"{status} {seconds:.1f}\n")
    return status, seconds


def epoch_means(metrics: Path, key: str) -> dict[int, float]:
    """Mean of ``key`` per epoch over the rows of ``metrics.csv`` that log it."""
    values: dict[int, list[float]] = defaultdict(list)
    if metrics.exists():
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get(key) and row.get("epoch"):
                    values[int(float(row["epoch"]))].append(float(row[key]))
    return {epoch: sum(v) / len(v) for epoch, v in values.items()}


def summarise(box: Path) -> dict[str, float | str]:
    metrics = box / "run" / "metrics.csv"
    loss, norm, knn = (epoch_means(metrics, k) for k in ("train/loss", "norm/mean", "knn/top1"))
    status_file = box / "status.txt"
    status, seconds = status_file.read_text().rsplit(maxsplit=1) if status_file.exists() else ("missing", "nan")

    def at(series: dict[int, float], last: bool) -> float:
        return series[max(series) if last else min(series)] if series else math.nan

    return {
        "status": status, "seconds": float(seconds), "last_epoch": max(norm) if norm else -1,
        "loss": at(loss, True), "norm0": at(norm, False), "normN": at(norm, True), "knn0": at(knn, False), "knnN": at(knn, True),
    }


def table(rows: list[tuple[str, str, dict]]) -> str:
    head = ["method", "intervention", "status", "epochs", "loss (last ep)", "norm e0", "norm eN", "knn e0", "knn eN", "wall s"]
    lines = []
    for method, intervention, s in rows:
        label = {"default": "default", "cut": f"cut c={CUT_C[method]}", "gradscale": "gradscale p=1"}[intervention]
        lines.append([
            method, label, s["status"], str(s["last_epoch"] + 1), f"{s['loss']:.4f}", f"{s['norm0']:.3f}", f"{s['normN']:.3f}",
            f"{s['knn0']:.4f}", f"{s['knnN']:.4f}", f"{s['seconds']:.0f}",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--interventions", nargs="+", choices=INTERVENTIONS, default=list(INTERVENTIONS))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 10 on demo, 8 on cifar10)")
    parser.add_argument("--out", type=Path, default=Path("runs/short_runs"), help="runs root; run dirs are OUT/<data>/<method>-<intervention>/run")
    parser.add_argument("--data", choices=("demo", "cifar10"), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=16, help="cifar10: ResNet-18 width")
    parser.add_argument("--train-samples", type=int, default=512, help="cifar10: training images (seeded subset; also the k-NN bank)")
    parser.add_argument("--val-samples", type=int, default=500, help="cifar10: test images for the k-NN")
    parser.add_argument("--batch-size", type=int, default=128, help="cifar10: batch size")
    parser.add_argument("--report-only", action="store_true", help="do not train; print the table of the run dirs under --out")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 10 if args.data == "demo" else 8
    if args.data == "cifar10" and not args.report_only and not os.environ.get("SSL_NORMS_DATA"):
        sys.exit("short_runs: --data cifar10 reads the CIFAR-10 copy under $SSL_NORMS_DATA; set it")
    out = args.out.resolve() / args.data
    rows = []
    for method in args.methods:
        for intervention in args.interventions:
            box = out / f"{method}-{intervention}"
            if not args.report_only:
                print(f"short_runs: {method} {intervention} on {args.data} ({args.epochs} epochs) ...", end=" ", flush=True)
                status, seconds = run(args, method, intervention, box)
                print(f"{status} in {seconds:.0f} s ({box})", flush=True)
            rows.append((method, intervention, summarise(box)))
    print()
    print(f"data={args.data} epochs={args.epochs} seed={args.seed} runs={out}")
    print(table(rows))


if __name__ == "__main__":
    main()
