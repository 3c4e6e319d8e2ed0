"""The study's numbers, read from its runs' ``metrics.csv`` (never written to): per point, the
comparisons each paper claim needs, and a verdict per claim with the standard error behind it.

Standard errors. A k-NN accuracy p on n test images has the binomial SE sqrt(p(1-p)/n). Two runs'
difference also carries seed-to-seed noise, estimated from the ``seeds`` phase (the same settings
with a second seed): ``seed_var`` is the mean of (x_seed0 - x_seed1)^2 / 2 over those pairs. The SE
of a difference of two runs is sqrt(se_a^2 + se_b^2 + 2 seed_var). A verdict *holds* when the effect
exceeds 2 SE in the paper's direction, *does not hold at this scale* when it exceeds 2 SE the other
way, and is *inconclusive* otherwise.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Sequence

from ssl_norms.figures import read_metrics
from ssl_norms.repro.plan import CUTS, LR_MULTS, Profile, StudyPoint
from ssl_norms.repro.runner import point_status, state_dir


def binomial_se(p: float | None, n: int) -> float | None:
    return None if p is None else math.sqrt(max(p * (1 - p), 0.0) / n)


def point_summary(point: StudyPoint, profile: Profile) -> dict[str, Any]:
    """What one point measured (``status`` only when it has no ``metrics.csv``)."""
    status = point_status(point)
    summary: dict[str, Any] = {"label": point.label, "phase": point.phase, "method": point.method, "variant": point.variant,
                               "lr_mult": point.lr_mult, "lr": point.fit.overrides.get("model.init_args.lr"),
                               "seed": point.seed, "status": status}
    done = state_dir(point) / "done.json"
    if done.exists():
        summary["seconds"] = json.loads(done.read_text())["seconds"]
    metrics = point.fit.run_dir / "metrics.csv"
    if status != "done" or not metrics.is_file():
        return summary
    series = read_metrics(metrics)
    knn = [(int(s), v) for s, v in series.get("knn/top1", [])]
    norms = series.get("norm/mean_epoch", [])
    summary.update({
        "knn_curve": knn,
        "knn_final": knn[-1][1] if knn else None,
        "knn_first": knn[0][1] if knn else None,
        "knn_se": binomial_se(knn[-1][1] if knn else None, profile.val_images),
        "n_val": profile.val_images,
        "steps": knn[-1][0] if knn else None,
        "norm_curve": [(int(s), v) for s, v in norms],
        "norm_first_epoch": norms[0][1] if norms else None,
        "norm_final_epoch": norms[-1][1] if norms else None,
        # first and last of every weight statistic; the effective-lr curves (thinned) for the figure
        "weights": {key.removeprefix("weights/"): {"first": values[0][1], "last": values[-1][1],
                                                   **({"curve": [(int(s), v) for s, v in _thin(values)]} if key.endswith("/eff_lr") else {})}
                    for key, values in series.items() if key.startswith("weights/")},
    })
    return summary


def _thin(values: list[tuple[float, float]], keep: int = 12) -> list[tuple[float, float]]:
    """At most about ``keep`` points of a per-step curve, first and last included (results.json stays small)."""
    stride = max(1, len(values) // keep)
    return values[::stride] + ([values[-1]] if (len(values) - 1) % stride else [])


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> float | None:
    """Optimizer steps at which a k-NN curve first reaches ``target``, linearly interpolated
    between evaluations (from step 0 at chance level 0.1); None when it never does."""
    previous = (0, 0.1)
    for step, value in curve:
        if value >= target:
            (s0, v0) = previous
            return float(step) if value == v0 else s0 + (target - v0) / (value - v0) * (step - s0)
        previous = (step, value)
    return None


def find(summaries: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for s in summaries:
        if all(s.get(k) == v for k, v in match.items()) and s.get("knn_final") is not None:
            return s
    return None


def seed_variance(summaries: list[dict[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    """Seed-to-seed variance of the final k-NN from the pairs (seed 0, seed 1) of one setting."""
    pairs = []
    for s in summaries:
        if s["seed"] == 1 and s.get("knn_final") is not None:
            twin = find(summaries, method=s["method"], variant=s["variant"], lr_mult=s["lr_mult"], seed=0)
            if twin:
                pairs.append({"method": s["method"], "variant": s["variant"], "seed0": twin["knn_final"], "seed1": s["knn_final"]})
    if not pairs:
        return None, pairs
    return statistics.fmean((p["seed0"] - p["seed1"]) ** 2 / 2 for p in pairs), pairs


def difference(a: dict[str, Any], b: dict[str, Any], seed_var: float | None) -> dict[str, Any]:
    """k-NN of run ``a`` minus run ``b``, its SE, and ``a``'s steps to reach ``b``'s final k-NN."""
    se = math.sqrt(a["knn_se"] ** 2 + b["knn_se"] ** 2 + 2 * (seed_var or 0.0))
    reach = steps_to_reach(a["knn_curve"], b["knn_final"])
    own = steps_to_reach(b["knn_curve"], b["knn_final"])
    return {"run": a["label"], "reference": b["label"], "delta": a["knn_final"] - b["knn_final"], "se": se,
            "delta_first_eval": a["knn_first"] - b["knn_first"],
            "steps_to_reference_final": reach, "reference_steps": own,
            "speedup": (own / reach) if reach and own else None}


def verdict(delta: float | None, se: float | None, *, expected_sign: int = 1) -> str:
    if delta is None or se is None:
        return "not run"
    if expected_sign * delta > 2 * se:
        return "holds"
    if expected_sign * delta < -2 * se:
        return "does not hold at this scale"
    return "inconclusive"


def comparisons(summaries: list[dict[str, Any]], seed_var: float | None) -> list[dict[str, Any]]:
    """Every run against the default of its method, lr and seed (imbalanced against imbalanced default)."""
    rows = []
    for s in summaries:
        if s.get("knn_final") is None or s["variant"] in ("default", "imbalanced-default") or s["variant"].startswith("wd"):
            continue
        reference = "imbalanced-default" if s["variant"].startswith("imbalanced-") else "default"
        base = find(summaries, method=s["method"], variant=reference, lr_mult=s["lr_mult"], seed=s["seed"])
        if base:
            rows.append({"method": s["method"], "variant": s["variant"], "lr_mult": s["lr_mult"], "seed": s["seed"],
                         **difference(s, base, seed_var)})
    return rows


def best_over_lr(summaries: list[dict[str, Any]], method: str, variants: Sequence[str]) -> dict[str, Any] | None:
    runs = [s for s in summaries if s["method"] == method and s["variant"] in variants and s["seed"] == 0
            and s.get("knn_final") is not None]
    return max(runs, key=lambda s: s["knn_final"]) if runs else None


def claim_rows(summaries: list[dict[str, Any]], comps: list[dict[str, Any]], seed_var: float | None,
               knn_init: dict[str, float]) -> list[dict[str, Any]]:
    """One row per (claim, method): the measured effect, its SE and the verdict. ``knn_init``:
    k-NN of each method's untrained network, the baseline of the sanity row."""
    rows = []

    def add(claim: str, method: str, delta: float | None, se: float | None, evidence: str, expected_sign: int = 1) -> None:
        rows.append({"claim": claim, "method": method, "effect": delta, "se": se,
                     "verdict": verdict(delta, se, expected_sign=expected_sign), "evidence": evidence})

    for method in CUTS:
        cuts = [f"cut{c:g}" for c in CUTS[method]]
        base = find(summaries, method=method, variant="default", lr_mult=1.0, seed=0)
        if base:  # a method that does not learn at this scale cannot show a speed-up
            start, where = (knn_init[method], "the untrained network") if method in knn_init else (base["knn_first"], "the first evaluation")
            gain, se = base["knn_final"] - start, math.hypot(base["knn_se"], binomial_se(start, base["n_val"]))
            add(f"sanity: the default run learns at this scale (k-NN gain over {where})", method, gain, se,
                f"{base['label']}: {100 * start:.1f} -> {100 * base['knn_final']:.1f}")
        for name, variants in (("cut-initialisation raises k-NN at a fixed step budget (Tables 1-2)", cuts),
                               ("GradScale p=1 raises k-NN at a fixed step budget (Tables 1-2)", ["gradscale"])):
            at_base = [c for c in comps if c["method"] == method and c["variant"] in variants and c["lr_mult"] == 1.0 and c["seed"] == 0]
            best_fixed = max(at_base, key=lambda c: c["delta"], default=None)
            add(name + ", same lr", method, best_fixed and best_fixed["delta"], best_fixed and best_fixed["se"],
                f"best of {', '.join(variants)} at the base lr: {best_fixed['run']} vs {best_fixed['reference']}" if best_fixed else "not run")
            default, best = best_over_lr(summaries, method, ["default"]), best_over_lr(summaries, method, variants)
            if default and best:
                d = difference(best, default, seed_var)
                add(name + ", each at its best lr", method, d["delta"], d["se"], f"{best['label']} vs {default['label']}")
        imbalanced = [c for c in comps if c["method"] == method and c["variant"].startswith("imbalanced-")]
        for c in imbalanced:
            add(f"{c['variant'].removeprefix('imbalanced-')} helps on imbalanced CIFAR-10 (Table 3)", method, c["delta"], c["se"],
                f"{c['run']} vs {c['reference']}")
        # Cor 3.3 is about gradient steps alone: the weight-decay-0 run tests it; the defaults add weight decay
        no_wd = find(summaries, method=method, variant="wd0", lr_mult=1.0, seed=0)
        defaults = [s for s in summaries if s["method"] == method and s["variant"] == "default" and s.get("norm_final_epoch")]
        if no_wd:
            growth = no_wd["norm_final_epoch"] / no_wd["norm_first_epoch"]
            with_wd = ", ".join(f"{s['norm_final_epoch'] / s['norm_first_epoch']:.2f}" for s in defaults)
            rows.append({"claim": "without weight decay the embedding norm grows during training (Cor 3.3)", "method": method,
                         "effect": growth, "se": None, "verdict": "holds" if growth > 1 else "does not hold at this scale",
                         "evidence": f"final / first-epoch mean norm at wd 0; with the config's weight decay: {with_wd or '-'}"})
        wd = {s["variant"]: s for s in summaries if s["method"] == method and s["variant"].startswith("wd") and s.get("norm_final_epoch")}
        base = find(summaries, method=method, variant="default", lr_mult=1.0, seed=0)
        if "wd0" in wd and "wd0.05" in wd and base:
            norms = [wd["wd0"]["norm_final_epoch"], base["norm_final_epoch"], wd["wd0.05"]["norm_final_epoch"]]
            # the configs' own weight decay (1e-6, 5e-4) is too small to separate from 0 in 470 steps: 5e-2 against 0 is the test
            rows.append({"claim": "weight decay limits the norm (Fig 5)", "method": method, "effect": norms[2] / norms[0], "se": None,
                         "verdict": "holds" if norms[2] < norms[0] else "does not hold at this scale",
                         "evidence": "final mean norm at wd 0 / the config's / 5e-2: " + " / ".join(f"{n:.2f}" for n in norms)
                         + f"; k-NN at 5e-2: {100 * wd['wd0.05']['knn_final']:.1f}"})
    return rows


