"""``REPRODUCTION.md``, ``results.json`` and small PNGs from a study's runs (read only).

The norm-as-confidence part loads the best checkpoint and runs the existing analyses
(``novelty``, ``knn_by_norm``, ``human_agreement_by_norm``) into ``<runs>/<sweep>/analysis/``; the
report keeps their numbers, summarised per norm quintile with binomial standard errors.
Hand-written text between the ``notes`` markers of an existing REPRODUCTION.md is kept.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ssl_norms.figures import distinct_colors, new_figure, save_figure, write_json
from ssl_norms.repro.plan import CUTS, LR_MULTS, Profile, StudyPoint
from ssl_norms.repro.results import binomial_se, collect, verdict

NOTES = re.compile(r"<!-- notes:start -->\n(.*?)<!-- notes:end -->", re.S)
DPI = 72  # committed figures stay small


def quintiles(norms: np.ndarray, values: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Mean of ``values`` (0/1) in equal-count norm bins, lowest norm first, with binomial SEs."""
    order = np.argsort(norms, kind="stable")
    rows = []
    for part in np.array_split(order, bins):
        p = float(values[part].mean())
        rows.append({"norm_low": float(norms[part].min()), "norm_high": float(norms[part].max()), "count": len(part),
                     "mean": p, "se": binomial_se(p, len(part))})
    return rows


