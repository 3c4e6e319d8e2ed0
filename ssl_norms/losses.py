"""SSL losses as pure functions: InfoNCE, negative cosine, IsoLoss (with closed-form predictors), FroSSL, VICReg.

Every loss upcasts to float32 and switches autocast off for its own body, so under bf16 autocast
the similarity matmuls and logs still run in float32; each returns a float32 scalar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
import torch.nn.functional as F

Gather = Callable[[Tensor], tuple[Tensor, int]]


def _float32_region(t: Tensor) -> torch.autocast:
    """Autocast off on ``t``'s device: otherwise autocast would recast our float32 matmuls to bf16."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_pair(name: str, a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"{name} needs {a_name} of shape (batch, dim) with batch >= 1, got {tuple(a.shape)}")
    if a.shape != b.shape:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"{name} needs {a_name} and {b_name} of the same shape, got {shapes}")


def _check_square(name: str, w: Tensor, dim: int, w_name: str) -> None:
    if w.shape != (dim, dim):
        raise ValueError(f"{name} needs {w_name} of shape ({dim}, {dim}) like the embedding dim, got {tuple(w.shape)}")


# ---------------------------------------------------------------------------------------------
# Contrastive
# ---------------------------------------------------------------------------------------------


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: Gather | None = None) -> Tensor:
    """Symmetric NT-Xent (SimCLR) loss of two views ``z1``, ``z2`` of shape (n, D).

    Rows are the 2n local embeddings; columns are the 2N embeddings of the global batch
    (``gather`` such as :func:`ssl_norms.distributed.all_gather_with_grad` supplies them, both views
    gathered). A row's positive is its other view; its softmax runs over all other 2N-1 columns.
    Returns the mean over local rows, so DDP's average over ranks is the global-batch loss.
    """
    if not temperature > 0:
        raise ValueError(f"info_nce temperature must be > 0, got {temperature}")
    _check_pair("info_nce", z1, z2, "z1", "z2")
    n = z1.shape[0]
    with _float32_region(z1):
        z1, z2 = z1.float(), z2.float()
        rows = F.normalize(torch.cat([z1, z2]), dim=1)
        if gather is None:
            cols, offset, global_n = rows, 0, n
        else:
            # Gather float32 so the cross-rank gradient is float32 too.
            g1, offset = gather(z1)
            g2, _ = gather(z2)
            global_n = g1.shape[0]
            cols = F.normalize(torch.cat([g1, g2]), dim=1)
        logits = rows @ cols.T / temperature  # (2n, 2N)
        local = torch.arange(n, device=logits.device) + offset
        self_cols = torch.cat([local, local + global_n])
        positive_cols = torch.cat([local + global_n, local])
        row_ids = torch.arange(2 * n, device=logits.device)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[row_ids, self_cols] = True
        logits = logits.masked_fill(is_self, float("-inf"))
        return F.cross_entropy(logits, positive_cols)


# ---------------------------------------------------------------------------------------------
# Non-contrastive (BYOL / SimSiam style)
# ---------------------------------------------------------------------------------------------


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean over the batch of ``-cos(p_i, z_i)``; ``z`` is the target and gets no gradient."""
    _check_pair("negative_cosine", p, z, "p", "z")
    with _float32_region(p):
        p_unit = F.normalize(p.float(), dim=1)
        z_unit = F.normalize(z.detach().float(), dim=1)
        return -(p_unit * z_unit).sum(dim=1).mean()


def _normalised_spectrum(name: str, correlation: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Eigenvalues of ``correlation`` clamped at 0 and divided by the largest, with eigenvectors."""
    if correlation.ndim != 2 or correlation.shape[0] != correlation.shape[1] or correlation.shape[0] < 1:
        raise ValueError(f"{name} needs a square (D, D) correlation matrix, got {tuple(correlation.shape)}")
    if not alpha > 0:
        raise ValueError(f"{name} alpha must be > 0, got {alpha}")
    with _float32_region(correlation):
        c = correlation.detach().float()
        # eigh reads one triangle only; symmetrising makes an EMA estimate's rounding asymmetry harmless.
        eigenvalues, eigenvectors = torch.linalg.eigh((c + c.T) / 2)
        s = eigenvalues.clamp(min=0)
        # clamp_min instead of a check: avoids a device sync; an all-zero matrix gives s = 0, not NaN.
        s = s / s.max().clamp_min(torch.finfo(s.dtype).tiny)
    return s, eigenvectors


