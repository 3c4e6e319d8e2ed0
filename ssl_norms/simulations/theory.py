"""Numerical checks of Prop. 3.1, Thm. 3.4 and Cor. 3.3 over many random pairs (float64).

The closed forms they are checked against, and what they predict, are in
:mod:`ssl_norms.simulations.aparametric` (module docstring).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ssl_norms.figures import new_figure
from ssl_norms.simulations.aparametric import random_unit, cos_change, cosine_grad, exact_cos_change, thm34_bound
from ssl_norms.simulations.output import SimulationOutput
from ssl_norms.simulations.settings import Count, Dimension, Positive, Seed, Several
from ssl_norms.threads import one_cpu_thread

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `simulate --help` does without it
    import torch
    from torch import Tensor

GROWTH_TOL = 1e-12  # relative float64 tolerance for "the norm never shrinks"
BOUND_TOL = 1e-9  # relative float64 tolerance for "observed >= bound"


@dataclass
class Pairs:
    """Unit pairs (u, w) at angle phi: the first ``num_random`` with independent directions, the
    rest with an angle drawn uniformly in (0, pi)."""

    u: Tensor
    w: Tensor
    num_random: int

    def __post_init__(self) -> None:
        import torch

        self.cos = (self.u * self.w).sum(-1)
        self.sin = (self.w - self.cos[:, None] * self.u).norm(dim=-1)  # accurate near 0 and pi, unlike sin(arccos(.))
        self.phi = torch.atan2(self.sin, self.cos)


def sample_pairs(num_pairs: int, dim: int, g: torch.Generator) -> Pairs:
    """Half independent uniform directions (angles near 90 deg in high dimension), half at an angle
    uniform in (0, pi), so obtuse and nearly opposite pairs are well represented."""
    import torch

    num_random = num_pairs // 2
    u_r, w_r = random_unit(num_random, dim, g), random_unit(num_random, dim, g)
    phi = torch.rand(num_pairs - num_random, generator=g, dtype=torch.float64) * math.pi
    u_a, w_a = _pairs_with_angles(phi, dim, g)
    return Pairs(torch.cat([u_r, u_a]), torch.cat([w_r, w_a]), num_random)


def _pairs_with_angles(phi: Tensor, d: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Unit vectors (u, w) in R^d with angle(u, w) = phi (random orientation)."""
    import torch
    import torch.nn.functional as F

    u = random_unit(len(phi), d, g, phi.dtype)
    v = torch.randn(len(phi), d, generator=g, dtype=phi.dtype)
    v = F.normalize(v - (v * u).sum(-1, keepdim=True) * u, dim=-1)
    w = torch.cos(phi)[:, None] * u + torch.sin(phi)[:, None] * v
    return u, w


def check_prop_3_1(pairs: Pairs, rho: float) -> dict[str, float]:
    """The cosine gradient against autograd, its orthogonality to z and its magnitude sin(phi) / rho."""
    import torch
    import torch.nn.functional as F

    zi = (pairs.u * rho).requires_grad_(True)
    (auto,) = torch.autograd.grad(F.cosine_similarity(zi, pairs.w * rho, dim=-1).sum(), zi)
    ours, _ = cosine_grad(zi.detach(), pairs.w * rho)
    informative = pairs.sin > 1e-6
    return {
        "max_abs_diff_vs_autograd": float((auto - ours).abs().max()),
        "max_abs_cos_grad_z": float(((ours * zi.detach()).sum(-1) / (ours.norm(dim=-1) * rho))[informative].abs().max()),
        "max_rel_err_magnitude": float(((ours.norm(dim=-1) - pairs.sin / rho).abs() / (pairs.sin / rho))[informative].max()),
    }


