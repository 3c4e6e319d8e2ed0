"""Aparametric simulations: gradient descent applied to the embeddings themselves.

* :func:`fig2a` - steps until a set of positive pairs converges (mean cosine > threshold) as a
  function of the embedding norm and of the initial angle (paper Fig. 2a).
* the closed forms below, which :func:`ssl_norms.simulations.theory.theory_checks` checks
  numerically (Prop. 3.1, Thm. 3.4, Cor. 3.3) over many random pairs.

Geometry used throughout (z with norm rho, target t, angle phi, step size lr, s = lr / rho^2):
the gradient of cos(z, t) w.r.t. z is (t_hat - cos(phi) z_hat) / rho, orthogonal to z with norm
sin(phi) / rho (Prop. 3.1). An ascent step on the cosine therefore rotates z towards t by an angle
delta with tan(delta) = s sin(phi) and grows its norm to rho * sqrt(1 + s^2 sin^2 phi) (Cor. 3.3).
From this the one-step change of the cosine is exact:

* one side updated:  dcos = s sin^2(phi) cos(delta) - cos(phi) (1 - cos(delta))
* both sides updated (equal norms): dcos = 2 s sin^2(phi) (1 - s cos(phi)) / (1 + s^2 sin^2 phi)

compared with the Thm. 3.4 bound B = 2 s sin^2(phi) (= 2 lr sin^2 phi / rho^2). Consequences
(checked numerically by ``theory_checks``):

* one side: dcos < B for every angle iff s <= 2; for s > 2 it fails for nearly opposite pairs
  (sup of dcos / B is 1/2 + s/4, approached as phi -> pi).
* both sides: dcos < B for every step size when phi <= 90 deg; for obtuse angles
  dcos / B = (1 + s|cos phi|) / (1 + s^2 sin^2 phi), which exceeds 1 whenever
  |cos phi| > s sin^2 phi (always for nearly opposite pairs, and for any obtuse angle once the
  step is small); sup of the ratio is 1 + s. B is exactly the first-order (small-step) change for
  both sides, and the second-order term has the sign of -cos(phi).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ssl_norms.figures import new_figure
from ssl_norms.simulations.output import SimulationOutput
from ssl_norms.simulations.settings import Cosine, Count, Dimension, Interpolation, Positive, Seed
from ssl_norms.threads import one_cpu_thread

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `simulate --help` does without it
    import torch
    from torch import Tensor


# --------------------------------------------------------------------------------------------
# Closed-form helpers
# --------------------------------------------------------------------------------------------


def cosine_grad(z: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of cos(z, target) with respect to z (along the last dim), and the cosine.

    Equals (t_hat - cos * z_hat) / ||z||: orthogonal to z with norm sin(phi) / ||z||.
    """
    import torch.nn.functional as F

    norm = z.norm(dim=-1, keepdim=True)
    z_hat = z / norm
    t_hat = F.normalize(target, dim=-1)
    cos = (z_hat * t_hat).sum(-1, keepdim=True)
    return (t_hat - cos * z_hat) / norm, cos.squeeze(-1)


def exact_cos_change(phi: Tensor, s: Tensor | float, both_sides: bool) -> Tensor:
    """Exact change of cos after one ascent step of size lr on cos (s = lr / rho^2)."""
    import torch

    sin2 = torch.sin(phi) ** 2
    cphi = torch.cos(phi)
    if both_sides:
        return 2 * s * sin2 * (1 - s * cphi) / (1 + s**2 * sin2)
    cos_delta = 1 / torch.sqrt(1 + s**2 * sin2)
    return s * sin2 * cos_delta - cphi * (1 - cos_delta)


def thm34_bound(phi: Tensor, lr: float, rho: float) -> Tensor:
    """The Thm. 3.4 bound 2 lr sin^2(phi) / rho^2."""
    import torch

    return 2 * lr * torch.sin(phi) ** 2 / rho**2


