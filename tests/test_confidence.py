"""The norm-as-confidence API (ssl_norms.confidence) on embeddings with a known answer, and the
corrupted CIFAR-10 test sets it is benchmarked on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import write_image_folder
from ssl_norms.confidence import NormConfidence, detection_metrics, max_softmax_novelty, norm_auroc
from ssl_norms.data.eval_sets import BLUR_SIGMA, NOISE_STD, canonical_eval_set_name, corrupt, load_eval_set


def directions(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=generator), dim=1)


def test_detection_metrics_by_hand():
    ood = torch.arange(1.0, 21.0)  # 20 OOD samples: flagging 19 (95%) needs the threshold 2
    id_ = torch.tensor([0.5, 1.5, 5.5, 30.0])  # at >= 2, two of four ID samples are flagged
    metrics = detection_metrics(id_, ood)
    assert metrics["fpr95"] == pytest.approx(0.5)
    assert metrics["auroc"] == pytest.approx((20 + 19 + 15 + 0) / 80)  # OOD above each ID sample, over all pairs
    assert detection_metrics(ood, id_)["auroc"] == pytest.approx(1 - 54 / 80)  # roles swapped
    assert detection_metrics(torch.ones(4), torch.ones(6)) == {"auroc": 0.5, "fpr95": 1.0}  # all tied


def test_large_scores_are_not_tied_by_a_sigmoid():
    # torchmetrics would squash scores outside [0, 1] through a sigmoid: 40 and 50 both become 1.0
    assert detection_metrics(torch.tensor([40.0, 41.0]), torch.tensor([50.0, 51.0])) == {"auroc": 1.0, "fpr95": 0.0}


def test_smaller_norms_are_novel_and_alike_norms_are_chance():
    g = torch.Generator().manual_seed(0)
    train_labels = torch.randint(0, 4, (2000,), generator=g)
    train = directions(2000, 16, g) * (10 + torch.rand(2000, 1, generator=g))
    scorer = NormConfidence.fit(train, train_labels, 4)
    id_ = directions(1000, 16, g) * (10 + torch.rand(1000, 1, generator=g))
    small = directions(1000, 16, g) * (5 + torch.rand(1000, 1, generator=g))
    alike = directions(1000, 16, g) * (10 + torch.rand(1000, 1, generator=g))
    id_scores, small_scores, alike_scores = scorer.score(id_), scorer.score(small), scorer.score(alike)
    for name in ("norm", "relative", "class_relative"):
        assert detection_metrics(id_scores[name], small_scores[name]) == pytest.approx({"auroc": 1.0, "fpr95": 0.0}), name
        assert abs(detection_metrics(id_scores[name], alike_scores[name])["auroc"] - 0.5) < 0.04, name
    assert norm_auroc(id_.norm(dim=1), small.norm(dim=1)) == pytest.approx(1.0)
    assert norm_auroc(small.norm(dim=1), id_.norm(dim=1)) == pytest.approx(0.0)  # larger norms: the opposite answer
    assert torch.allclose(id_scores["relative"], -(id_.double().norm(dim=1) - scorer.mean) / scorer.std)


def test_fit_statistics_per_class_and_the_fallback_for_rare_classes():
    embeddings = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0], [0.0, 3.0], [2.0, 0.0]])  # norms 5, 10, 1, 3, 2
    scorer = NormConfidence.fit(embeddings, torch.tensor([0, 0, 1, 1, 2]), num_classes=4)
    norms = torch.tensor([5.0, 10.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    assert scorer.mean.item() == pytest.approx(4.2) and scorer.std.item() == pytest.approx(norms.std().item())
    assert scorer.class_mean[:2].tolist() == pytest.approx([7.5, 2.0])
    assert scorer.class_std[:2].tolist() == pytest.approx([12.5 ** 0.5, 2 ** 0.5])
    # class 2 has one sample and class 3 none: both take the overall statistics
    assert scorer.class_mean[2:].tolist() == pytest.approx([4.2, 4.2]) and scorer.class_std[3].item() == pytest.approx(norms.std().item())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        NormConfidence.fit(embeddings, torch.tensor([0, 0, 1, 1, 4]), num_classes=4)


def test_class_relative_score_finds_what_the_raw_norm_cannot():
    """Class 0 lives at norm ~10, class 1 at ~100. OOD samples in class 1's direction with norm 50
    sit between the classes: the raw norm is at chance, the norm relative to the k-NN-predicted
    class (1) flags them all."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:2] * 5

    def cloud(c: int, n: int, norm: float, spread: float) -> torch.Tensor:
        return F.normalize(centres[c] + 0.3 * torch.randn(n, 8, generator=g), dim=1) * (norm + spread * torch.randn(n, 1, generator=g))

    labels = torch.arange(2).repeat_interleave(500)
    scorer = NormConfidence.fit(torch.cat([cloud(0, 500, 10, 1), cloud(1, 500, 100, 10)]), labels, 2)
    id_, ood = torch.cat([cloud(0, 500, 10, 1), cloud(1, 500, 100, 10)]), cloud(1, 500, 50, 1)
    assert (scorer.predict(id_) == labels).float().mean() > 0.99 and (scorer.predict(ood) == 1).all()
    id_scores, ood_scores = scorer.score(id_), scorer.score(ood)
    assert abs(detection_metrics(id_scores["norm"], ood_scores["norm"])["auroc"] - 0.5) < 0.02
    assert detection_metrics(id_scores["class_relative"], ood_scores["class_relative"])["auroc"] > 0.99
    # classes from another classifier: calling every OOD sample class 0 makes them look confident
    as_class0 = scorer.score(ood, predicted=torch.zeros(500, dtype=torch.long))["class_relative"]
    assert detection_metrics(id_scores["class_relative"], as_class0)["auroc"] < 0.01


