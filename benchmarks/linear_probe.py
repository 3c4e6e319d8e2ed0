"""The offline linear probe on cached features of CIFAR-10's size: 50k x 512 training and 10k test
features, 10 classes, on 2 CPU threads (goal: under 60 s). Prints the wall time and accuracy of
``ssl_norms.eval.linear_probe`` and, when scikit-learn is installed, of its LogisticRegression on the
same standardised features.

    python benchmarks/linear_probe.py [--train 50000] [--test 10000] [--dim 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from ssl_norms.eval import linear_probe


def features(n: int, dim: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes (a probe reaches neither chance nor 100%), ReLU'd as ResNet features are."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * 0.15
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return (centres[labels] + torch.randn(n, dim, generator=g)).relu(), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = features(args.train, args.dim, 10, 1), features(args.test, args.dim, 10, 2)
    start = time.perf_counter()
    result = linear_probe(*train, *test, num_classes=10)
    print(f"linear_probe {args.train} x {args.dim}, {args.threads} threads: {time.perf_counter() - start:.1f} s, "
          f"top1 {result['top1']:.4f}, top5 {result['top5']:.4f}")
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return
    mean, std = train[0].mean(0), train[0].std(0, unbiased=False).clamp_min(1e-6)
    start = time.perf_counter()
    # the same objective: C = 1 / (n * weight_decay) for sklearn's summed loss
    model = LogisticRegression(C=1 / (args.train * 1e-4), max_iter=500).fit(((train[0] - mean) / std).numpy(), train[1].numpy())
    top1 = (torch.as_tensor(model.predict(((test[0] - mean) / std).numpy())) == test[1]).float().mean()
    print(f"sklearn LogisticRegression (lbfgs): {time.perf_counter() - start:.1f} s, top1 {top1:.4f}")


if __name__ == "__main__":
    main()
