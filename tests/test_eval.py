"""knn_predict against an independent brute-force implementation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ssl_norms.eval import knn_predict, knn_predict_leave_one_out, single_class_note


def brute_force_knn(train, train_labels, test, num_classes, k, temperature):
    """One test point at a time with Python loops over classes: shares no code with knn_predict."""
    predictions = []
    train_n = [t / math.sqrt(float((t * t).sum())) for t in train.double()]
    for x in test.double():
        x = x / math.sqrt(float((x * x).sum()))
        sims = sorted(((float((x * t).sum()), i) for i, t in enumerate(train_n)), reverse=True)[:k]
        votes = [0.0] * num_classes
        for sim, i in sims:
            votes[int(train_labels[i])] += math.exp(sim / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


def test_matches_brute_force_on_random_data():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    expected = brute_force_knn(train, labels, test, 5, k=20, temperature=0.1)
    assert torch.equal(knn_predict(train, labels, test, 5, k=20, temperature=0.1, chunk_size=7), expected)


@pytest.mark.real_data
def test_matches_brute_force_on_real_cifar10_pixels(real_data_root):
    from ssl_norms.data.image_folder import load_image_folder

    images, labels, _ = load_image_folder(real_data_root / "cifar10-jpg" / "test")
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(images), generator=g)
    train_idx, test_idx = order[:1500], order[1500:1560]
    # 8x8 average-pooled pixels as features: real image statistics, cheap brute force
    feats = torch.nn.functional.avg_pool2d(images.float(), 4).flatten(1)
    feats = feats - feats.mean(0)
    predicted = knn_predict(feats[train_idx], labels[train_idx], feats[test_idx], 10, k=200, temperature=0.1, chunk_size=16)
    expected = brute_force_knn(feats[train_idx], labels[train_idx], feats[test_idx], 10, k=200, temperature=0.1)
    assert torch.equal(predicted, expected)
    assert (predicted == labels[test_idx]).float().mean() > 0.15  # pixels beat chance on CIFAR-10


def test_chunking_does_not_change_results_and_bad_input_raises():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(100, 8, generator=g), torch.randn(33, 8, generator=g)
    labels = torch.randint(0, 3, (100,), generator=g)
    full = knn_predict(train, labels, test, 3, k=500)  # k larger than the bank is clamped
    assert torch.equal(full, knn_predict(train, labels, test, 3, k=500, chunk_size=5))
    with pytest.raises(ValueError, match="equal width"):
        knn_predict(train, labels, torch.randn(4, 7), 3)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, test, 3, temperature=0)


def test_single_class_labels_are_named_as_making_the_k_nn_accuracy_meaningless():
    one, two = torch.zeros(6, dtype=torch.long), torch.tensor([0, 1, 0, 1, 0, 1])
    assert "bank holds a single class (0)" in single_class_note(one, one) and "trivially 1.0 " in single_class_note(one, one)
    assert "trivially 0.5 " in single_class_note(one, two)
    assert "evaluates hold a single class (1)" in single_class_note(two, torch.ones(3, dtype=torch.long))
    assert "recall" in single_class_note(two, torch.ones(3, dtype=torch.long))
    assert single_class_note(two, two) is None
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"single class \(0\).*trivially 1.0 "):
        assert (knn_predict_leave_one_out(feats, one, 2, k=3) == one).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knn_predict_leave_one_out(feats, two, 2, k=3)
