"""The CPU-scale study's points (issue 16), in the order that answers the most if it stops early.

Every point is an ordinary ``ssl-norms fit`` (a :class:`~ssl_norms.sweep.SweepPoint`): the method's
own CIFAR-10 config, shrunk by the profile's overrides, plus the point's intervention. The plan is
pure: it reads no run and starts nothing.

Order (each phase is useful on its own; the explanation before the breadth):

1. ``core``: default, the paper's cut (SimCLR c=3, SimSiam c=9) and GradScale p=1, at the base lr;
2. ``cut``: the other cut constant (SimCLR c=2, SimSiam c=3);
3. ``bn``: the BN explanation: cut only the layers not followed by normalisation; cut with the lr
   of the BN-fed layers divided by c^2; cut only the BN-fed layers (the same function, only their
   effective lr x c^2);
4. ``wd``: weight decay 0 and 5e-2 next to each method's default (Fig 5; wd 0 also tests Cor 3.3);
5. ``seeds``: a second seed of default and both cuts at the base lr (the seed-to-seed noise);
6. ``lr``: default, both cuts and GradScale at 0.5x and 2x the base lr;
7. ``imbalanced``: default, paper cut and GradScale on an exponentially imbalanced training set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_norms.sweep import SweepPoint

REPO = Path(__file__).resolve().parents[2]
METHODS = ("simclr", "simsiam")
CUTS = {"simclr": (3.0, 2.0), "simsiam": (9.0, 3.0)}  # the paper's constant first
LR_MULTS = (1.0, 0.5, 2.0)
FIG5_WEIGHT_DECAYS = (0.0, 5e-2)
GRADSCALE_LR_DIVISOR = 6  # the paper's GradScale schedule: lr / 6, warmup 1/5 of training
CUT_INIT = "ssl_norms.callbacks.CutInit"


@dataclass(frozen=True)
class Profile:
    """The scale of a study: which configs, how much data, how long, and how fast it runs.

    ``pairs_per_s`` is the training speed of one point (view pairs per second) when ``jobs`` points
    share the machine, ``eval_images_per_s`` its evaluation speed; both only feed the estimate.
    """

    name: str
    description: str  # the data and model, for the report
    configs: dict[str, tuple[str, ...]]  # method -> config files, relative to the repo
    overrides: dict[str, Any]  # for every point
    train_images: int
    val_images: int
    epochs: int
    val_every: int
    batch_size: int
    base_lr: dict[str, float]
    imbalance: dict[str, Any]
    imbalanced_images: int
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # before ``overrides``
    pairs_per_s: dict[int, float] = field(default_factory=dict)  # jobs -> per-point speed
    eval_images_per_s: float = 1500.0
    startup_s: float = 15.0


def cifar10_profile() -> Profile:
    """Real CIFAR-10 at the scale two cores train in about two hours (see REPRODUCTION.md)."""
    train, val, epochs, batch = 5000, 2000, 12, 128
    return Profile(
        name="cifar10",
        description="Real CIFAR-10 from the data root; ResNet-18 (CIFAR stem) at width 16, bf16",
        configs={m: (f"configs/{m}/cifar10.yaml", "configs/presets/weight_norms.yaml") for m in METHODS},
        overrides={
            "model.init_args.backbone_width": 16,
            "data.init_args.max_train_samples": train,
            "data.init_args.max_val_samples": val,
            "data.init_args.batch_size": batch,
            "trainer.accumulate_grad_batches": 1,  # SimSiam's 4 would leave 8 optimizer steps per epoch
            "trainer.max_epochs": epochs,
            "trainer.check_val_every_n_epoch": 2,
            "model.init_args.warmup_epochs": 1,
        },
        train_images=train, val_images=val, epochs=epochs, val_every=2, batch_size=batch,
        # the configs' lr rules scaled linearly to batch 128: SimCLR 0.3 x b/256, SimSiam 0.03 x b/256
        base_lr={"simclr": 0.15, "simsiam": 0.015},
        # class i keeps int(1695 * 1.5^-i): 4,994 images, the balanced runs' size, Table 3's base 1.5
        imbalance={"n_max": 1695, "base": 1.5}, imbalanced_images=4994,
        pairs_per_s={1: 420.0, 2: 210.0},  # measured: ResNet-18 width 16, bf16, batch 128, 2 cores
    )


def demo_profile() -> Profile:
    """The synthetic demo data and MLP backbone: the whole plan in seconds (tests)."""
    return Profile(
        name="demo",
        description="the synthetic latent-class demo data (configs/demo.yaml) with its MLP backbone",
        configs={m: ("configs/demo.yaml", "configs/presets/weight_norms.yaml") for m in METHODS},
        method_overrides={"simsiam": {  # the demo is SimCLR: swap the class, demo-sized SimSiam heads
            "model": "ssl_norms.methods.SimSiam", "model.init_args.projector_dims": [64, 64],
            "model.init_args.predictor_hidden_dims": [16], "model.init_args.weight_decay": 5e-4}},
        overrides={
            "model.init_args.mlp_hidden_dims": [64], "data.init_args.class_weights": None,
            "data.init_args.train_samples": 1024, "data.init_args.val_samples": 256, "data.init_args.batch_size": 64,
            "trainer.max_epochs": 2, "trainer.check_val_every_n_epoch": 1, "model.init_args.warmup_epochs": 0,
        },
        train_images=1024, val_images=256, epochs=2, val_every=1, batch_size=64,
        base_lr={"simclr": 0.3, "simsiam": 0.3},
        imbalance={"n_max": 100, "base": 1.2}, imbalanced_images=499,
        pairs_per_s={1: 3000.0, 2: 2000.0}, eval_images_per_s=20000.0, startup_s=6.0,
    )


PROFILES = {"cifar10": cifar10_profile, "demo": demo_profile}


@dataclass(frozen=True)
class StudyPoint:
    """One point of the study: what it answers and the fit that runs it."""

    phase: str
    method: str
    variant: str  # default, cut2, cut3, cut9, gradscale, cut3-unnormalised, cut9-bnlr, imbalanced-..., wd0 ...
    lr_mult: float
    seed: int
    fit: SweepPoint
    images: int  # training images per epoch

    @property
    def label(self) -> str:
        return self.fit.label


def _cut(c: float, **options: Any) -> dict[str, Any]:
    return {"class_path": CUT_INIT, "init_args": {"c": c, **options}}


def _variant(profile: Profile, method: str, variant: str, lr_mult: float) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Extra config files and overrides of one intervention."""
    lr = profile.base_lr[method] * lr_mult
    if variant == "default":
        return (), {"model.init_args.lr": lr}
    if variant == "gradscale":
        return ("configs/presets/gradscale_simclr.yaml",), {
            "model.init_args.lr": lr / GRADSCALE_LR_DIVISOR, "model.init_args.warmup_epochs": profile.epochs / 5}
    name, _, scope = variant.partition("-")
    c = float(name.removeprefix("cut"))
    options = {"": {}, "unnormalised": {"scope": "unnormalised"}, "normalised": {"scope": "normalised"},
               "bnlr": {"bn_lr_scale": True}}[scope]
    return (), {"model.init_args.lr": lr, "trainer.callbacks+": _cut(c, **options)}