def test_max_softmax_novelty():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    assert max_softmax_novelty(logits).tolist() == pytest.approx([-0.25, -1.0, -1 / (2 + 2 / math.e)], abs=1e-8)


# ---- corrupted CIFAR-10 test sets --------------------------------------------------------------


def test_corrupt_is_deterministic_keeps_shape_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    state = torch.random.get_rng_state()
    for kind in ("noise", "blur"):
        first, second = corrupt(images, kind, 3), corrupt(images, kind, 3)
        assert first.dtype == torch.uint8 and first.shape == images.shape and torch.equal(first, second)
        assert not torch.equal(first, images)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(corrupt(images, "noise", 3, seed=1), corrupt(images, "noise", 3))
    with pytest.raises(ValueError, match="severity 1-5"):
        corrupt(images, "noise", 6)
    with pytest.raises(ValueError, match="kind 'noise' or 'blur'"):
        corrupt(images, "fog", 1)


@pytest.mark.parametrize("severity", [1, 5])
def test_noise_has_the_documented_std_and_blur_the_documented_smoothing(severity):
    grey = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)  # far from 0 and 255: no clipping
    noise = (corrupt(grey, "noise", severity).double() - 128) / 255
    assert noise.mean().abs() < 0.005 and noise.std().item() == pytest.approx(NOISE_STD[severity - 1], rel=0.05)
    assert torch.equal(corrupt(grey, "blur", severity), grey)  # a constant image stays as it is
    stripes = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    stripes[..., ::2] = 255
    blurred = corrupt(stripes, "blur", severity).double()
    # alternating 0/255 columns keep the amplitude sum_k (-1)^k w_k of the normalised kernel
    # w_k ~ exp(-k^2 / 2 sigma^2), |k| <= ceil(3 sigma)
    sigma = BLUR_SIGMA[severity - 1]
    k = torch.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1).double()
    weights = torch.exp(-k ** 2 / (2 * sigma ** 2))
    expected = ((-1) ** k.abs() * weights).sum().item() / weights.sum().item()
    amplitude = (blurred[..., 8:24, 8:24:2] - blurred[..., 8:24, 9:24:2]).mean().item() / 255
    assert amplitude == pytest.approx(expected, abs=0.01)


def test_corrupted_sets_are_the_cifar10_test_images_corrupted(tmp_path):
    root = write_image_folder(tmp_path / "data" / "cifar10-jpg", {"test": 3}, num_classes=10).parent
    clean = load_eval_set("cifar10_test", root)
    assert canonical_eval_set_name("noise") == "cifar10_test_noise5" and canonical_eval_set_name("blur") == "cifar10_test_blur5"
    for name, kind, severity in [("noise", "noise", 5), ("cifar10-test-blur2", "blur", 2)]:
        corrupted = load_eval_set(name, root)
        assert len(corrupted) == len(clean) == 30
        assert torch.equal(corrupted.targets, clean.targets)
        assert torch.equal(corrupted.images, corrupt(clean.images, kind, severity))
        assert corrupted[0]["image"].shape == (3, 32, 32) and corrupted[0]["image"].dtype == torch.float32