def isotropic_predictor(correlation: Tensor, alpha: float = 0.5, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Closed-form IsoLoss predictor from an embedding correlation matrix (no gradient flows through it).

    With ``correlation = U diag(s) U^T`` and ``s <- clamp(s, 0) / max(s) + eps``, returns float32
    ``(W_p, W_p_sqrt) = (U diag(s^alpha) U^T, U diag(s^(alpha/2)) U^T)``; ``W_p_sqrt @ W_p_sqrt == W_p``.
    """
    if not eps >= 0:
        raise ValueError(f"isotropic_predictor eps must be >= 0, got {eps}")
    s, u = _normalised_spectrum("isotropic_predictor", correlation, alpha)
    s = s + eps
    with _float32_region(u):
        w_p = (u * s.pow(alpha)) @ u.T
        w_p_sqrt = (u * s.pow(alpha / 2)) @ u.T
    return w_p, w_p_sqrt


def directpred_predictor(correlation: Tensor, alpha: float = 0.5, eps: float = 0.1) -> Tensor:
    """DirectPred's closed-form predictor: ``U diag((clamp(s, 0) / max(s))^alpha + eps) U^T``.

    Unlike :func:`isotropic_predictor`, ``eps`` is added after the power, as in DirectPred
    (Tian et al. 2021), whose default boost of 0.1 keeps weak directions learning. Float32, no grad.
    """
    if not eps >= 0:
        raise ValueError(f"directpred_predictor eps must be >= 0, got {eps}")
    s, u = _normalised_spectrum("directpred_predictor", correlation, alpha)
    with _float32_region(u):
        return (u * (s.pow(alpha) + eps)) @ u.T


def iso_loss_cosine(z: Tensor, zt: Tensor, w_p: Tensor, w_p_sqrt: Tensor) -> Tensor:
    """Cosine IsoLoss: the gradient w.r.t. ``z`` is BYOL's gradient w.r.t. ``p = z @ W_p``.

    With ``r = z @ W_p_sqrt`` and ``zt`` a no-grad target,
    ``loss = -2 mean[<z, zt> / SG(|p||zt|) - 0.5 SG(<p, zt> / (|p|^3 |zt|)) |r|^2]``, so for a
    symmetric ``W_p = W_p_sqrt^2``, ``d loss / d z = d(-2 mean cos(p, zt)) / d p``: the predictor
    shapes the update without multiplying it by ``W_p`` again. The value is invariant to the scale of z.
    """
    _check_pair("iso_loss_cosine", z, zt, "z", "zt")
    dim = z.shape[1]
    _check_square("iso_loss_cosine", w_p, dim, "w_p")
    _check_square("iso_loss_cosine", w_p_sqrt, dim, "w_p_sqrt")
    with _float32_region(z):
        z, zt = z.float(), zt.detach().float()
        p = z @ w_p.float()
        r = z @ w_p_sqrt.float()
        p_norm = torch.linalg.vector_norm(p, dim=1).detach()
        zt_norm = torch.linalg.vector_norm(zt, dim=1)
        alignment = (z * zt).sum(dim=1) / (p_norm * zt_norm)
        radial_weight = (p.detach() * zt).sum(dim=1) / (p_norm.pow(3) * zt_norm)
        return -2 * (alignment - 0.5 * radial_weight * r.pow(2).sum(dim=1)).mean()


def iso_loss_euclidean(z: Tensor, zt: Tensor, w_p: Tensor) -> Tensor:
    """Euclidean IsoLoss: ``mean ||z - SG(zt + z - p)||^2`` with ``p = z @ W_p``.

    Its value is BYOL's ``mean ||p - zt||^2`` but its gradient w.r.t. ``z`` is ``2 (p - zt) / batch``,
    i.e. the gradient w.r.t. ``p`` without the extra multiplication by ``W_p``.
    """
    _check_pair("iso_loss_euclidean", z, zt, "z", "zt")
    _check_square("iso_loss_euclidean", w_p, z.shape[1], "w_p")
    with _float32_region(z):
        z = z.float()
        p = z @ w_p.float()
        target = (zt.detach().float() + z - p).detach()
        return (z - target).pow(2).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# FroSSL
# ---------------------------------------------------------------------------------------------


def frossl_loss(views: Sequence[Tensor], invariance_weight: float = 1.0) -> Tensor:
    """FroSSL loss of V >= 2 views, each of shape (N, D).

    Each view is normalised per embedding dimension over the batch (no centring); its covariance
    ``C_v`` (D x D, or the N x N Gram matrix when N <= D: same Frobenius norm, cheaper) is divided
    by its detached trace. Loss = sum_v [log ||C_v||_F^2 + invariance_weight * V * D * mse(Z_v, mean_v Z)].
    """
    views = list(views)
    if len(views) < 2:
        raise ValueError(f"frossl_loss needs at least 2 views, got {len(views)}")
    shape = views[0].shape
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"frossl_loss needs views of shape (batch, dim), got {tuple(shape)}")
    if any(v.shape != shape for v in views):
        raise ValueError(f"frossl_loss needs all views of the same shape, got {[tuple(v.shape) for v in views]}")
    if not invariance_weight >= 0:
        raise ValueError(f"frossl_loss invariance_weight must be >= 0, got {invariance_weight}")
    n, dim = shape
    num_views = len(views)
    with _float32_region(views[0]):
        normalised = [F.normalize(v.float(), dim=0) for v in views]
        mean_view = torch.stack(normalised).mean(dim=0)
        loss = torch.zeros((), device=views[0].device)
        for z in normalised:
            cov = z.T @ z if n > dim else z @ z.T
            # The trace is only a scale: detaching it keeps it from pushing the gradient.
            cov = cov / torch.trace(cov).detach()
            regulariser = torch.log(cov.pow(2).sum())
            invariance = F.mse_loss(z, mean_view)
            loss = loss + regulariser + invariance_weight * num_views * dim * invariance
        return loss


# ---------------------------------------------------------------------------------------------
# VICReg
# ---------------------------------------------------------------------------------------------


def _variance_hinge(z: Tensor, gamma: float, eps: float) -> Tensor:
    """Mean over dimensions of ``relu(gamma - sqrt(var + eps))``, variance over the batch (unbiased)."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def _off_diagonal_covariance(z: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of the batch covariance, divided by the dimension."""
    n, dim = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    diagonal = torch.eye(dim, dtype=torch.bool, device=z.device)
    return cov.masked_fill(diagonal, 0.0).pow(2).sum() / dim


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gather: Gather | None = None,
) -> Tensor:
    """VICReg loss (Bardes, Ponce & LeCun 2022, Algorithm 1) of two views of shape (n, D).

    ``invariance_weight * mse(z1, z2) + variance_weight * sum_v mean_d relu(gamma - sqrt(Var(z_v[:, d]) + eps))
    + covariance_weight * sum_v sum_{d != e} Cov(z_v)[d, e]^2 / D``, with unbiased variances and
    covariances over the batch. ``gather`` (e.g. :func:`ssl_norms.distributed.all_gather_with_grad`)
    computes the variance and covariance terms over the global batch, as the official
    implementation does; the invariance term is a mean over local rows, so DDP's average over
    ranks is the global-batch loss.
    """
    _check_pair("vicreg_loss", z1, z2, "z1", "z2")
    if z1.shape[0] < 2:
        raise ValueError(f"vicreg_loss needs a batch of at least 2 (variances over the batch), got {z1.shape[0]}")
    weights = {"invariance_weight": invariance_weight, "variance_weight": variance_weight, "covariance_weight": covariance_weight}
    for name, value in {**weights, "gamma": gamma, "eps": eps}.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"vicreg_loss {name} must be a finite number >= 0, got {value}")
    with _float32_region(z1):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        if gather is not None:
            z1, z2 = gather(z1)[0], gather(z2)[0]
        variance = _variance_hinge(z1, gamma, eps) + _variance_hinge(z2, gamma, eps)
        covariance = _off_diagonal_covariance(z1) + _off_diagonal_covariance(z2)
        return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance


# ---------------------------------------------------------------------------------------------
# The paper code's contrastive loss (as-run option of SimCLR)
# ---------------------------------------------------------------------------------------------


def cross_view_nce(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: Gather | None = None) -> Tensor:
    """The contrastive loss the paper's released code trains SimCLR with (SSLEmbeddingNorms
    ``CLA/utils/losses.py:19-46``, its ``nt_xent``), which is *not* NT-Xent:

    ``mean_i [ -s_ii / T + log sum_{j != i} exp(s_ij / T) ]`` with ``s = cos(z1_i, z2_j)``: anchors are
    the rows of ``z1`` only, the candidates the rows of the other view only, and the positive is left
    out of the denominator (a one-sided, decoupled InfoNCE with N - 1 negatives instead of 2N - 2).
    With ``gather`` the candidates are the other view's rows of the global batch.
    """
    if not temperature > 0:
        raise ValueError(f"cross_view_nce temperature must be > 0, got {temperature}")
    _check_pair("cross_view_nce", z1, z2, "z1", "z2")
    with _float32_region(z1):
        z1, z2 = z1.float(), z2.float()
        cols, offset = (z2, 0) if gather is None else gather(z2)
        logits = F.normalize(z1, dim=1) @ F.normalize(cols, dim=1).T / temperature  # (n, N)
        rows = torch.arange(len(z1), device=logits.device)
        positive = logits[rows, rows + offset]
        negatives = logits.index_put((rows, rows + offset), torch.tensor(float("-inf"), device=logits.device))
        return (torch.logsumexp(negatives, dim=1) - positive).mean()