def _label(method: str, variant: str, lr_mult: float, seed: int) -> str:
    return f"{method}_{variant}_lr{lr_mult:g}x_seed{seed}"


def study_plan(profile: Profile, runs_root: Path) -> list[StudyPoint]:
    """Every point of the study in run order; run dirs ``<runs_root>/cpu-scale-<profile>/<label>``."""
    sweep = f"cpu-scale-{profile.name}"
    specs: list[tuple[str, str, str, float, int, dict[str, Any]]] = []  # phase, method, variant, lr, seed, extra

    def cut_names(method: str) -> list[str]:
        return [f"cut{c:g}" for c in CUTS[method]]

    for method in METHODS:
        for variant in ("default", cut_names(method)[0], "gradscale"):
            specs.append(("core", method, variant, 1.0, 0, {}))
    for method in METHODS:
        specs.append(("cut", method, cut_names(method)[1], 1.0, 0, {}))
    for method in METHODS:
        paper_cut = cut_names(method)[0]
        specs += [("bn", method, f"{paper_cut}-{scope}", 1.0, 0, {}) for scope in ("unnormalised", "bnlr", "normalised")]
    for method in METHODS:
        for wd in FIG5_WEIGHT_DECAYS:
            specs.append(("wd", method, f"wd{wd:g}", 1.0, 0, {"model.init_args.weight_decay": wd}))
    for method in METHODS:
        for variant in ("default", *cut_names(method)):
            specs.append(("seeds", method, variant, 1.0, 1, {}))
    for mult in LR_MULTS[1:]:
        for method in METHODS:
            for variant in ("default", *cut_names(method), "gradscale"):
                specs.append(("lr", method, variant, mult, 0, {}))
    for method in METHODS:
        for variant in ("default", cut_names(method)[0], "gradscale"):
            specs.append(("imbalanced", method, f"imbalanced-{variant}", 1.0, 0, {"data.init_args.imbalance": profile.imbalance}))
    points = []
    for index, (phase, method, variant, mult, seed, extra) in enumerate(specs):
        base_variant = variant.removeprefix("imbalanced-") if variant.startswith("imbalanced-") else (
            "default" if variant.startswith("wd") else variant)
        configs, overrides = _variant(profile, method, base_variant, mult)
        label = _label(method, variant, mult, seed)
        fit = SweepPoint(
            sweep=sweep, index=index, label=label,
            configs=tuple(str(REPO / c) for c in (*profile.configs[method], *configs)),
            overrides={**profile.method_overrides.get(method, {}), **profile.overrides, **overrides, **extra,
                       "seed_everything": seed},
            run_dir=runs_root / sweep / label,
            values={"method": method, "variant": variant, "lr": mult, "seed": seed},
            setting=_label(method, variant, mult, 0).removesuffix("_seed0"),
        )
        images = profile.imbalanced_images if phase == "imbalanced" else profile.train_images
        points.append(StudyPoint(phase, method, variant, mult, seed, fit, images))
    return points


def estimate_seconds(point: StudyPoint, profile: Profile, jobs: int) -> float:
    """Wall seconds one point takes when ``jobs`` points share the machine: start-up, training
    (view pairs / speed) and the k-NN evaluations (bank + validation images)."""
    speed = profile.pairs_per_s.get(jobs) or min(profile.pairs_per_s.values())
    evals = profile.epochs // profile.val_every
    return (profile.startup_s + point.images * profile.epochs / speed
            + evals * (point.images + profile.val_images) / profile.eval_images_per_s)
