"""Aparametric simulations: gradient descent applied to the embeddings themselves.

* :func:`fig2a` - steps until a set of positive pairs converges (mean cosine > threshold) as a
  function of the embedding norm and of the initial angle (paper Fig. 2a).
* :func:`theory_checks` - numerical checks of Prop. 3.1, Thm. 3.4 and Cor. 3.3 over many random
  pairs, including the exact one-step change of the cosine similarity.

Geometry used throughout (z with norm rho, target t, angle phi, step size lr, s = lr / rho^2):
the gradient of cos(z, t) w.r.t. z is (t_hat - cos(phi) z_hat) / rho, orthogonal to z with norm
sin(phi) / rho (Prop. 3.1). An ascent step on the cosine therefore rotates z towards t by an angle
delta with tan(delta) = s sin(phi) and grows its norm to rho * sqrt(1 + s^2 sin^2 phi) (Cor. 3.3).
From this the one-step change of the cosine is exact:

* one side updated:  dcos = s sin^2(phi) cos(delta) - cos(phi) (1 - cos(delta))
* both sides updated (equal norms): dcos = 2 s sin^2(phi) (1 - s cos(phi)) / (1 + s^2 sin^2 phi)

compared with the Thm. 3.4 bound B = 2 s sin^2(phi) (= 2 lr sin^2 phi / rho^2). Consequences
(checked numerically by :func:`theory_checks`):

* one side: dcos < B for every angle iff s <= 2; for s > 2 it fails for nearly opposite pairs
  (sup of dcos / B is 1/2 + s/4, approached as phi -> pi).
* both sides: dcos < B for every step size when phi <= 90 deg; for obtuse angles
  dcos / B = (1 + s|cos phi|) / (1 + s^2 sin^2 phi), which exceeds 1 whenever
  |cos phi| > s sin^2 phi (always for nearly opposite pairs, and for any obtuse angle once the
  step is small); sup of the ratio is 1 + s. B is exactly the first-order (small-step) change for
  both sides, and the second-order term has the sign of -cos(phi).
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from matplotlib.colors import LogNorm

from ssl_norms.simulations.plotting import SimulationOutput, new_figure

@contextmanager
def _torch_threads(n: int):
    """Temporarily limit intra-op threads (restored on exit).

    The step loops here work on small tensors for thousands of iterations; intra-op
    parallelism only adds synchronisation overhead (measured 3-30x slower with 2 threads on a
    busy 2-core machine).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _torch_threads(1):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# Closed-form helpers
# --------------------------------------------------------------------------------------------


