"""knn_predict against an independent brute-force implementation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ssl_norms.eval import SEARCH_LISTED, SELECT_BLOCK, _select, alignment, rankme, uniformity, _certified_scores, _LowPrecisionBank, _vote, knn_predict, knn_predict_leave_one_out, knn_scores, single_class_note, topk_accuracy


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


def near_tied_data(seed: int = 3):
    """Bank points in twins a hair apart (cosines differing by ~1e-4: below bf16's resolution, far
    above fp32's) with different labels, and few classes per query neighbourhood: the order of the
    twins decides many votes."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(300, 24, generator=g)
    bank = torch.cat([base, base + 1e-4 * torch.randn(300, 24, generator=g)])
    labels = torch.randint(0, 8, (600,), generator=g)
    queries = torch.cat([torch.randn(200, 24, generator=g), base[:100] + 0.3 * torch.randn(100, 24, generator=g)])
    return bank, labels, queries


@pytest.mark.parametrize("search", [torch.bfloat16, torch.float16])
def test_low_precision_search_gives_the_fp32_labels_and_top5_on_near_ties(search):
    bank, labels, queries = near_tied_data()
    fp32 = knn_scores(bank, labels, queries, 8, k=20, temperature=0.05, search=torch.float32)
    scores = knn_scores(bank, labels, queries, 8, k=20, temperature=0.05, search=search, chunk_size=64)
    assert torch.equal(scores.argmax(1), fp32.argmax(1))
    assert torch.equal(scores.topk(5).indices.sort().values, fp32.topk(5).indices.sort().values)
    assert torch.equal(knn_predict(bank, labels, queries, 8, k=20, temperature=0.05, search=search), fp32.argmax(1))
    # both ways are taken: rows the rounding bound certifies, rows recomputed in fp32
    top, idx, bound, unlisted = _LowPrecisionBank(F.normalize(bank, dim=1), search).search(F.normalize(queries, dim=1), SEARCH_LISTED * 20)
    certified = _certified_scores(top, idx, bound, unlisted, labels, 8, 20, 0.05, (1, 5))[1]
    assert 0 < certified.sum() < len(queries)
    # the data have teeth: voting on the rounded similarities directly changes some labels
    rounded = F.normalize(queries, dim=1).to(search).float() @ F.normalize(bank, dim=1).to(search).float().T
    assert (_vote(rounded.to(search).float(), labels, 8, 20, 0.05) != fp32.argmax(1)).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("width", [4000, 4003])
def test_blocked_selection_lists_the_largest_entries(dtype, width):
    g = torch.Generator().manual_seed(width)
    sim = torch.randn(50, width, generator=g).to(dtype)
    sim[0, ::500] = 9.0  # the largest entries of a row crowd into one block
    sim[1] = 0.5  # all tied
    sim[2, -3:] = 20.0  # the largest entries in the columns no block holds
    n = 60
    assert width // SELECT_BLOCK >= 4 * n  # the blocked path, not the plain top-k
    top, idx = _select(sim, n)
    assert torch.equal(top, sim.topk(n, dim=1).values.float())
    assert torch.equal(sim.gather(1, idx).float(), top)
    assert all(len(set(row.tolist())) == n for row in idx)


def test_low_precision_search_on_a_bank_large_enough_for_blocked_selection_gives_the_fp32_labels():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(10_000, 24, generator=g)
    bank = torch.cat([base, base + 1e-4 * torch.randn(10_000, 24, generator=g)])
    labels = torch.randint(0, 8, (20_000,), generator=g)
    queries = torch.cat([torch.randn(300, 24, generator=g), base[:300] + 0.3 * torch.randn(300, 24, generator=g)])
    fp32 = knn_scores(bank, labels, queries, 8, k=20, temperature=0.05, search=torch.float32)
    scores = knn_scores(bank, labels, queries, 8, k=20, temperature=0.05, search=torch.bfloat16, chunk_size=64)
    assert torch.equal(scores.argmax(1), fp32.argmax(1))
    assert torch.equal(scores.topk(5).indices.sort().values, fp32.topk(5).indices.sort().values)
    # all three ways are taken: certified by the rounding bound, after rescoring the listed points, in fp32
    low_bank = _LowPrecisionBank(F.normalize(bank, dim=1), torch.bfloat16)
    queries = F.normalize(queries, dim=1)
    top, idx, bound, unlisted = low_bank.search(queries, SEARCH_LISTED * 20)
    certified = _certified_scores(top, idx, bound, unlisted, labels, 8, 20, 0.05, (1, 5))[1]
    redo = (~certified).nonzero().squeeze(1)
    rescored = _certified_scores(*low_bank.rescore(queries[redo], idx[redo]), unlisted[redo], labels, 8, 20, 0.05, (1, 5))[1]
    assert 0 < certified.sum() < len(queries) and 0 < rescored.sum() < len(redo)


def test_votes_the_bound_cannot_certify_stop_the_low_precision_search_after_a_small_first_chunk(monkeypatch):
    from ssl_norms import eval as knn

    g = torch.Generator().manual_seed(6)
    bank, labels = torch.randn(20_000, 16, generator=g).abs(), torch.randint(0, 10, (20_000,), generator=g)
    queries = torch.randn(700, 16, generator=g).abs()  # all-positive: cosines near 1, dense, votes close
    searched = []
    search = knn._LowPrecisionBank.search
    monkeypatch.setattr(knn._LowPrecisionBank, "search", lambda self, q, n: searched.append(len(q)) or search(self, q, n))
    scores = knn_scores(bank, labels, queries, 10, k=20, search=torch.bfloat16, chunk_size=256)
    assert searched == [knn.PROBE_QUERIES]
    assert torch.equal(scores.argmax(1), knn_scores(bank, labels, queries, 10, k=20, search=torch.float32).argmax(1))


def test_knn_scores_top5_matches_brute_force_and_default_search_equals_fp32():
    g = torch.Generator().manual_seed(4)
    means = torch.randn(12, 32, generator=g)
    labels = torch.randint(0, 12, (660,), generator=g)
    feats = means[labels] + 1.2 * torch.randn(660, 32, generator=g)
    bank, bank_labels, queries = feats[:600], labels[:600], feats[600:]
    scores = knn_scores(bank, bank_labels, queries, 12, k=50, temperature=0.1, chunk_size=64)
    exact = knn_scores(bank, bank_labels, queries, 12, k=50, temperature=0.1, search=torch.float32)
    assert torch.equal(scores.topk(5).indices.sort().values, exact.topk(5).indices.sort().values)
    assert torch.equal(scores.argmax(1), brute_force_knn(bank, bank_labels, queries, 12, 50, 0.1))


def test_torchmetrics_top1_is_the_argmax_accuracy_even_on_tied_votes():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.5, 0.5, 0.5], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2, 1, 2])
    assert topk_accuracy(scores, labels, 3)["top1"] == (scores.argmax(1) == labels).float().mean().item() == 0.5
    assert topk_accuracy(scores, labels, 3)["top5"] == 1.0  # top-min(5, C): every class


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