def bn_rows(summaries: list[dict[str, Any]], comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The BN explanation: effective-lr jump of the BN-fed layers at the first logged step (cut /
    default, against c^2) and what the two control cuts do to k-NN."""
    rows = []
    for method, (c, _) in CUTS.items():
        base = find(summaries, method=method, variant="default", lr_mult=1.0, seed=0)
        for variant in (f"cut{c:g}", f"cut{c:g}-unnormalised", f"cut{c:g}-bnlr", f"cut{c:g}-normalised"):
            run = find(summaries, method=method, variant=variant, lr_mult=1.0, seed=0)
            if not (run and base):
                continue
            ratios = {group.removesuffix("/eff_lr"): run["weights"][group]["first"] / base["weights"][group]["first"]
                      for group in run["weights"] if group.endswith("/eff_lr") and group in base["weights"]}
            comp = next((x for x in comps if x["run"] == run["label"]), None)
            rows.append({"method": method, "variant": variant, "c": c, "c_squared": c * c, "eff_lr_ratio_first_step": ratios,
                         **({k: comp[k] for k in ("delta", "se", "delta_first_eval", "speedup")} if comp else {})})
    return rows


def bn_claims(bn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The BN hypothesis as claims: the effective-lr jump, and what each control cut does to k-NN."""
    rows = []
    for method, (c, _) in CUTS.items():
        by_variant = {r["variant"]: r for r in bn if r["method"] == method}
        cut = by_variant.get(f"cut{c:g}")
        if cut:
            stages = [r for g, r in cut["eff_lr_ratio_first_step"].items() if g.startswith("backbone.layer")]
            if stages:
                ratio = math.exp(statistics.fmean(math.log(r) for r in stages))
                rows.append({"claim": "hypothesis: the cut multiplies the effective lr of BN-fed backbone layers by about c^2",
                             "method": method, "effect": ratio, "se": None,
                             "verdict": "holds" if ratio > c * c / 2 else "does not hold at this scale",
                             "evidence": f"geometric mean over layer1-4 of lr/||w||^2 cut/default at the first logged step; c^2 = {c * c:g}"})
        for variant, claim, sign in (
            (f"cut{c:g}-normalised", "hypothesis: cutting only the BN-fed layers (same function, effective lr x c^2) lowers k-NN", -1),
            (f"cut{c:g}-bnlr", "the cut with lr / c^2 on BN-fed layers gives the paper's speed-up", 1),
            (f"cut{c:g}-unnormalised", "cutting only the layers not followed by normalisation gives the paper's speed-up", 1),
        ):
            row = by_variant.get(variant)
            if row and "delta" in row:
                rows.append({"claim": claim, "method": method, "effect": row["delta"], "se": row["se"],
                             "verdict": verdict(row["delta"], row["se"], expected_sign=sign),
                             "evidence": f"{variant} vs default at the base lr (k-NN at the first evaluation {100 * row['delta_first_eval']:+.1f} points)"})
    return rows


def collect(points: Sequence[StudyPoint], profile: Profile, knn_init: dict[str, float] | None = None) -> dict[str, Any]:
    """Everything ``results.json`` holds (``knn_init``: k-NN of each method's untrained network)."""
    summaries = [point_summary(p, profile) for p in points]
    seed_var, seed_pairs = seed_variance(summaries)
    comps = comparisons(summaries, seed_var)
    bn = bn_rows(summaries, comps)
    return {
        "profile": {"name": profile.name, "train_images": profile.train_images, "val_images": profile.val_images,
                    "epochs": profile.epochs, "val_every": profile.val_every, "batch_size": profile.batch_size,
                    "base_lr": profile.base_lr, "lr_mults": list(LR_MULTS), "imbalance": profile.imbalance},
        "points_done": sum(s["status"] == "done" for s in summaries), "points": len(summaries),
        "seed_variance": seed_var, "seed_pairs": seed_pairs,
        "runs": summaries, "comparisons": comps, "bn_explanation": bn,
        "knn_at_init": knn_init or {},
        "claims": claim_rows(summaries, comps, seed_var, knn_init or {}) + bn_claims(bn),
    }
