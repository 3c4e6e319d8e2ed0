"""Exponentially imbalanced training sets: the pure index function, the config block on every
labelled DataModule, and ``ssl-norms fit`` on imbalanced CIFAR-10 from the real data."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO, TINY_RESNET, metric_values, read_metrics_csv
from ssl_norms.cli import main
from ssl_norms.data import CIFAR10DataModule, Imbalance, SyntheticLatentClasses, exponential_imbalance
from test_data import write_cifar10_pickles

CIFAR10_COUNTS = [5000, 3333, 2222, 1481, 987, 658, 438, 292, 195, 130]


def balanced_targets(per_class: int, num_classes: int, interleaved: bool = True) -> torch.Tensor:
    """Labels 0..K-1, ``per_class`` each, interleaved like a shuffled dataset."""
    labels = torch.arange(num_classes).repeat(per_class)
    return labels if interleaved else labels.sort().values


def test_cifar10_preset_counts_and_first_pick():
    targets = balanced_targets(5000, 10)
    kept = exponential_imbalance(targets, 5000, 1.5)
    assert torch.bincount(targets[kept]).tolist() == CIFAR10_COUNTS and len(kept) == 14_736
    assert torch.equal(kept, kept.sort().values)  # dataset order
    for c, n in enumerate(CIFAR10_COUNTS):  # "first": the first n_c of the class in dataset order
        assert torch.equal(kept[targets[kept] == c], (targets == c).nonzero().flatten()[:n])


def test_cifar100_preset_counts():
    targets = balanced_targets(500, 100)
    spec = Imbalance(preset="cifar100")
    counts = torch.bincount(targets[spec.indices(targets)], minlength=100).tolist()
    assert counts == [int(500 * 1.034 ** (-i)) for i in range(100)]
    assert counts[:3] == [500, 483, 467] and counts[-1] == 18 and sum(counts) == 14_620


def test_random_pick_is_reproducible_by_seed_and_order_ranks_classes():
    targets = balanced_targets(50, 4)
    a = exponential_imbalance(targets, 40, 2.0, pick="random", seed=1)
    assert torch.equal(a, exponential_imbalance(targets, 40, 2.0, pick="random", seed=1))
    assert not torch.equal(a, exponential_imbalance(targets, 40, 2.0, pick="random", seed=2))
    assert torch.bincount(targets[a]).tolist() == [40, 20, 10, 5]
    assert not torch.equal(a, exponential_imbalance(targets, 40, 2.0))  # not just the first ones
    ranked = exponential_imbalance(targets, 40, 2.0, order=[2, 0, 3, 1])
    assert torch.bincount(targets[ranked]).tolist() == [20, 5, 40, 10]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_max": 4, "base": 2.0}, r"^imbalance leaves class 3 \(position 3\) empty: int\(4 \* 2.0\^-3\) = 0; raise n_max or lower base$"),
        ({"n_max": 60, "base": 2.0}, "imbalance wants 60 samples of class 0 but the dataset has 50; lower n_max"),
        ({"n_max": 10, "base": 2.0, "order": [0, 1, 1, 3]}, "must list each of the classes 0..3 once"),
        ({"n_max": 10, "base": 2.0, "pick": "last"}, "pick must be 'first' or 'random'"),
        ({"n_max": 10, "base": 0.5}, "base >= 1"),
    ],
)
def test_bad_imbalance_is_one_line_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        exponential_imbalance(balanced_targets(50, 4), **kwargs)


def test_imbalance_block_validation():
    assert (Imbalance(preset="cifar10").n_max, Imbalance(preset="cifar10").base) == (5000, 1.5)
    assert Imbalance(preset="cifar10", n_max=100).n_max == 100  # explicit values override the preset
    with pytest.raises(ValueError, match="unknown imbalance preset 'svhn'"):
        Imbalance(preset="svhn")
    with pytest.raises(ValueError, match="needs a preset .* or both n_max and base"):
        Imbalance(n_max=10)


def test_datamodule_imbalances_train_and_bank_only_then_subsets(tmp_path):
    root = write_cifar10_pickles(tmp_path, n_train=400, n_test=50)
    plain = CIFAR10DataModule(root=str(root), num_workers=0)
    plain.setup()
    targets = plain.train_set.targets
    spec = {"n_max": 20, "base": 1.2, "order": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]}
    data = CIFAR10DataModule(root=str(root), num_workers=0, batch_size=4, imbalance=spec)
    data.setup()
    expected = exponential_imbalance(targets, 20, 1.2, order=spec["order"])
    assert torch.equal(data.train_set.indices, expected) and torch.equal(data.bank_set.indices, expected)
    counts = torch.bincount(data.bank_set.targets, minlength=10).flip(0).tolist()  # class 9 first
    assert counts == [20, 16, 13, 11, 9, 8, 6, 5, 4, 3]
    assert len(data.val_set) == 50  # evaluation stays balanced (untouched)
    batch = next(iter(data.train_dataloader()))
    assert set(batch["index"].tolist()) <= set(expected.tolist())
    subset = CIFAR10DataModule(root=str(root), num_workers=0, imbalance=spec, max_train_samples=10)
    subset.setup()
    assert len(subset.train_set) == 10 and set(subset.train_set.indices.tolist()) <= set(expected.tolist())


def test_imbalance_on_a_datamodule_without_subset_support():
    data = SyntheticLatentClasses(num_classes=3, train_samples=300, val_samples=30, batch_size=8, imbalance={"n_max": 80, "base": 2.0})
    data.setup()
    assert len(data.train_set) == len(data.bank_set) == 140
    batch = next(iter(data.train_dataloader()))
    assert batch["views"][0].shape == (8, 64) and len(batch["label"]) == 8


def test_real_cifar10_preset_split(real_data_root):
    data = CIFAR10DataModule(root=str(real_data_root), num_workers=0, imbalance={"preset": "cifar10"})
    data.setup()
    assert torch.bincount(data.train_set.targets).tolist() == CIFAR10_COUNTS
    assert torch.equal(data.bank_set.targets, data.train_set.targets)
    assert torch.bincount(data.val_set.targets).tolist() == [1000] * 10
    # "first" in the original order: class c keeps its files 0000.jpg .. n_c - 1
    assert torch.equal(data.train_set.indices[:5000], torch.arange(5000))


def test_fit_on_imbalanced_cifar10_from_real_data(real_data_root, tmp_path):
    """Acceptance: ``ssl-norms fit`` a few steps on the CIFAR-10 preset, with MNIST as an extra
    evaluation set; norms are logged per evaluation set."""
    # One intra-op thread: embedding the 14,736-image k-NN bank with a width-4 network is many tiny
    # kernels, measured ~30x slower with 2 threads than with 1 on the busy shared 2-core machine.
    torch.set_num_threads(1)
    run_dir = tmp_path / "imbalanced"
    main([
        "fit", "--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"),
        "--data", str(REPO / "configs" / "data" / "cifar10_imbalanced.yaml"), *TINY_RESNET,
        "--data.init_args.root", str(real_data_root), "--data.init_args.batch_size", "32",
        "--data.init_args.extra_eval_sets", "[mnist]",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2",
        "--run_dir", str(run_dir),
    ])
    metrics = run_dir / "metrics.csv"
    assert len(metric_values(metrics, "train/loss")) == 3
    header = read_metrics_csv(metrics)[0].keys()
    assert {"knn/top1", "val/cifar10_test/norm_mean", "val/mnist_test/norm_mean", "val/mnist_test/features_norm_mean"} <= set(header)
    assert all(v > 0 for v in metric_values(metrics, "val/mnist_test/norm_mean"))
    config = (run_dir / "config.yaml").read_text()
    assert "preset: cifar10" in config