def auroc_se(auroc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc ** 2 / (1 + auroc)
    var = (auroc * (1 - auroc) + (n_pos - 1) * (q1 - auroc ** 2) + (n_neg - 1) * (q2 - auroc ** 2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def confidence_study(best: dict[str, Any], run_dir: Path, out: Path) -> dict[str, Any]:
    """Fig 3 and Fig 4 (left, middle) on the best checkpoint; an analysis that cannot run on this
    data (no images, no CIFAR-10N labels) is named under ``skipped`` with its reason."""
    from ssl_norms.analysis.command import run_analysis
    from ssl_norms.analysis.loading import TrainedRun
    from ssl_norms.analysis.output import AnalysisUnavailable

    run = TrainedRun.load(run_dir)
    result: dict[str, Any] = {"run": best["label"], "knn_final": best["knn_final"], "skipped": {}}

    def analysis(name: str, **options: Any) -> dict[str, Any] | None:
        try:
            return run_analysis(name, out, run, **options).numbers
        except (AnalysisUnavailable, FileNotFoundError, ValueError) as err:  # ValueError: labels that do not join
            result["skipped"][name] = str(err)
            return None

    novelty = analysis("novelty", sets="cifar10_test,mnist_test", ood="mnist_test,noise,blur")
    if novelty is not None:
        samples = np.load(out / "novelty_samples.npz")
        n_train = len(samples["training_set_norm"])
        result["novelty"] = {
            name: {"auroc_vs_training": novelty[f"auroc/{name}"], "n": len(samples[f"{name}_norm"]), "n_training": n_train,
                   "se": auroc_se(novelty[f"auroc/{name}"], len(samples[f"{name}_norm"]), n_train),
                   "relative_mean_norm": novelty.get(f"relative_mean/{name}")}
            for name in ("cifar10_test", "mnist_test") if f"auroc/{name}" in novelty}
        result["detection"] = {k: v for k, v in novelty.items() if k.startswith(("auroc/", "fpr95/")) and k.count("/") == 2}
    for name, flag in (("knn_by_norm", "knn_correct"), ("human_agreement_by_norm", "agrees")):
        if analysis(name) is not None:
            samples = np.load(out / f"{name}_samples.npz")
            result[name] = quintiles(samples["norm"], samples[flag].astype(float))
    return result


def knn_at_init(run_dir: Path) -> float:
    """k-NN top-1 (k=200, T=0.1, backbone features) of the run's architecture at its seed's
    initialisation, on the run's own bank and test images: the level training has to beat."""
    import lightning as L

    from ssl_norms.analysis.loading import TrainedRun, _import, load_datamodule, read_run_config
    from ssl_norms.eval import knn_predict

    config = read_run_config(run_dir / "config.yaml")
    L.seed_everything(config.get("seed_everything") or 0, verbose=False)
    model = _import(config["model"]["class_path"])(**config["model"]["init_args"])
    run = TrainedRun(model, load_datamodule(config, num_workers=0))
    train, test = run.embeddings("train"), run.embeddings("test")
    predicted = knn_predict(train["features"], train["labels"], test["features"], run.datamodule.num_classes)
    return (predicted == test["labels"]).double().mean().item()


def confidence_claims(conf: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, label in (("cifar10_test", "test images have lower norms than training images (Fig 3)"),
                        ("mnist_test", "MNIST (novel) images have lower norms than training images (Fig 3)")):
        if name in conf.get("novelty", {}):
            s = conf["novelty"][name]
            rows.append({"claim": label, "method": conf["run"], "effect": s["auroc_vs_training"] - 0.5, "se": s["se"],
                         "verdict": verdict(s["auroc_vs_training"] - 0.5, s["se"]),
                         "evidence": f"AUROC {s['auroc_vs_training']:.3f} (low norm = novel), {s['n']} vs {s['n_training']} images"})
    for key, label in (("knn_by_norm", "k-NN accuracy rises with the norm (Fig 4 left)"),
                       ("human_agreement_by_norm", "CIFAR-10N label agreement rises with the norm (Fig 4 middle)")):
        if key in conf:
            low, high = conf[key][0], conf[key][-1]
            se = math.hypot(low["se"], high["se"])
            rows.append({"claim": label, "method": conf["run"], "effect": high["mean"] - low["mean"], "se": se,
                         "verdict": verdict(high["mean"] - low["mean"], se),
                         "evidence": f"highest-norm fifth {high['mean']:.3f} vs lowest {low['mean']:.3f} (training images)"})
    return rows


# ---- figures -------------------------------------------------------------------------------------
def grid_variants(method: str) -> list[str]:
    """The variants of the lr grid: default, each cut constant, GradScale."""
    return ["default", *(f"cut{c:g}" for c in CUTS[method]), "gradscale"]


def _legend(ax: Any, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:  # panels of points not run yet stay empty
        ax.legend(fontsize=fontsize)


def _runs(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in data["runs"] if r.get("knn_final") is not None and all(r.get(k) == v for k, v in match.items())]


def figures(data: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    fig, axes = new_figure(1, 2, width=4.6, height=3.3)
    for ax, method in zip(axes, CUTS):
        variants = grid_variants(method)
        for color, variant in zip(distinct_colors(len(variants)), variants):
            for run in _runs(data, method=method, variant=variant, lr_mult=1.0, seed=0):
                steps, knn = zip(*run["knn_curve"])
                ax.plot(steps, knn, "o-", color=color, ms=3, label=variant)
        if method in data.get("knn_at_init", {}):
            ax.axhline(data["knn_at_init"][method], color="grey", ls="--", lw=1, label="untrained")
        ax.set(title=f"{method}: k-NN at the base lr", xlabel="optimizer step", ylabel="k-NN top-1")
        _legend(ax, 7)
    paths.append(save_figure(fig, out / "knn_curves.png", DPI))

    fig, axes = new_figure(1, 2, width=4.6, height=3.3)
    for ax, method in zip(axes, CUTS):
        variants = grid_variants(method)
        for color, variant in zip(distinct_colors(len(variants)), variants):
            runs = sorted(_runs(data, method=method, variant=variant, seed=0), key=lambda r: r["lr_mult"])
            if runs:
                ax.errorbar([r["lr_mult"] for r in runs], [r["knn_final"] for r in runs], [2 * r["knn_se"] for r in runs],
                            fmt="o-", color=color, ms=3, capsize=2, label=variant)
        ax.set(xscale="log", title=f"{method}: final k-NN vs lr (+-2 SE)", xlabel="lr / base lr", ylabel="k-NN top-1")
        ax.set_xticks(list(LR_MULTS), [f"{m:g}x" for m in LR_MULTS])
        _legend(ax, 7)
    paths.append(save_figure(fig, out / "lr_sweep.png", DPI))

    fig, axes = new_figure(1, 2, width=4.6, height=3.3)
    for ax, method in zip(axes, CUTS):
        c = CUTS[method][0]
        for style, variant in (("-", "default"), ("--", f"cut{c:g}"), (":", f"cut{c:g}-bnlr")):
            for run in _runs(data, method=method, variant=variant, lr_mult=1.0, seed=0):
                groups = sorted(g for g in run["weights"] if g.endswith("/eff_lr"))
                for color, group in zip(distinct_colors(len(groups)), groups):
                    steps, values = zip(*run["weights"][group]["curve"])
                    ax.plot(steps, values, style, color=color, lw=1, label=group.removesuffix("/eff_lr") if variant == "default" else None)
        ax.set(yscale="log", title=f"{method}: lr/||w||^2 (- default, -- cut {c:g}, : cut+lr/c^2)", xlabel="optimizer step")
        ax.title.set_fontsize(8)
        _legend(ax, 6)
    paths.append(save_figure(fig, out / "effective_lr.png", DPI))

    fig, axes = new_figure(1, 2, width=4.6, height=3.3)
    for ax, method in zip(axes, CUTS):
        for color, variant in zip(distinct_colors(3), ("wd0", "default", "wd0.05")):
            for run in _runs(data, method=method, variant=variant, lr_mult=1.0, seed=0):
                steps, norms = zip(*run["norm_curve"])
                ax.plot(steps, norms, "o-", ms=2, color=color, label={"default": "default wd"}.get(variant, variant))
        ax.set(title=f"{method}: mean embedding norm (Fig 5)", xlabel="optimizer step", ylabel="||z||")
        _legend(ax, 7)
    paths.append(save_figure(fig, out / "weight_decay_norms.png", DPI))

    conf = data.get("confidence") or {}
    panels = [k for k in ("knn_by_norm", "human_agreement_by_norm") if k in conf]
    if panels:
        fig, axes = new_figure(1, len(panels), width=4.0, height=3.0)
        for ax, key in zip(axes, panels):
            rows = conf[key]
            x = range(1, len(rows) + 1)
            ax.errorbar(x, [r["mean"] for r in rows], [2 * r["se"] for r in rows], fmt="o-", capsize=3)
            ax.set(title=f"{key.replace('_', ' ')} (+-2 SE)", xlabel="norm fifth (1 = lowest)", ylabel="fraction")
        paths.append(save_figure(fig, out / "confidence.png", DPI))
    return paths


# ---- markdown ------------------------------------------------------------------------------------
def _pm(value: float | None, se: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value * scale:+.{digits}f} +- {se * scale:.{digits}f}" if se is not None else f"{value * scale:.{digits}f}"


def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" +- {100 * se:.1f}" if se is not None else "")


def tables(data: dict[str, Any]) -> str:
    lines = []
    comps = {c["run"]: c for c in data["comparisons"]}
    init = ", ".join(f"{m} {100 * v:.1f}" for m, v in data.get("knn_at_init", {}).items())
    lines += ["## Final k-NN top-1 (%, +- binomial SE) by lr", "",
              f"The untrained networks (seed 0) score {init or 'not measured'}: the level training has to beat.", "",
              "| method | variant | " + " | ".join(f"lr {m:g}x" for m in sorted(LR_MULTS)) + " | vs default at 1x (points) |",
              "|---|---|" + "---|" * (len(LR_MULTS) + 1)]
    for method in CUTS:
        for variant in grid_variants(method):
            cells = []
            for mult in sorted(LR_MULTS):
                runs = _runs(data, method=method, variant=variant, lr_mult=mult, seed=0)
                cells.append(_pct(runs[0]["knn_final"], runs[0]["knn_se"]) if runs else "not run")
            base = _runs(data, method=method, variant=variant, lr_mult=1.0, seed=0)
            comp = comps.get(base[0]["label"]) if base else None
            lines.append(f"| {method} | {variant} | " + " | ".join(cells) + f" | {_pm(comp and comp['delta'], comp and comp['se'])} |")
    lines += ["", "## Time to accuracy (base lr, seed 0)", "",
              "Optimizer steps each run needs to reach its default's final k-NN (linear interpolation between "
              "evaluations every 2 epochs); speed-up = default's steps / the run's.", "",
              "| run | k-NN at first eval vs default (points) | steps to default's final | default's steps | speed-up |",
              "|---|---|---|---|---|"]
    for c in data["comparisons"]:
        if c["lr_mult"] == 1.0 and c["seed"] == 0:
            reach = f"{c['steps_to_reference_final']:.0f}" if c["steps_to_reference_final"] else "never"
            speed = f"{c['speedup']:.2f}x" if c["speedup"] else "-"
            lines.append(f"| {c['run']} | {100 * c['delta_first_eval']:+.1f} | {reach} | {c['reference_steps'] or 0:.0f} | {speed} |")
    lines += ["", "## Seeds", "", f"Seed-to-seed variance of the final k-NN: {_seed_var(data)}", "",
              "| method | variant | seed 0 | seed 1 |", "|---|---|---|---|"]
    for p in data["seed_pairs"]:
        lines.append(f"| {p['method']} | {p['variant']} | {100 * p['seed0']:.1f} | {100 * p['seed1']:.1f} |")
    lines += ["", "## The BatchNorm explanation", "",
              "Effective lr ratio cut / default of the BN-fed layers at the first logged step (c^2 at step 0 by "
              "construction), and what the three control cuts do (k-NN vs default, points).", "",
              "| method | variant | c^2 | lr/||w||^2 ratio, first logged step | k-NN at first eval | final k-NN |",
              "|---|---|---|---|---|---|"]
    for row in data["bn_explanation"]:
        ratios = ", ".join(f"{g} {r:.1f}" for g, r in sorted(row["eff_lr_ratio_first_step"].items()))
        lines.append(f"| {row['method']} | {row['variant']} | {row['c_squared']:g} | {ratios} | "
                     f"{100 * row.get('delta_first_eval', float('nan')):+.1f} | {_pm(row.get('delta'), row.get('se'))} |")
    lines += ["", "## Weight decay and imbalance", "", "| run | final mean norm | final k-NN |", "|---|---|---|"]
    for run in data["runs"]:
        if run["phase"] in ("wd", "imbalanced") or (run["variant"] == "default" and run["lr_mult"] == 1.0 and run["seed"] == 0):
            if run.get("knn_final") is not None:
                lines.append(f"| {run['label']} | {run['norm_final_epoch']:.2f} | {_pct(run['knn_final'], run['knn_se'])} |")
    conf = data.get("confidence")
    if conf:
        lines += ["", f"## Norm as confidence ({conf['run']})", ""]
        for name, s in conf.get("novelty", {}).items():
            lines.append(f"- {name} vs training images, AUROC of low norm: {s['auroc_vs_training']:.3f} +- {s['se']:.3f} "
                         f"(mean norm {s['relative_mean_norm']:.3f} x the training mean)")
        for key in ("knn_by_norm", "human_agreement_by_norm"):
            if key in conf:
                lines.append(f"- {key} per norm fifth (lowest first): " + ", ".join(_pct(r["mean"], r["se"]) for r in conf[key]))
        if conf.get("detection"):
            lines.append("- detection AUROC (OOD vs test images): " + ", ".join(
                f"{k.removeprefix('auroc/')} {v:.3f}" for k, v in sorted(conf["detection"].items()) if k.startswith("auroc/")))
    return "\n".join(lines) + "\n"


def _seed_var(data: dict[str, Any]) -> str:
    var = data.get("seed_variance")
    return "not measured" if var is None else f"{var:.2e} (SD {100 * math.sqrt(var):.2f} points, from {len(data['seed_pairs'])} pairs)"


def verdict_table(claims: Sequence[dict[str, Any]]) -> str:
    lines = ["| claim | method / run | effect | verdict | evidence |", "|---|---|---|---|---|"]
    for c in claims:
        if c["effect"] is None:
            effect = "-"
        elif c["se"] is not None:
            effect = f"{100 * c['effect']:+.1f} +- {100 * c['se']:.1f} points"
        else:
            effect = f"x{c['effect']:.2f}"
        lines.append(f"| {c['claim']} | {c['method']} | {effect} | **{c['verdict']}** | {c['evidence']} |")
    return "\n".join(lines) + "\n"


def commands(points: Sequence[StudyPoint]) -> str:
    """One ``ssl-norms fit`` per kind of point: paths relative to the repository, run dirs under
    ``$REPRO_RUNS`` (the runs root ``make repro-cpu`` takes), not this machine's."""
    from ssl_norms.repro.plan import REPO

    kinds: dict[str, StudyPoint] = {}
    for p in points:
        kinds.setdefault(re.sub(r"[0-9.]+", "", p.variant), p)
    runs = points[0].fit.run_dir.parent.parent if points else REPO
    return "\n".join(
        f"    {shlex.join(p.fit.command())}".replace(f"{REPO}/", "").replace(f"={runs}/", "=$REPRO_RUNS/") for p in kinds.values()
    )


def markdown(data: dict[str, Any], points: Sequence[StudyPoint], profile: Profile, figure_names: Sequence[str], notes: str) -> str:
    pr = data["profile"]
    hours = sum(r.get("seconds", 0) for r in data["runs"]) / 3600
    text = f"""# CPU-scale reproduction: does managing embedding norms speed up SSL? (issue 16)

Generated by `python -m ssl_norms.repro report` from a real run of `make repro-cpu`
({data['points_done']} of {data['points']} points done, {hours:.1f} h of fit time on 2 cores, 2 points at a time).
Numbers: `results.json` beside this file. Every k-NN is top-1 (k=200, cosine, temperature 0.1) of the
{pr['val_images']} test images against the un-augmented training images, with its binomial standard error.

## Scale and protocol
- {profile.description}: a seeded subset of {pr['train_images']} training images (the k-NN bank) and
  {pr['val_images']} test images; batch {pr['batch_size']}, {pr['epochs']} epochs
  (one warmup epoch, cosine), k-NN every {pr['val_every']} epochs. SimCLR and SimSiam with their configs' heads,
  temperature and weight decay; base lr = the configs' rules scaled linearly to batch {pr['batch_size']}
  (SimCLR {pr['base_lr']['simclr']}, SimSiam {pr['base_lr']['simsiam']}), no gradient accumulation.
- Variants: cut-initialisation (SimCLR c in {{3, 2}}, SimSiam c in {{9, 3}}), GradScale p=1 with the paper's
  schedule (lr / 6, warmup 1/5 of training), each at 0.5x, 1x, 2x the base lr; seed 1 for default and
  both cuts; the BN controls; weight decay 0 and 5e-2; an exponentially imbalanced training set
  (class i keeps int({pr['imbalance']['n_max']} * {pr['imbalance']['base']}^-i) images, as many images as the balanced runs).
- The issue suggested 10,000 images x 30 epochs per point; its {data['points']} points at that size take about
  10 h on two cores, so each point here trains {pr['train_images']} images x {pr['epochs']} epochs
  ({pr['train_images'] // pr['batch_size'] * pr['epochs']} optimizer steps); the plan's estimate
  (`python -m ssl_norms.repro plan`) is printed before anything runs.

## Commands
    make repro-cpu            # = python -m ssl_norms.repro run --jobs 2, then ... report --out benchmarks/cpu_scale
    python -m ssl_norms.repro plan    # every point, its status and the time left

One fit per variant (all 44: `python -m ssl_norms.repro plan`, each point's exact command is the first
line of `<runs>/cpu-scale-{profile.name}/.repro/<point>/fit.log`):

{commands(points)}

## Verdicts
Effects are run minus default in k-NN points unless marked x (a ratio). SE as in
`ssl_norms/repro/results.py`: binomial SE of both runs plus twice the seed variance.
*holds*: effect > 2 SE in the paper's direction; *does not hold at this scale*: > 2 SE the other way;
*inconclusive*: within 2 SE.

{verdict_table(data['claims'])}
{tables(data)}
## Figures
{chr(10).join(f'![{name}]({name})' for name in figure_names)}

## Notes
<!-- notes:start -->
{notes}<!-- notes:end -->
"""
    return text


def write_report(points: Sequence[StudyPoint], profile: Profile, out: Path, confidence: bool = True) -> Path:
    """Collect, analyse the best checkpoint, draw, write ``results.json`` and ``REPRODUCTION.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    knn_init = {}
    for method in CUTS:  # the untrained network's k-NN, per method (seed 0)
        run = next((p for p in points if p.method == method and p.variant == "default" and p.lr_mult == 1.0 and p.seed == 0), None)
        if run and (run.fit.run_dir / "config.yaml").is_file():
            knn_init[method] = knn_at_init(run.fit.run_dir)
    data = collect(points, profile, knn_init)
    balanced = [r for r in data["runs"] if r.get("knn_final") is not None and r["phase"] in ("core", "cut", "lr") and r["seed"] == 0]
    if confidence and balanced:
        best = max(balanced, key=lambda r: r["knn_final"])
        run_dir = next(p.fit.run_dir for p in points if p.label == best["label"])
        data["confidence"] = confidence_study(best, run_dir, points[0].fit.run_dir.parent / "analysis")
        data["claims"] += confidence_claims(data["confidence"])
    paths = figures(data, out)
    write_json(data, out / "results.json")
    previous = out / "REPRODUCTION.md"
    match = NOTES.search(previous.read_text()) if previous.exists() else None
    notes = match.group(1) if match else "(what surprised us: written by hand after reading the tables; kept on regeneration)\n"
    previous.write_text(markdown(data, points, profile, [p.name for p in paths], notes))
    print(f"report: {previous} {out / 'results.json'} ({len(paths)} figures)")
    return previous