@dataclass
class StepChecks:
    """One ascent step of size lr on cos for every (lr, rho), one side and both sides updated,
    compared with the Thm. 3.4 bound, the exact change and Cor. 3.3; accumulated over (lr, rho)."""

    rows: list[dict] = field(default_factory=list)
    ratios: dict[str, list[Tensor]] = field(default_factory=lambda: {"one_small": [], "one_large": [], "both_acute": [], "both_obtuse": []})
    scatter: list[tuple] = field(default_factory=list)  # (phi, one-side ratio, both-sides ratio, s), subsampled for the plot
    closed_form_err: float = 0.0
    any_step_violations_one: int = 0
    any_step_violations_both: int = 0
    obtuse_mismatches: int = 0
    norm_violations: int = 0
    norm_min_growth: float = math.inf

    def add(self, pairs: Pairs, lr: float, rho: float) -> None:
        import torch

        s = lr / rho**2
        zi, zj = pairs.u * rho, pairs.w * rho
        gi, _ = cosine_grad(zi, zj)
        gj, _ = cosine_grad(zj, zi)
        bound = thm34_bound(pairs.phi, lr, rho)
        zi1, zj1 = zi + lr * gi, zj + lr * gj
        d_one, d_both = cos_change(zi, zj, zi1, zj), cos_change(zi, zj, zi1, zj1)  # one side / both at once
        self.closed_form_err = max(
            self.closed_form_err,
            float((d_one - exact_cos_change(pairs.phi, s, False)).abs().max()),
            float((d_both - exact_cos_change(pairs.phi, s, True)).abs().max()),
        )
        ok = bound > 1e-12  # the ratio is meaningless for (numerically) parallel pairs or a vanishing step s
        r_one, r_both = d_one[ok] / bound[ok], d_both[ok] / bound[ok]
        acute = (pairs.cos >= 0)[ok]
        # the both-sides violation set should be exactly {|cos phi| > s sin^2 phi, phi > 90 deg}
        margin = (-pairs.cos - s * pairs.sin**2)[ok]
        clear = margin.abs() > 1e-9
        self.obtuse_mismatches += int(((r_both >= 1 + BOUND_TOL) != (margin > 0))[clear].sum())
        # bounds that hold for every step size (derived from the exact change, see aparametric)
        self.any_step_violations_one += int((r_one >= (0.5 + s / 4) * (1 + BOUND_TOL)).sum())
        self.any_step_violations_both += int((r_both >= (1 + s) * (1 + BOUND_TOL)).sum())
        (self.ratios["one_small"] if s <= 2 else self.ratios["one_large"]).append(r_one)
        self.ratios["both_acute"].append(r_both[acute])
        self.ratios["both_obtuse"].append(r_both[~acute])
        sub = slice(pairs.num_random, None, max(1, (len(pairs.phi) - pairs.num_random) // 400))
        self.scatter.append((pairs.phi[sub], (d_one / bound)[sub], (d_both / bound)[sub], s))
        # Cor. 3.3 for the pure cosine steps (all four updated embeddings)
        growth = torch.cat([zi1.norm(dim=-1) / rho, zj1.norm(dim=-1) / rho])
        self.norm_violations += int((growth < 1 - GROWTH_TOL).sum())
        self.norm_min_growth = min(self.norm_min_growth, float(growth.min() - 1))
        self.rows.append({
            "lr": lr, "rho": rho, "s": s,
            "one_side_violations": int((r_one >= 1 + BOUND_TOL).sum()), "one_side_max_ratio": float(r_one.max()) if len(r_one) else None,
            "one_side_predicted_sup": 0.5 + s / 4 if s > 0 else None,
            "both_sides_violations_acute": int((r_both >= 1 + BOUND_TOL)[acute].sum()),
            "both_sides_violations_obtuse": int((r_both >= 1 + BOUND_TOL)[~acute].sum()),
            "both_sides_max_ratio_acute": float(r_both[acute].max()) if acute.any() else None,
            "both_sides_max_ratio_obtuse": float(r_both[~acute].max()) if (~acute).any() else None,
            "both_sides_predicted_sup": 1 + s,
            "pairs": int(ok.sum()),
        })

    def thm_3_4(self) -> dict:
        """Violations of the literal bound per regime, and of the bounds valid at any step size."""
        cat = self.all_ratios()

        def entry(key: str, condition: str, violations: int) -> dict:
            ratios = cat[key]
            return {"condition": condition, "violations": violations,
                    "max_ratio": float(ratios.max()) if len(ratios) else None, "checked": int(ratios.numel())}

        return {
            "bound": "cos(z_i', z_j') - cos(z_i, z_j) < 2 lr sin^2(phi) / rho^2, equal norms rho, one ascent step on cos",
            "one_side_small_step": entry("one_small", "s = lr / rho^2 <= 2", sum(r["one_side_violations"] for r in self.rows if r["s"] <= 2)),
            "one_side_large_step": entry("one_large", "s > 2", sum(r["one_side_violations"] for r in self.rows if r["s"] > 2)),
            "both_sides_acute": entry("both_acute", "phi <= 90 deg, any lr", sum(r["both_sides_violations_acute"] for r in self.rows)),
            "both_sides_obtuse": {
                **entry("both_obtuse", "phi > 90 deg", sum(r["both_sides_violations_obtuse"] for r in self.rows)),
                "note": "expected: violated iff |cos phi| > s sin^2 phi; ratio < 1 + s",
                "mismatches_with_predicted_condition": self.obtuse_mismatches,
            },
            "relative_tolerance": BOUND_TOL,
            "any_step_bounds": {
                "one_side": "dcos < lr sin^2(phi) / rho^2 * (1 + lr / (2 rho^2))",
                "one_side_violations": self.any_step_violations_one,
                "both_sides": "dcos < 2 lr sin^2(phi) / rho^2 * (1 + lr / rho^2)",
                "both_sides_violations": self.any_step_violations_both,
            },
        }

    def all_ratios(self) -> dict[str, Tensor]:
        import torch

        return {k: (torch.cat(v) if v else torch.empty(0, dtype=torch.float64)) for k, v in self.ratios.items()}


def _info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR-style InfoNCE (NT-Xent) on cosine logits: 2B samples, positives are the other view."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def check_cor_3_3_infonce(lrs: Sequence[float], num_batches: int, batch_size: int, dim: int, temperature: float,
                          g: torch.Generator) -> dict[str, float | int]:
    """Cor. 3.3 for SGD steps on an InfoNCE loss (autograd) over random batches whose embeddings
    (the parameters) have log-uniform norms in [0.1, 10]: no norm ever shrinks."""
    import torch
    import torch.nn.functional as F

    violations = checked = 0
    min_growth, max_abs_cos = math.inf, 0.0
    for lr in lrs:
        for _ in range(num_batches):
            base = random_unit(batch_size, dim, g)
            v1 = F.normalize(base + 0.3 * torch.randn(batch_size, dim, generator=g, dtype=torch.float64), dim=-1)
            v2 = F.normalize(base + 0.3 * torch.randn(batch_size, dim, generator=g, dtype=torch.float64), dim=-1)
            scales = torch.exp(torch.empty(2, batch_size, 1, dtype=torch.float64).uniform_(math.log(0.1), math.log(10), generator=g))
            z1, z2 = (v1 * scales[0]).requires_grad_(True), (v2 * scales[1]).requires_grad_(True)
            g1, g2 = torch.autograd.grad(_info_nce(z1, z2, temperature), (z1, z2))
            for z, grad in ((z1.detach(), g1), (z2.detach(), g2)):
                growth = (z - lr * grad).norm(dim=-1) / z.norm(dim=-1)
                violations += int((growth < 1 - GROWTH_TOL).sum())
                checked += len(z)
                min_growth = min(min_growth, float(growth.min() - 1))
                nonzero = grad.norm(dim=-1) > 0
                cos = ((grad * z).sum(-1) / (grad.norm(dim=-1) * z.norm(dim=-1)))[nonzero]
                max_abs_cos = max(max_abs_cos, float(cos.abs().max()))
    return {"infonce_step_violations": violations, "infonce_embeddings_checked": checked,
            "infonce_min_relative_growth": min_growth, "infonce_max_abs_cos_grad_z": max_abs_cos}


@one_cpu_thread()
def theory_checks(
    *,
    num_pairs: Several = 10_000,
    dim: Dimension = 20,
    lrs: Sequence[Positive] = (0.01, 0.1, 0.5, 1.0, 4.0, 10.0),
    norms: Sequence[Positive] = (0.5, 1.0, 2.0, 4.0),
    batch_size: Several = 256,
    num_batches: Count = 8,
    temperature: Positive = 0.1,
    seed: Seed = 0,
) -> SimulationOutput:
    """Prop 3.1, Thm 3.4 and Cor 3.3 checked on many random pairs (float64).

    Both embeddings of a pair have norm ``rho`` in ``norms`` (Thm. 3.4 is for equal norms). For
    each (lr, rho) one ascent step of size lr on cos is taken, updating one side only and both
    sides simultaneously, and the observed change is compared to B = 2 lr sin^2(phi) / rho^2 and
    to the exact closed form. Cor. 3.3 is checked for those steps and for SGD steps of size lr on
    a SimCLR InfoNCE loss over ``num_batches`` random batches per lr.
    """
    import torch

    t0 = time.perf_counter()
    lrs, norms = [float(v) for v in lrs], [float(v) for v in norms]
    g = torch.Generator().manual_seed(seed)
    pairs = sample_pairs(num_pairs, dim, g)
    prop = {str(rho): check_prop_3_1(pairs, rho) for rho in norms}
    steps = StepChecks()
    for lr in lrs:
        for rho in norms:
            steps.add(pairs, lr, rho)
    infonce = check_cor_3_3_infonce(lrs, num_batches, batch_size, dim, temperature, g)
    numbers = {
        "params": {"num_pairs": num_pairs, "dim": dim, "lrs": lrs, "norms": norms,
                   "batch_size": batch_size, "num_batches": num_batches, "temperature": temperature, "seed": seed},
        "prop_3_1": prop,
        "closed_form_max_abs_err": steps.closed_form_err,
        "thm_3_4": steps.thm_3_4(),
        "cor_3_3": {
            "cosine_step_violations": steps.norm_violations,
            "cosine_step_min_relative_growth": steps.norm_min_growth,
            **infonce,
            "tolerance_relative": GROWTH_TOL,
        },
        "runtime_s": time.perf_counter() - t0,
    }
    return SimulationOutput(numbers=numbers, figure=_plot(steps), tables={"": steps.rows}, summary=_summary(numbers))


def _summary(numbers: dict) -> list[str]:
    thm, cor = numbers["thm_3_4"], numbers["cor_3_3"]
    lines = ["Thm 3.4 bound violations (checked pairs x steps):"]
    for key in ("one_side_small_step", "one_side_large_step", "both_sides_acute", "both_sides_obtuse"):
        entry = thm[key]
        shown = "-" if entry["max_ratio"] is None else format(entry["max_ratio"], ".7g")
        lines.append(f"  {key:<20} ({entry['condition']}): {entry['violations']} / {entry['checked']}, max ratio {shown}")
    lines.append(f"  obtuse violations outside the predicted set |cos phi| > s sin^2 phi: {thm['both_sides_obtuse']['mismatches_with_predicted_condition']}")
    lines.append(f"Cor 3.3 (norms never shrink): cosine steps {cor['cosine_step_violations']} violations, "
                 f"InfoNCE steps {cor['infonce_step_violations']} / {cor['infonce_embeddings_checked']}")
    return lines


def _plot(steps: StepChecks):
    import torch

    fig, (ax_h, ax_s) = new_figure(1, 2, width=5.6, height=4.3)
    labels = {
        "one_small": "one side, lr/ρ² ≤ 2",
        "one_large": "one side, lr/ρ² > 2",
        "both_acute": "both sides, φ ≤ 90°",
        "both_obtuse": "both sides, φ > 90°",
    }
    bins = np.linspace(0, 2.0, 81)
    for k, ratios in steps.all_ratios().items():
        r = ratios.numpy()
        if r.size:
            ax_h.hist(np.clip(r, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.5, density=True,
                      label=f"{labels[k]} (max {r.max():.7g})")
    ax_h.axvline(1.0, color="k", ls="--", lw=1, label="bound (ratio = 1)")
    ax_h.set_yscale("log")
    ax_h.set_xlabel("observed Δcos / (2 lr sin²φ / ρ²)   (clipped to [0, 2])")
    ax_h.set_ylabel("density (log)")
    ax_h.set_title("Thm. 3.4: one-step cosine change vs bound")
    ax_h.legend(fontsize=7)

    first = {}
    for item in steps.scatter:
        first.setdefault(item[-1], item)
    wanted = [0.01, 0.25, 2.0, 40.0]
    picks = sorted({min(sorted(first), key=lambda v: abs(math.log(v / w))) for w in wanted})
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