def cosine_grad(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of cos(z, target) with respect to z (along the last dim), and the cosine.

    Equals (t_hat - cos * z_hat) / ||z||: orthogonal to z with norm sin(phi) / ||z||.
    """
    norm = z.norm(dim=-1, keepdim=True)
    z_hat = z / norm
    t_hat = F.normalize(target, dim=-1)
    cos = (z_hat * t_hat).sum(-1, keepdim=True)
    return (t_hat - cos * z_hat) / norm, cos.squeeze(-1)


def exact_cos_change(phi: Tensor, s: Tensor | float, both_sides: bool) -> Tensor:
    """Exact change of cos after one ascent step of size lr on cos (s = lr / rho^2)."""
    sin2 = torch.sin(phi) ** 2
    cphi = torch.cos(phi)
    if both_sides:
        return 2 * s * sin2 * (1 - s * cphi) / (1 + s**2 * sin2)
    cos_delta = 1 / torch.sqrt(1 + s**2 * sin2)
    return s * sin2 * cos_delta - cphi * (1 - cos_delta)


def thm34_bound(phi: Tensor, lr: float, rho: float) -> Tensor:
    """The Thm. 3.4 bound 2 lr sin^2(phi) / rho^2."""
    return 2 * lr * torch.sin(phi) ** 2 / rho**2


def cos_change(a: Tensor, b: Tensor, a1: Tensor, b1: Tensor) -> Tensor:
    """cos(a1, b1) - cos(a, b) without catastrophic cancellation near 0 and 180 degrees.

    Uses 1 - cos = |a_hat - b_hat|^2 / 2 for acute and 1 + cos = |a_hat + b_hat|^2 / 2 for obtuse
    starting pairs, so tiny changes of nearly (anti-)parallel pairs keep their relative precision.
    """
    a, b, a1, b1 = (F.normalize(v, dim=-1) for v in (a, b, a1, b1))
    minus = ((a - b).pow(2).sum(-1) - (a1 - b1).pow(2).sum(-1)) / 2
    plus = ((a1 + b1).pow(2).sum(-1) - (a + b).pow(2).sum(-1)) / 2
    return torch.where((a * b).sum(-1) >= 0, minus, plus)


def _random_unit(n: int, d: int, g: torch.Generator, dtype=torch.float64) -> Tensor:
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def _pairs_with_angles(phi: Tensor, d: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Unit vectors (u, w) in R^d with angle(u, w) = phi (random orientation)."""
    u = _random_unit(len(phi), d, g, phi.dtype)
    v = torch.randn(len(phi), d, generator=g, dtype=phi.dtype)
    v = F.normalize(v - (v * u).sum(-1, keepdim=True) * u, dim=-1)
    w = torch.cos(phi)[:, None] * u + torch.sin(phi)[:, None] * v
    return u, w


# --------------------------------------------------------------------------------------------
# Fig. 2a
# --------------------------------------------------------------------------------------------


@_single_threaded
def fig2a(
    *,
    norms: Sequence[float] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
    interps: Sequence[float] = (-0.9, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75),
    num_pairs: int = 500,
    dim: int = 20,
    lr: float = 10.0,
    threshold: float = 0.999,
    max_steps: int = 30_000,
    seed: int = 0,
) -> SimulationOutput:
    """Steps until ``num_pairs`` positive pairs on S^(dim-1) converge, per (norm, angle) cell.

    Each pair is (x1, x2') with x1, x2 uniform on the sphere and x2' = x2 (1-|a|) + x1 a for
    ``a`` in ``interps`` (a -> -1: nearly opposite, a -> 1: nearly aligned). x1 is the fixed
    target (unit norm); the free embedding is ``norm * x2' / ||x2'||`` and is the parameter.
    Gradient descent with step ``lr`` on the cell's loss -mean_i cos(z_i, x1_i) (so each
    pair moves by lr / num_pairs times its own cosine gradient) runs until the cell's mean cosine
    exceeds ``threshold`` or ``max_steps`` is reached. All cells run at once as one tensor; the
    same base pairs (x1, x2) are used in every cell.
    """
    norms = [float(v) for v in norms]
    interps = [float(v) for v in interps]
    if not norms or not interps:
        raise ValueError("fig2a needs at least one norm and one interp value")
    if any(v <= 0 for v in norms):
        raise ValueError(f"norms must be positive, got {norms}")
    if any(abs(a) > 1 for a in interps):
        raise ValueError(f"interps must lie in [-1, 1], got {interps}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    x1 = _random_unit(num_pairs, dim, g)
    x2 = _random_unit(num_pairs, dim, g)
    A, R = len(interps), len(norms)
    a = torch.tensor(interps, dtype=torch.float64)[:, None, None]
    directions = F.normalize(x2[None] * (1 - a.abs()) + x1[None] * a, dim=-1)  # (A, N, d)
    # cells laid out as (angle, norm) -> flat index ia * R + ir
    z = (directions[:, None] * torch.tensor(norms, dtype=torch.float64)[None, :, None, None]).reshape(A * R, num_pairs, dim)
    init_cos = (directions * x1[None]).sum(-1)  # (A, N)

    C = A * R
    steps = torch.full((C,), -1, dtype=torch.long)
    first_hit = torch.full((C, num_pairs), -1, dtype=torch.long)
    final_mean_cos = torch.zeros(C, dtype=torch.float64)
    pairs_below = torch.zeros(C, dtype=torch.long)
    final_norm = torch.zeros(C, dtype=torch.float64)

    active = torch.arange(C)
    za = z.clone()
    fh_a = first_hit.clone()
    step_size = lr / num_pairs  # gradient of the *mean* over pairs
    for t in range(max_steps + 1):
        # z <- z + step * grad cos(z, x1) = z + step * (x1 - cos z_hat) / ||z||   (x1 is unit norm)
        sq = (za * za).sum(-1)
        norm = sq.sqrt()
        cos = (za * x1).sum(-1) / norm
        hit = (cos > threshold) & (fh_a < 0)
        fh_a.masked_fill_(hit, t)
        mean_cos = cos.mean(-1)
        done = mean_cos > threshold
        if t == max_steps:
            done = torch.ones_like(done)
        if done.any():
            idx = active[done]
            steps[idx] = torch.where(mean_cos[done] > threshold, t, -1)
            final_mean_cos[idx] = mean_cos[done]
            pairs_below[idx] = (cos[done] <= threshold).sum(-1)
            final_norm[idx] = norm[done].mean(-1)
            first_hit[idx] = fh_a[done]
            keep = ~done
            active, za, fh_a = active[keep], za[keep], fh_a[keep]
            norm, sq, cos = norm[keep], sq[keep], cos[keep]
            if len(active) == 0:
                break
        za = za * (1 - step_size * cos / sq).unsqueeze(-1) + (step_size / norm).unsqueeze(-1) * x1
    runtime = time.perf_counter() - t0

    steps_m = steps.reshape(A, R)
    conv = steps_m >= 0
    init_mean_cos = init_cos.mean(-1)
    init_angle_deg = torch.rad2deg(torch.arccos(init_cos.clamp(-1, 1))).mean(-1)
    pair_median = []
    for c in range(C):
        fh = first_hit[c]
        pair_median.append(float(fh[fh >= 0].double().median()) if (fh >= 0).any() else None)

    rows = []
    for ia, av in enumerate(interps):
        for ir, rv in enumerate(norms):
            c = ia * R + ir
            rows.append(
                {
                    "interp": av,
                    "init_mean_cos": float(init_mean_cos[ia]),
                    "init_mean_angle_deg": float(init_angle_deg[ia]),
                    "norm": rv,
                    "steps": int(steps[c]) if steps[c] >= 0 else None,
                    "converged": bool(steps[c] >= 0),
                    "final_mean_cos": float(final_mean_cos[c]),
                    "pairs_not_converged": int(pairs_below[c]),
                    "median_pair_first_hit": pair_median[c],
                    "final_mean_norm": float(final_norm[c]),
                }
            )
    steps_table = [[int(v) if v >= 0 else None for v in row] for row in steps_m.tolist()]
    numbers = {
        "params": {
            "norms": norms, "interps": interps, "num_pairs": num_pairs, "dim": dim, "lr": lr,
            "per_pair_step": step_size, "threshold": threshold, "max_steps": max_steps, "seed": seed,
        },
        "init_mean_cos": init_mean_cos.tolist(),
        "init_mean_angle_deg": init_angle_deg.tolist(),
        "steps": steps_table,  # [interp][norm]; None = did not converge within max_steps
        "num_cells_not_converged": int((~conv).sum()),
        "cells_not_converged": [
            {"interp": interps[ia], "norm": norms[ir], "pairs_below_threshold": int(pairs_below[ia * R + ir]),
             "final_mean_cos": float(final_mean_cos[ia * R + ir])}
            for ia in range(A) for ir in range(R) if not conv[ia, ir]
        ],
        "runtime_s": runtime,
    }
    fig = _plot_fig2a(steps_m, norms, interps, init_angle_deg, max_steps, threshold, num_pairs, dim, lr)
    return SimulationOutput(numbers=numbers, figure=fig, tables={"": rows})


def _plot_fig2a(steps_m, norms, interps, init_angle_deg, max_steps, threshold, num_pairs, dim, lr):
    fig, (ax_h, ax_n, ax_a) = new_figure(1, 3, width=5.2, height=4.4)
    A, R = steps_m.shape
    vals = steps_m.double().numpy()
    capped = vals < 0
    shown = np.where(capped, max_steps, np.maximum(vals, 1))
    norm = LogNorm(vmin=max(1, shown.min()), vmax=max(shown.max(), 2))
    im = ax_h.imshow(shown, origin="lower", aspect="auto", cmap="viridis", norm=norm)
    for ia in range(A):
        for ir in range(R):
            txt = f">{max_steps}" if capped[ia, ir] else f"{int(vals[ia, ir])}"
            lum = norm(shown[ia, ir])
            ax_h.text(ir, ia, txt, ha="center", va="center", fontsize=7,
                      color="black" if lum > 0.6 else "white")
    ax_h.set_xticks(range(R), [f"{v:g}" for v in norms])
    ax_h.set_yticks(range(A), [f"{a:+.2f}\n({d:.0f}°)" for a, d in zip(interps, init_angle_deg.tolist())],
                    fontsize=7)
    ax_h.set_xlabel("embedding norm of the free side")
    ax_h.set_ylabel("interpolation a  (mean initial angle)")
    ax_h.set_title(f"Steps until mean cos > {threshold}")
    fig.colorbar(im, ax=ax_h, label="gradient steps (log scale)")

    for ia in range(A):
        y = np.where(capped[ia], np.nan, vals[ia])
        ax_n.plot(norms, y, "o-", label=f"{init_angle_deg[ia]:.0f}°")
    ok = ~capped
    if ok.any():  # reference slope: steps proportional to norm^2 (Thm. 3.4)
        ia0, ir0 = np.argwhere(ok)[0]
        ref = vals[ia0, ir0] * (np.asarray(norms) / norms[ir0]) ** 2
        ax_n.plot(norms, ref, "k--", lw=1, label="∝ norm²")
    ax_n.set_xscale("log")
    ax_n.set_yscale("log")
    ax_n.set_xticks(norms, [f"{v:g}" for v in norms])
    ax_n.minorticks_off()
    ax_n.set_xlabel("embedding norm (log)")
    ax_n.set_ylabel("steps to converge (log)")
    ax_n.set_title("Steps vs norm, one curve per initial angle")
    ax_n.legend(title="initial angle", fontsize=7, title_fontsize=8, loc="upper left")
    ax_n.grid(True, which="both", alpha=0.3)

    for ir in range(R):
        y = np.where(capped[:, ir], np.nan, vals[:, ir])
        ax_a.plot(init_angle_deg.numpy(), y, "o-", label=f"norm {norms[ir]:g}")
    ax_a.set_yscale("log")
    ax_a.set_xlabel("mean initial angle between pair (degrees)")
    ax_a.set_ylabel("steps to converge (log)")
    ax_a.set_title("Steps vs initial angle, one curve per norm")
    ax_a.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_a.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"Fig. 2a: {num_pairs} positive pairs on S^{dim - 1}, GD on -mean cos with lr {lr:g} "
        f"(missing points / '>' = not converged in {max_steps} steps)",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------
# Theory checks
# --------------------------------------------------------------------------------------------


def _info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR-style InfoNCE (NT-Xent) on cosine logits: 2B samples, positives are the other view."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


@_single_threaded
def theory_checks(
    *,
    num_pairs: int = 10_000,
    dim: int = 20,
    lrs: Sequence[float] = (0.01, 0.1, 0.5, 1.0, 4.0, 10.0),
    norms: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    batch_size: int = 256,
    num_batches: int = 8,
    temperature: float = 0.1,
    seed: int = 0,
) -> SimulationOutput:
    """Numerical checks of Prop. 3.1, Thm. 3.4 (one side and both sides) and Cor. 3.3.

    Pairs: half have independent uniform directions (angles concentrated near 90 deg in high
    dimension), half have an angle drawn uniformly in (0, pi) so obtuse and nearly opposite pairs
    are well represented. Both embeddings have norm ``rho`` (Thm. 3.4 is for equal norms). For
    each (lr, rho) one ascent step of size lr on cos is taken, updating one side only and both
    sides simultaneously, and the observed change is compared to B = 2 lr sin^2(phi) / rho^2 and
    to the exact closed form. Cor. 3.3 is checked for those steps and for SGD steps of size lr on
    a SimCLR InfoNCE loss (autograd) over random batches with log-uniform norms in [0.1, 10].
    """
    t0 = time.perf_counter()
    lrs = [float(v) for v in lrs]
    norms = [float(v) for v in norms]
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    n_rand = num_pairs // 2
    u_r = _random_unit(n_rand, dim, g)
    w_r = _random_unit(n_rand, dim, g)
    phi_u = torch.rand(num_pairs - n_rand, generator=g, dtype=dt) * math.pi
    u_a, w_a = _pairs_with_angles(phi_u, dim, g)
    u = torch.cat([u_r, u_a])
    w = torch.cat([w_r, w_a])
    cos0 = (u * w).sum(-1)
    sin = (w - cos0[:, None] * u).norm(dim=-1)  # accurate near 0 and pi, unlike sin(arccos(.))
    phi = torch.atan2(sin, cos0)
    tol = 1e-12  # relative float64 tolerance for "never shrinks"
    btol = 1e-9  # relative float64 tolerance for "observed >= bound"

    # Prop. 3.1 (independent of scale): gradient vs autograd, orthogonality, magnitude
    prop = {}
    for rho in norms:
        zi = (u * rho).requires_grad_(True)
        cos = F.cosine_similarity(zi, w * rho, dim=-1)
        (auto,) = torch.autograd.grad(cos.sum(), zi)
        ours, _ = cosine_grad(zi.detach(), w * rho)
        prop[rho] = {
            "max_abs_diff_vs_autograd": float((auto - ours).abs().max()),
            "max_abs_cos_grad_z": float(((ours * zi.detach()).sum(-1) / (ours.norm(dim=-1) * rho))[sin > 1e-6].abs().max()),
            "max_rel_err_magnitude": float(((ours.norm(dim=-1) - sin / rho).abs() / (sin / rho))[sin > 1e-6].max()),
        }

    rows = []
    ratios = {"one_small": [], "one_large": [], "both_acute": [], "both_obtuse": []}
    ratio_scatter = []  # (phi, ratio, mode, s) subsample for plotting
    norm_violations_cos = 0
    norm_min_rel_growth = math.inf
    closed_form_err = 0.0
    gen_viol_one = gen_viol_both = both_mismatch = 0
    for lr in lrs:
        for rho in norms:
            s = lr / rho**2
            zi, zj = u * rho, w * rho
            gi, _ = cosine_grad(zi, zj)
            gj, _ = cosine_grad(zj, zi)
            bound = thm34_bound(phi, lr, rho)
            # one side
            zi1 = zi + lr * gi
            d_one = cos_change(zi, zj, zi1, zj)
            # both sides, simultaneous
            zj1 = zj + lr * gj
            d_both = cos_change(zi, zj, zi1, zj1)
            closed_form_err = max(
                closed_form_err,
                float((d_one - exact_cos_change(phi, s, False)).abs().max()),
                float((d_both - exact_cos_change(phi, s, True)).abs().max()),
            )
            ok = bound > 1e-12  # the ratio is meaningless for (numerically) parallel pairs
            r_one = d_one[ok] / bound[ok]
            r_both = d_both[ok] / bound[ok]
            viol_one = int((r_one >= 1 + btol).sum())
            acute = (cos0 >= 0)[ok]
            viol_both_acute = int((r_both >= 1 + btol)[acute].sum())
            viol_both_obtuse = int((r_both >= 1 + btol)[~acute].sum())
            # the both-sides violation set should be exactly {|cos phi| > s sin^2 phi, phi > 90 deg}
            margin = (-cos0 - s * sin**2)[ok]
            predicted = margin > 0
            clear = margin.abs() > 1e-9
            both_mismatch += int(((r_both >= 1 + btol) != predicted)[clear].sum())
            # bounds that hold for every step size (derived from the exact change, see module doc)
            gen_viol_one += int((r_one >= (0.5 + s / 4) * (1 + btol)).sum())
            gen_viol_both += int((r_both >= (1 + s) * (1 + btol)).sum())
            (ratios["one_small"] if s <= 2 else ratios["one_large"]).append(r_one)
            ratios["both_acute"].append(r_both[acute])
            ratios["both_obtuse"].append(r_both[~acute])
            sub = slice(n_rand, None, max(1, (num_pairs - n_rand) // 400))
            ratio_scatter.append((phi[sub], (d_one / bound)[sub], (d_both / bound)[sub], s))
            # Cor. 3.3 for the pure cosine steps (all four updated embeddings)
            growth = torch.cat([zi1.norm(dim=-1) / rho, zj1.norm(dim=-1) / rho])
            norm_violations_cos += int((growth < 1 - tol).sum())
            norm_min_rel_growth = min(norm_min_rel_growth, float(growth.min() - 1))
            rows.append(
                {
                    "lr": lr, "rho": rho, "s": s,
                    "one_side_violations": viol_one, "one_side_max_ratio": float(r_one.max()),
                    "one_side_predicted_sup": 0.5 + s / 4 if s > 0 else None,
                    "both_sides_violations_acute": viol_both_acute,
                    "both_sides_violations_obtuse": viol_both_obtuse,
                    "both_sides_max_ratio_acute": float(r_both[acute].max()) if acute.any() else None,
                    "both_sides_max_ratio_obtuse": float(r_both[~acute].max()) if (~acute).any() else None,
                    "both_sides_predicted_sup": 1 + s,
                    "pairs": int(ok.sum()),
                }
            )

    # Cor. 3.3 for InfoNCE steps on batches (autograd), embeddings are the parameters
    info_viol = 0
    info_checked = 0
    info_min_growth = math.inf
    info_max_abs_cos = 0.0
    for lr in lrs:
        for _ in range(num_batches):
            base = _random_unit(batch_size, dim, g)
            v1 = F.normalize(base + 0.3 * torch.randn(batch_size, dim, generator=g, dtype=dt), dim=-1)
            v2 = F.normalize(base + 0.3 * torch.randn(batch_size, dim, generator=g, dtype=dt), dim=-1)
            scales = torch.exp(torch.empty(2, batch_size, 1, dtype=dt).uniform_(math.log(0.1), math.log(10), generator=g))
            z1 = (v1 * scales[0]).requires_grad_(True)
            z2 = (v2 * scales[1]).requires_grad_(True)
            loss = _info_nce(z1, z2, temperature)
            g1, g2 = torch.autograd.grad(loss, (z1, z2))
            for zz, gg in ((z1.detach(), g1), (z2.detach(), g2)):
                new = zz - lr * gg
                growth = new.norm(dim=-1) / zz.norm(dim=-1)
                info_viol += int((growth < 1 - tol).sum())
                info_checked += len(zz)
                info_min_growth = min(info_min_growth, float(growth.min() - 1))
                nz = gg.norm(dim=-1) > 0
                cosg = ((gg * zz).sum(-1) / (gg.norm(dim=-1) * zz.norm(dim=-1)))[nz]
                info_max_abs_cos = max(info_max_abs_cos, float(cosg.abs().max()))

    cat = {k: (torch.cat(v) if v else torch.empty(0, dtype=dt)) for k, v in ratios.items()}
    one_small_viol = sum(r["one_side_violations"] for r in rows if r["s"] <= 2)
    one_large_viol = sum(r["one_side_violations"] for r in rows if r["s"] > 2)
    both_acute_viol = sum(r["both_sides_violations_acute"] for r in rows)
    both_obtuse_viol = sum(r["both_sides_violations_obtuse"] for r in rows)

    def _max(t):
        return float(t.max()) if len(t) else None

    numbers = {
        "params": {"num_pairs": num_pairs, "dim": dim, "lrs": lrs, "norms": norms,
                   "batch_size": batch_size, "num_batches": num_batches, "temperature": temperature, "seed": seed},
        "prop_3_1": {str(k): v for k, v in prop.items()},
        "closed_form_max_abs_err": closed_form_err,
        "thm_3_4": {
            "bound": "cos(z_i', z_j') - cos(z_i, z_j) < 2 lr sin^2(phi) / rho^2, equal norms rho, one ascent step on cos",
            "one_side_small_step": {"condition": "s = lr / rho^2 <= 2", "violations": one_small_viol,
                                    "max_ratio": _max(cat["one_small"]), "checked": int(cat["one_small"].numel())},
            "one_side_large_step": {"condition": "s > 2", "violations": one_large_viol,
                                    "max_ratio": _max(cat["one_large"]), "checked": int(cat["one_large"].numel())},
            "both_sides_acute": {"condition": "phi <= 90 deg, any lr", "violations": both_acute_viol,
                                 "max_ratio": _max(cat["both_acute"]), "checked": int(cat["both_acute"].numel())},
            "both_sides_obtuse": {"condition": "phi > 90 deg", "violations": both_obtuse_viol,
                                  "max_ratio": _max(cat["both_obtuse"]), "checked": int(cat["both_obtuse"].numel()),
                                  "note": "expected: violated iff |cos phi| > s sin^2 phi; ratio < 1 + s",
                                  "mismatches_with_predicted_condition": both_mismatch},
            "relative_tolerance": btol,
            "any_step_bounds": {
                "one_side": "dcos < lr sin^2(phi) / rho^2 * (1 + lr / (2 rho^2))",
                "one_side_violations": gen_viol_one,
                "both_sides": "dcos < 2 lr sin^2(phi) / rho^2 * (1 + lr / rho^2)",
                "both_sides_violations": gen_viol_both,
            },
        },
        "cor_3_3": {
            "cosine_step_violations": norm_violations_cos,
            "cosine_step_min_relative_growth": norm_min_rel_growth,
            "infonce_step_violations": info_viol,
            "infonce_embeddings_checked": info_checked,
            "infonce_min_relative_growth": info_min_growth,
            "infonce_max_abs_cos_grad_z": info_max_abs_cos,
            "tolerance_relative": tol,
        },
        "runtime_s": time.perf_counter() - t0,
    }
    fig = _plot_theory(cat, ratio_scatter)
    return SimulationOutput(numbers=numbers, figure=fig, tables={"": rows})


def _plot_theory(cat, ratio_scatter):
    fig, (ax_h, ax_s) = new_figure(1, 2, width=5.6, height=4.3)
    labels = {
        "one_small": "one side, lr/ρ² ≤ 2",
        "one_large": "one side, lr/ρ² > 2",
        "both_acute": "both sides, φ ≤ 90°",
        "both_obtuse": "both sides, φ > 90°",
    }
    bins = np.linspace(0, 2.0, 81)
    for k, lab in labels.items():
        r = cat[k].numpy()
        if r.size:
            ax_h.hist(np.clip(r, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.5, density=True,
                      label=f"{lab} (max {r.max():.7g})")
    ax_h.axvline(1.0, color="k", ls="--", lw=1, label="bound (ratio = 1)")
    ax_h.set_yscale("log")
    ax_h.set_xlabel("observed Δcos / (2 lr sin²φ / ρ²)   (clipped to [0, 2])")
    ax_h.set_ylabel("density (log)")
    ax_h.set_title("Thm. 3.4: one-step cosine change vs bound")
    ax_h.legend(fontsize=7)

    show_s = sorted({s for *_, s in ratio_scatter})
    wanted = [0.01, 0.25, 2.0, 40.0]
    picks = sorted({min(show_s, key=lambda v: abs(math.log(v / w))) for w in wanted})
    first = {}
    for item in ratio_scatter:
        first.setdefault(item[-1], item)
    for s in picks:
        phi, r1, r2, _ = first[s]
        order = torch.argsort(phi)
        deg = torch.rad2deg(phi[order]).numpy()
        line = ax_s.plot(deg, r2[order].numpy(), "-", lw=1.4, label=f"both sides, s={s:.3g}")[0]
        ax_s.plot(deg, r1[order].numpy(), ":", lw=1.6, color=line.get_color(), label=f"one side, s={s:.3g}")
    ax_s.axhline(1.0, color="k", ls="--", lw=1, label="bound")
    ax_s.set_ylim(-0.6, 2.5)
    ax_s.set_xlim(0, 180)
    ax_s.set_xlabel("angle φ between the pair (degrees)")
    ax_s.set_ylabel("observed Δcos / bound  (clipped to [-0.6, 2.5])")
    ax_s.set_title("Ratio vs angle, s = lr / ρ² (negative = overshoot)")
    ax_s.legend(fontsize=7, ncol=2, loc="upper left")
    ax_s.grid(True, alpha=0.3)
    fig.suptitle("Theory checks (float64): Thm. 3.4 bound, exact one-step change", fontsize=10)
    return fig
