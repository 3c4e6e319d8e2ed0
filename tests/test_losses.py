"""Loss values against independent implementations, and the gradient properties the paper relies on."""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import spawn_ranks
from ssl_norms.distributed import all_gather_with_grad
from ssl_norms.losses import (
    directpred_predictor,
    frossl_loss,
    info_nce,
    iso_loss_cosine,
    iso_loss_euclidean,
    isotropic_predictor,
    negative_cosine,
    vicreg_loss,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_correlation(dim: int, seed: int = 0) -> torch.Tensor:
    a = _randn(4 * dim, dim, seed=seed)
    return a.T @ a / len(a)


# ---------------------------------------------------------------------------------------------
# info_nce
# ---------------------------------------------------------------------------------------------


def _info_nce_loops(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent written row by row with python floats."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    m, n = len(z), len(z1)
    total = 0.0
    for i in range(m):
        positive = (i + n) % m
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(m) if k != i)
        total += math.log(denominator) - float(z[i] @ z[positive]) / temperature
    return total / m


def test_info_nce_matches_loop_implementation() -> None:
    z1, z2 = _randn(6, 5, seed=1), _randn(6, 5, seed=2)
    for temperature in (0.1, 0.5, 2.0):
        expected = _info_nce_loops(z1, z2, temperature)
        assert info_nce(z1, z2, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_hand_computed_two_samples() -> None:
    # Unit rows a=[1,0], b=[0,1] (view 1) and c=[s,s], d=[0,1] (view 2), s = 1/sqrt(2).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    t = 0.5
    s = 1 / math.sqrt(2)
    row_a = math.log(math.exp(0) + math.exp(s / t) + math.exp(0)) - s / t  # others b, c, d
    row_b = math.log(math.exp(0) + math.exp(s / t) + math.exp(1 / t)) - 1 / t  # others a, c, d
    row_c = math.log(3 * math.exp(s / t)) - s / t  # a, b, d all at cosine s
    row_d = math.log(math.exp(0) + math.exp(1 / t) + math.exp(s / t)) - 1 / t  # others a, b, c
    expected = (row_a + row_b + row_c + row_d) / 4
    assert info_nce(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_scale_invariant_and_float32() -> None:
    z1, z2 = _randn(5, 4, seed=3), _randn(5, 4, seed=4)
    base = info_nce(z1, z2)
    assert base.dtype == torch.float32 and base.ndim == 0
    torch.testing.assert_close(info_nce(7.0 * z1, 0.3 * z2), base)


def test_info_nce_rejects_bad_inputs() -> None:
    z = _randn(4, 3)
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            info_nce(z, z, temperature)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(z, z[:3])
    with pytest.raises(ValueError, match="batch, dim"):
        info_nce(z[0], z[0])


def test_info_nce_gradient_orthogonal_and_inverse_to_norm() -> None:
    """Prop 3.1: the gradient on z_i is orthogonal to z_i and scales with 1/||z_i||."""
    z1, z2 = _randn(6, 5, seed=5), _randn(6, 5, seed=6)
    z1.requires_grad_(True)
    g1, g2 = torch.autograd.grad(info_nce(z1, z2.requires_grad_(True), 0.2), (z1, z2))
    for z, g in ((z1, g1), (z2, g2)):
        cosine = F.cosine_similarity(z.detach(), g, dim=1)
        assert cosine.abs().max() < 1e-5
    k = 10.0
    big1 = (k * z1.detach()).requires_grad_(True)
    (g1_big,) = torch.autograd.grad(info_nce(big1, z2.detach(), 0.2), big1)
    (g1_ref,) = torch.autograd.grad(info_nce(z1, z2.detach(), 0.2), z1)
    torch.testing.assert_close(g1_big, g1_ref / k, rtol=1e-5, atol=1e-7)


def test_info_nce_single_process_gather_is_identity() -> None:
    z1, z2 = _randn(4, 3, seed=7), _randn(4, 3, seed=8)
    gathered, offset = all_gather_with_grad(z1)
    assert gathered is z1 and offset == 0
    torch.testing.assert_close(info_nce(z1, z2, gather=all_gather_with_grad), info_nce(z1, z2))


def test_losses_run_in_float32_under_bf16_autocast() -> None:
    z1, z2 = _randn(6, 8, seed=9).bfloat16(), _randn(6, 8, seed=10).bfloat16()
    w_p, w_p_sqrt = isotropic_predictor(_random_correlation(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [
            info_nce(z1, z2, 0.1),
            negative_cosine(z1, z2),
            iso_loss_cosine(z1, z2, w_p, w_p_sqrt),
            iso_loss_euclidean(z1, z2, w_p),
            frossl_loss([z1, z2]),
        ]
    # Autocast is off inside the losses, so they equal the float32 computation exactly.
    expected = [
        info_nce(z1.float(), z2.float(), 0.1),
        negative_cosine(z1.float(), z2.float()),
        iso_loss_cosine(z1.float(), z2.float(), w_p, w_p_sqrt),
        iso_loss_euclidean(z1.float(), z2.float(), w_p),
        frossl_loss([z1.float(), z2.float()]),
    ]
    for value, reference in zip(values, expected):
        assert value.dtype == torch.float32
        assert torch.equal(value, reference)


# ---------------------------------------------------------------------------------------------
# negative_cosine
# ---------------------------------------------------------------------------------------------


def test_negative_cosine_hand_example() -> None:
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 2.0], [4.0, 3.0]])
    # cosines 0 and 24/25
    assert negative_cosine(p, z).item() == pytest.approx(-(0.0 + 24 / 25) / 2, rel=1e-6)


def test_negative_cosine_stops_gradient_into_target() -> None:
    p, z = _randn(4, 3, seed=1).requires_grad_(True), _randn(4, 3, seed=2).requires_grad_(True)
    grad_p, grad_z = torch.autograd.grad(negative_cosine(p, z), (p, z), allow_unused=True)
    assert grad_z is None
    assert grad_p is not None and grad_p.abs().sum() > 0


def test_negative_cosine_gradient_orthogonal_and_inverse_to_norm() -> None:
    p, z = _randn(5, 4, seed=3), _randn(5, 4, seed=4)
    leaf = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(negative_cosine(leaf, z), leaf)
    assert F.cosine_similarity(p, grad, dim=1).abs().max() < 1e-5
    # Per row: |grad| = sin(angle) / (batch * |p|).
    sine = torch.sqrt(1 - F.cosine_similarity(p, z, dim=1) ** 2)
    torch.testing.assert_close(grad.norm(dim=1), sine / (len(p) * p.norm(dim=1)), rtol=1e-4, atol=1e-6)
    big = (4.0 * p).requires_grad_(True)
    (grad_big,) = torch.autograd.grad(negative_cosine(big, z), big)
    torch.testing.assert_close(grad_big, grad / 4.0)
    torch.testing.assert_close(negative_cosine(4.0 * p, 0.1 * z), negative_cosine(p, z))


def test_negative_cosine_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        negative_cosine(_randn(4, 3), _randn(4, 2))


# ---------------------------------------------------------------------------------------------
# Closed-form predictors
# ---------------------------------------------------------------------------------------------


def test_isotropic_predictor_symmetric_and_square_root() -> None:
    w_p, w_p_sqrt = isotropic_predictor(_random_correlation(6), alpha=0.5, eps=0.01)
    assert w_p.dtype == torch.float32 and w_p.shape == (6, 6)
    torch.testing.assert_close(w_p, w_p.T)
    torch.testing.assert_close(w_p_sqrt, w_p_sqrt.T)
    torch.testing.assert_close(w_p_sqrt @ w_p_sqrt, w_p, rtol=1e-5, atol=1e-6)


def test_isotropic_predictor_spectrum_on_diagonal_correlation() -> None:
    correlation = torch.diag(torch.tensor([4.0, 1.0, 0.0, -1.0]))  # negative eigenvalue clamps to 0
    w_p, w_p_sqrt = isotropic_predictor(correlation, alpha=0.5, eps=0.0)
    s = torch.tensor([1.0, 0.25, 0.0, 0.0])
    torch.testing.assert_close(w_p, torch.diag(s.sqrt()))
    torch.testing.assert_close(w_p_sqrt, torch.diag(s.pow(0.25)))
    # eps is added before the power
    w_p, _ = isotropic_predictor(correlation, alpha=1.0, eps=0.1)
    torch.testing.assert_close(w_p, torch.diag(s + 0.1))
    w_p, _ = isotropic_predictor(correlation, alpha=0.5, eps=0.1)
    torch.testing.assert_close(w_p, torch.diag((s + 0.1).sqrt()))


def test_directpred_adds_eps_after_power() -> None:
    correlation = torch.diag(torch.tensor([4.0, 1.0, 0.0, -1.0]))
    s = torch.tensor([1.0, 0.25, 0.0, 0.0])
    torch.testing.assert_close(directpred_predictor(correlation, alpha=0.5, eps=0.2), torch.diag(s.sqrt() + 0.2))
    torch.testing.assert_close(directpred_predictor(correlation), torch.diag(s.sqrt() + 0.1))  # default eps 0.1
    w_iso, _ = isotropic_predictor(correlation, alpha=0.5, eps=0.2)
    assert not torch.allclose(w_iso, directpred_predictor(correlation, alpha=0.5, eps=0.2))


def test_predictors_are_scale_free_and_gradient_free() -> None:
    correlation = _random_correlation(5).requires_grad_(True)
    w_p, w_p_sqrt = isotropic_predictor(correlation)
    assert not w_p.requires_grad and not w_p_sqrt.requires_grad
    torch.testing.assert_close(isotropic_predictor(correlation * 30.0)[0], w_p, rtol=1e-5, atol=1e-6)
    zero_w, _ = isotropic_predictor(torch.zeros(3, 3))
    assert torch.isfinite(zero_w).all()


def test_predictors_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="square"):
        isotropic_predictor(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="alpha"):
        isotropic_predictor(torch.eye(3), alpha=0.0)
    with pytest.raises(ValueError, match="eps"):
        isotropic_predictor(torch.eye(3), eps=-0.1)
    with pytest.raises(ValueError, match="eps"):
        directpred_predictor(torch.eye(3), eps=-0.1)


# ---------------------------------------------------------------------------------------------
# IsoLoss
# ---------------------------------------------------------------------------------------------


def _iso_setup(batch: int = 8, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    w_p, w_p_sqrt = isotropic_predictor(_random_correlation(dim, seed=11), alpha=0.5, eps=0.0)
    return _randn(batch, dim, seed=12), _randn(batch, dim, seed=13), w_p, w_p_sqrt


def test_iso_loss_cosine_gradient_is_byol_gradient_wrt_predictor_output() -> None:
    z, zt, w_p, w_p_sqrt = _iso_setup()
    leaf = z.clone().requires_grad_(True)
    (grad_z,) = torch.autograd.grad(iso_loss_cosine(leaf, zt, w_p, w_p_sqrt), leaf)
    p = (z @ w_p).requires_grad_(True)
    (grad_p,) = torch.autograd.grad(-2 * F.cosine_similarity(p, zt, dim=1).mean(), p)
    torch.testing.assert_close(grad_z, grad_p, rtol=1e-4, atol=1e-6)
    # BYOL itself would multiply by W_p once more; the identity above is not that.
    byol_leaf = z.clone().requires_grad_(True)
    (grad_byol,) = torch.autograd.grad(-2 * F.cosine_similarity(byol_leaf @ w_p, zt, dim=1).mean(), byol_leaf)
    torch.testing.assert_close(grad_byol, grad_p @ w_p.T, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(grad_byol, grad_z, rtol=1e-2, atol=1e-4)


def test_iso_loss_cosine_value_scale_invariant_and_target_no_grad() -> None:
    z, zt, w_p, w_p_sqrt = _iso_setup()
    base = iso_loss_cosine(z, zt, w_p, w_p_sqrt)
    assert base.dtype == torch.float32 and base.ndim == 0
    # <z,zt>/|p| and <p,zt>|r|^2/|p|^3 are both scale-free in z (and in zt).
    torch.testing.assert_close(iso_loss_cosine(5.0 * z, 0.2 * zt, w_p, w_p_sqrt), base, rtol=1e-5, atol=1e-6)
    # ...while the gradient, like BYOL's w.r.t. p, scales as 1/k.
    leaf, big = z.clone().requires_grad_(True), (5.0 * z).requires_grad_(True)
    (grad,) = torch.autograd.grad(iso_loss_cosine(leaf, zt, w_p, w_p_sqrt), leaf)
    (grad_big,) = torch.autograd.grad(iso_loss_cosine(big, zt, w_p, w_p_sqrt), big)
    torch.testing.assert_close(grad_big, grad / 5.0, rtol=1e-4, atol=1e-7)
    target = zt.clone().requires_grad_(True)
    (grad_t,) = torch.autograd.grad(iso_loss_cosine(leaf, target, w_p, w_p_sqrt), target, allow_unused=True)
    assert grad_t is None


def test_iso_loss_euclidean_gradient_and_value() -> None:
    z, zt, w_p, _ = _iso_setup()
    leaf = z.clone().requires_grad_(True)
    loss = iso_loss_euclidean(leaf, zt, w_p)
    (grad_z,) = torch.autograd.grad(loss, leaf)
    p = z @ w_p
    torch.testing.assert_close(grad_z, 2 * (p - zt) / len(z), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, (p - zt).pow(2).sum(dim=1).mean(), rtol=1e-5, atol=1e-6)


def test_iso_losses_hand_computed() -> None:
    # W_p = diag(1, 1/4), W_p^(1/2) = diag(1, 1/2); z = [2, 4] gives p = [2, 1], r = [2, 2].
    w_p, w_p_sqrt = torch.diag(torch.tensor([1.0, 0.25])), torch.diag(torch.tensor([1.0, 0.5]))
    z, zt = torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    # <z,zt> = 2, |p| = sqrt(5), |zt| = 1, <p,zt> = 2, |r|^2 = 8:
    # -2 [2 / sqrt5 - 0.5 * 2 / (5 sqrt5) * 8] = -4 / (5 sqrt5)
    assert iso_loss_cosine(z, zt, w_p, w_p_sqrt).item() == pytest.approx(-4 / (5 * math.sqrt(5)), rel=1e-6)
    # ||p - zt||^2 = 1 + 1
    assert iso_loss_euclidean(z, zt, w_p).item() == pytest.approx(2.0, rel=1e-6)


def test_iso_loss_cosine_gradient_orthogonal_to_predictor_output() -> None:
    """The gradient w.r.t. z is a cosine gradient w.r.t. p: orthogonal to p (not to z)."""
    z, zt, w_p, w_p_sqrt = _iso_setup()
    leaf = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(iso_loss_cosine(leaf, zt, w_p, w_p_sqrt), leaf)
    assert F.cosine_similarity(grad, z @ w_p, dim=1).abs().max() < 1e-5
    assert F.cosine_similarity(grad, z, dim=1).abs().max() > 1e-3


def test_iso_losses_reject_bad_shapes() -> None:
    z, zt, w_p, w_p_sqrt = _iso_setup(dim=5)
    with pytest.raises(ValueError, match="w_p"):
        iso_loss_cosine(z, zt, w_p[:4, :4], w_p_sqrt)
    with pytest.raises(ValueError, match="w_p_sqrt"):
        iso_loss_cosine(z, zt, w_p, w_p_sqrt[:, :4])
    with pytest.raises(ValueError, match="same shape"):
        iso_loss_euclidean(z, zt[:3], w_p)


# ---------------------------------------------------------------------------------------------
# FroSSL
# ---------------------------------------------------------------------------------------------


def _frossl_reference(views: list[torch.Tensor], invariance_weight: float) -> torch.Tensor:
    """Always the D x D covariance, columns normalised in an explicit loop, sums via einsum."""
    num_views = len(views)
    n, dim = views[0].shape
    normalised = []
    for v in views:
        v = v.double()
        columns = [v[:, d] / torch.sqrt(torch.einsum("n,n->", v[:, d], v[:, d])) for d in range(dim)]
        normalised.append(torch.stack(columns, dim=1))
    mean_view = sum(normalised) / num_views
    total = torch.zeros((), dtype=torch.float64)
    for z in normalised:
        cov = torch.einsum("nd,ne->de", z, z)
        cov = cov / torch.einsum("dd->", cov).detach()
        squared_error = torch.einsum("nd,nd->", z - mean_view, z - mean_view) / (n * dim)
        regulariser = torch.log(torch.einsum("de,de->", cov, cov))
        total = total + regulariser + invariance_weight * num_views * dim * squared_error
    return total


@pytest.mark.parametrize("shape", [(12, 4), (4, 6), (5, 5)])  # N > D, N < D, N == D branches
@pytest.mark.parametrize("num_views", [2, 3])
def test_frossl_matches_reference(shape: tuple[int, int], num_views: int) -> None:
    views = [_randn(*shape, seed=20 + v) for v in range(num_views)]
    value = frossl_loss(views, invariance_weight=0.7)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.item() == pytest.approx(_frossl_reference(views, 0.7).item(), rel=1e-5, abs=1e-5)
    # Gradients agree too, so the N x N branch is a faithful shortcut for the D x D one.
    leaves = [v.clone().requires_grad_(True) for v in views]
    grads = torch.autograd.grad(frossl_loss(leaves, 0.7), leaves)
    ref_leaves = [v.double().requires_grad_(True) for v in views]
    ref_grads = torch.autograd.grad(_frossl_reference(ref_leaves, 0.7), ref_leaves)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref.float(), rtol=1e-4, atol=1e-5)


def test_frossl_hand_computed() -> None:
    # Both views have orthonormal columns: C = I_2, C / tr(C) has ||.||_F^2 = 1/2.
    v1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    v2 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert frossl_loss([v1, v1]).item() == pytest.approx(2 * math.log(0.5), rel=1e-6)
    # mean view [[1,0],[0,.5],[0,.5]]: each view's squared error is 0.5 over 6 entries;
    # per view the invariance term is V * D * 0.5 / 6 = 1/3.
    assert frossl_loss([v1, v2]).item() == pytest.approx(2 * math.log(0.5) + 2 / 3, rel=1e-6)
    assert frossl_loss([v1, v2], invariance_weight=0.0).item() == pytest.approx(2 * math.log(0.5), rel=1e-6)


def test_frossl_gram_and_covariance_frobenius_norms_agree() -> None:
    z = F.normalize(_randn(7, 3, seed=30), dim=0)
    torch.testing.assert_close(torch.linalg.matrix_norm(z.T @ z), torch.linalg.matrix_norm(z @ z.T))
    torch.testing.assert_close(torch.trace(z.T @ z), torch.trace(z @ z.T))


def test_frossl_invariant_to_per_dimension_scale() -> None:
    """Each dimension is normalised over the batch, so rescaling dimensions (or views) changes nothing."""
    views = [_randn(9, 4, seed=40), _randn(9, 4, seed=41)]
    scale = torch.tensor([0.1, 3.0, 7.0, 1.0])
    torch.testing.assert_close(frossl_loss([views[0] * scale, views[1] * scale * 2.0]), frossl_loss(views))


def test_frossl_rejects_bad_inputs() -> None:
    z = _randn(6, 3)
    with pytest.raises(ValueError, match="at least 2 views"):
        frossl_loss([z])
    with pytest.raises(ValueError, match="same shape"):
        frossl_loss([z, z[:, :2]])
    with pytest.raises(ValueError, match="batch, dim"):
        frossl_loss([z[0], z[0]])
    with pytest.raises(ValueError, match="invariance_weight"):
        frossl_loss([z, z], invariance_weight=-1.0)


# ---------------------------------------------------------------------------------------------
# VICReg
# ---------------------------------------------------------------------------------------------


def test_vicreg_hand_computed() -> None:
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    # invariance: squared differences 0, 1, 0, 1 over 4 entries = 0.5
    # variance: z1 has Var 2 (std > 1, no hinge) and Var 0 (std sqrt(1e-4) = 0.01, hinge 0.99): mean 0.495;
    #           z2 has Var 2 in both dimensions: 0
    # covariance: Cov(z1) = [[2, 0], [0, 0]] has no off-diagonal; Cov(z2) = [[2, 2], [2, 2]]: (4 + 4) / D = 4
    assert vicreg_loss(z1, z2).item() == pytest.approx(25 * 0.5 + 25 * 0.495 + 1 * 4, rel=1e-6)
    assert vicreg_loss(z1, z2, 1.0, 0.0, 0.0).item() == pytest.approx(0.5, rel=1e-6)
    assert vicreg_loss(z1, z2, 0.0, 1.0, 0.0).item() == pytest.approx(0.495, rel=1e-6)
    assert vicreg_loss(z1, z2, 0.0, 0.0, 1.0).item() == pytest.approx(4.0, rel=1e-6)
    assert vicreg_loss(z1, z1, 0.0, 1.0, 0.0, gamma=3.0).item() == pytest.approx(2 * (3 - math.sqrt(2.0001) + 3 - 0.01) / 2, rel=1e-6)


def _vicreg_reference(z1: torch.Tensor, z2: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Explicit sums in float64; ``batch`` gives the views the variance and covariance are computed over."""
    z1, z2 = z1.double(), z2.double()
    n, dim = z1.shape
    invariance = sum((z1[i, d] - z2[i, d]) ** 2 for i in range(n) for d in range(dim)) / (n * dim)
    total = 25 * invariance
    for z in (v.double() for v in batch or (z1, z2)):
        m = len(z)
        mean = [sum(z[i, d] for i in range(m)) / m for d in range(dim)]
        cov = [[sum((z[i, d] - mean[d]) * (z[i, e] - mean[e]) for i in range(m)) / (m - 1) for e in range(dim)] for d in range(dim)]
        total = total + 25 * sum(max(0.0, 1 - math.sqrt(cov[d][d] + 1e-4)) for d in range(dim)) / dim
        total = total + sum(cov[d][e] ** 2 for d in range(dim) for e in range(dim) if d != e) / dim
    return torch.as_tensor(total, dtype=torch.float64)


def test_vicreg_matches_reference_and_gathers_only_variance_and_covariance() -> None:
    z1, z2 = 0.4 * _randn(6, 3, seed=50), 0.4 * _randn(6, 3, seed=51)
    assert vicreg_loss(z1, z2).item() == pytest.approx(_vicreg_reference(z1, z2).item(), rel=1e-5)
    # another rank's rows join the variance and covariance, not the invariance term
    other1, other2 = _randn(4, 3, seed=52), _randn(4, 3, seed=53)
    others = iter([other1, other2])

    def gather(t: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.cat([t, next(others)]), 0

    expected = _vicreg_reference(z1, z2, (torch.cat([z1, other1]), torch.cat([z2, other2])))
    value = vicreg_loss(z1, z2, gather=gather)
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected.item(), rel=1e-5)


def _vicreg_setup() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(0)
    return torch.nn.Linear(6, 3), torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _vicreg_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    try:
        encoder, x1, x2 = _vicreg_setup()
        mine = slice(rank * 4, (rank + 1) * 4)
        vicreg_loss(encoder(x1[mine]), encoder(x2[mine]), gather=all_gather_with_grad).backward()
        for param in encoder.parameters():  # what DDP does with the gradients
            dist.all_reduce(param.grad)
            param.grad /= 2
        torch.save({n: p.grad for n, p in encoder.named_parameters()}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_vicreg_ddp_gradients_equal_the_full_batch(tmp_path: Path) -> None:
    """Variance and covariance over the gathered batch: 2 ranks x 4 rows train like one process with 8."""
    spawn_ranks(_vicreg_worker, str(tmp_path), timeout_s=60)
    encoder, x1, x2 = _vicreg_setup()
    vicreg_loss(encoder(x1), encoder(x2)).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        for name, param in encoder.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-6)


def test_vicreg_rejects_bad_inputs() -> None:
    z = _randn(6, 3)
    with pytest.raises(ValueError, match="same shape"):
        vicreg_loss(z, z[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(z[:1], z[:1])
    with pytest.raises(ValueError, match="variance_weight"):
        vicreg_loss(z, z, variance_weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        vicreg_loss(z, z, eps=float("nan"))