def test_rankme_of_known_singular_values():
    # singular values 4, 3, 1 (and a zero one): p = (0.5, 0.375, 0.125, 0) + eps
    z = torch.zeros(6, 4)
    z[0, 0], z[1, 1], z[2, 2] = 4.0, 3.0, 1.0
    p = [0.5 + 1e-7, 0.375 + 1e-7, 0.125 + 1e-7, 1e-7]
    assert rankme(z).item() == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-5)
    assert rankme(torch.eye(5)).item() == pytest.approx(5.0, rel=1e-5)  # full rank: every direction counts


def test_alignment_and_uniformity_by_hand():
    z1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # normalised: 45 degrees apart, then identical
    assert alignment(z1, z2).item() == pytest.approx((2 - 2 * math.cos(math.pi / 4)) / 2)
    assert alignment(z1, z2, alpha=1).item() == pytest.approx(math.sqrt(2 - math.sqrt(2)) / 2)
    # three unit vectors 120 degrees apart: every pair at squared distance 3
    z = torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]]) * 5
    assert uniformity(z).item() == pytest.approx(-2 * 3, abs=1e-5)
    # pairs at squared distances 2, 2 and 4 (two orthogonal vectors and one opposite the first)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert uniformity(w, chunk_size=2).item() == pytest.approx(math.log((2 * math.exp(-4) + math.exp(-8)) / 3), abs=1e-5)


def test_the_search_format_is_low_precision_only_for_a_bank_large_enough_to_gain():
    from ssl_norms import hardware
    from ssl_norms.eval import LOW_PRECISION_MIN_BANK, search_dtype

    assert search_dtype("cpu", LOW_PRECISION_MIN_BANK - 1) == torch.float32
    expected = torch.bfloat16 if hardware.fast_bf16("cpu") else torch.float32
    assert search_dtype("cpu", LOW_PRECISION_MIN_BANK) == expected
    assert search_dtype("cuda", 10) == torch.float32 and search_dtype("cuda", 10**6) == torch.float16