def cos_change(a: Tensor, b: Tensor, a1: Tensor, b1: Tensor) -> Tensor:
    """cos(a1, b1) - cos(a, b) without catastrophic cancellation near 0 and 180 degrees.

    Uses 1 - cos = |a_hat - b_hat|^2 / 2 for acute and 1 + cos = |a_hat + b_hat|^2 / 2 for obtuse
    starting pairs, so tiny changes of nearly (anti-)parallel pairs keep their relative precision.
    """
    import torch
    import torch.nn.functional as F

    a, b, a1, b1 = (F.normalize(v, dim=-1) for v in (a, b, a1, b1))
    minus = ((a - b).pow(2).sum(-1) - (a1 - b1).pow(2).sum(-1)) / 2
    plus = ((a1 + b1).pow(2).sum(-1) - (a + b).pow(2).sum(-1)) / 2
    return torch.where((a * b).sum(-1) >= 0, minus, plus)


def random_unit(n: int, d: int, g: torch.Generator, dtype: torch.dtype | None = None) -> Tensor:
    """``n`` uniform random unit vectors in R^``d`` (float64 unless ``dtype``)."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64 if dtype is None else dtype), dim=-1)


# --------------------------------------------------------------------------------------------
# Fig. 2a
# --------------------------------------------------------------------------------------------


@one_cpu_thread()
def fig2a(
    *,
    norms: Sequence[Positive] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
    interps: Sequence[Interpolation] = (-0.9, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75),
    num_pairs: Count = 500,
    dim: Dimension = 20,
    lr: Positive = 10.0,
    threshold: Cosine = 0.999,
    max_steps: Count = 30_000,
    seed: Seed = 0,
) -> SimulationOutput:
    """Fig 2a: steps to converge vs embedding norm and initial angle (aparametric GD, 500 pairs on S^19, lr 10).

    Steps until ``num_pairs`` positive pairs on S^(dim-1) converge, per (norm, angle) cell. Each
    pair is (x1, x2') with x1, x2 uniform on the sphere and x2' = x2 (1-|a|) + x1 a for ``a`` in
    ``interps`` (a -> -1: nearly opposite, a -> 1: nearly aligned). x1 is the fixed
    target (unit norm); the free embedding is ``norm * x2' / ||x2'||`` and is the parameter.
    Gradient descent with step ``lr`` on the cell's loss -mean_i cos(z_i, x1_i) (so each
    pair moves by lr / num_pairs times its own cosine gradient) runs until the cell's mean cosine
    exceeds ``threshold`` or ``max_steps`` is reached. All cells run at once as one tensor; the
    same base pairs (x1, x2) are used in every cell.
    """
    import torch
    import torch.nn.functional as F

    norms = [float(v) for v in norms]
    interps = [float(v) for v in interps]
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    x1 = random_unit(num_pairs, dim, g)
    x2 = random_unit(num_pairs, dim, g)
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
    return SimulationOutput(numbers=numbers, figure=fig, tables={"": rows}, summary=_fig2a_summary(numbers))


def _fig2a_summary(numbers: dict) -> list[str]:
    p = numbers["params"]
    lines = ["steps until mean cos > {threshold} (rows: interp a / initial angle; columns: norm)".format(**p),
             "    a      angle  " + "".join(f"{n:>8g}" for n in p["norms"])]
    for a, angle, row in zip(p["interps"], numbers["init_mean_angle_deg"], numbers["steps"]):
        lines.append(f"  {a:+.2f}  {angle:6.1f}°  " + "".join(f"{('>' + str(p['max_steps'])) if s is None else s:>8}" for s in row))
    lines.append(f"cells not converged within {p['max_steps']} steps: {numbers['num_cells_not_converged']}")
    return lines


def _log_steps_axis(ax, converged_steps: np.ndarray) -> None:
    """A log y axis when some cell converged after >= 1 step; without a positive value (nothing
    converged, or everything at step 0) matplotlib cannot draw one, so the axis stays linear."""
    if (converged_steps > 0).any():
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no cell converged after >= 1 step", transform=ax.transAxes, ha="center")


def _plot_fig2a(steps_m, norms, interps, init_angle_deg, max_steps, threshold, num_pairs, dim, lr):
    from matplotlib.colors import LogNorm

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
    _log_steps_axis(ax_n, vals[ok])
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
    _log_steps_axis(ax_a, vals[ok])
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
