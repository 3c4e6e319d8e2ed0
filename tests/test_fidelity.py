"""The as-run configs reproduce the released code's regime, and every FIDELITY.md command is valid."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import REPO
from ssl_norms.callbacks.global_batch import GlobalBatchLog, lr_text
from ssl_norms.data import CIFAR10DataModule, SyntheticLatentClasses
from ssl_norms.methods import SimCLR, SimSiam
from test_sweep import fit_parser  # noqa: F401  (the real `ssl-norms fit` parser, a module-scoped fixture)

AS_RUN = REPO / "configs" / "paper" / "as_run"


def released_lr(step: int, lr: float, loader_len: int, lr_epochs: int, warmup_epochs: float, lr_min: float = 1e-3) -> float:
    """The lr the paper's released training loop applies at optimizer step ``step``, written from its source
    (github.com/Andrew-Draganov/SSLEmbeddingNorms): CLA/training/training_loop.py:60-70 and 137-148 build
    ``LambdaLR(optimizer, lambda step: get_lr(step, len(train_loader), args.lr_epochs, args.learning_rate, 1e-3,
    args.lr_warmup_epochs))`` and LambdaLR multiplies the optimizer's lr (args.learning_rate) by that value;
    get_lr and cosine_scaling are CLA/utils/utils.py:11-20."""
    total_steps = loader_len * lr_epochs
    ten_epochs = warmup_epochs * loader_len
    if step > ten_epochs:
        get_lr = lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(step / total_steps * math.pi))
    else:
        get_lr = lr * step / ten_epochs
    return lr * get_lr


# optimisation settings of a config's model block; the network itself is replaced by a tiny MLP
SCHEDULE_KEYS = (
    "lr", "momentum", "nesterov", "weight_decay", "warmup_epochs", "warmup_start_factor", "min_lr", "lr_schedule",
    "schedule_unit", "schedule_epochs", "accumulation", "fixed_predictor_lr",
)


class _Record(Callback):
    """Every optimizer step's per-group lr and epoch; stops the fit after ``steps`` optimizer steps."""

    def __init__(self, steps: int) -> None:
        self.steps, self.lrs, self.epochs = steps, [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.steps


def schedule_of(parser, config: Path, steps: int):
    """Fit the optimisation settings, trainer settings and batch size of ``config`` for ``steps`` optimizer
    steps on 50,000 synthetic items (CIFAR-10's training-set size, so the loader has CIFAR-10's length) with a
    tiny network. Returns the recorded lrs, the optimizer steps of the first epoch and the run's LambdaLR."""
    fit = parser.parse_args(["fit", "--config", str(config)]).fit
    init = fit.model.init_args
    method = {"ssl_norms.methods.SimCLR": SimCLR, "ssl_norms.methods.SimSiam": SimSiam}[fit.model.class_path]
    heads = {"projector_dims": [8]} if method is SimCLR else {"projector_dims": [8], "predictor_hidden_dims": [4]}
    model = method(backbone="mlp", input_dim=8, mlp_hidden_dims=[8], **heads, **{k: init[k] for k in SCHEDULE_KEYS if k in init})
    data = SyntheticLatentClasses(train_samples=50_000, val_samples=64, num_classes=4, latent_dim=4, ambient_dim=8,
                                  batch_size=fit.data.init_args.batch_size)
    record = _Record(steps)
    torch.set_num_threads(1)  # tiny tensors: more threads only wait for each other
    trainer = L.Trainer(
        max_epochs=fit.trainer.max_epochs, accumulate_grad_batches=fit.trainer.accumulate_grad_batches,
        limit_train_batches=fit.trainer.limit_train_batches, limit_val_batches=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[record, GlobalBatchLog()],
    )
    trainer.fit(model, data)
    assert trainer.global_step == steps == len(record.lrs) and record.epochs[-1] == 1  # into the second epoch
    return record.lrs, record.epochs.count(0), trainer.lr_scheduler_configs[0].scheduler, init


@pytest.mark.parametrize(
    "config, lr, warmup, per_epoch, peak",
    [
        ("simclr_cifar10.yaml", 0.6, 10, 195, 0.36),            # 50,000 // 256 steps; 0.6^2
        ("simclr_cifar10_gradscale.yaml", 0.1, 100, 195, 0.01),  # 0.1^2 = stated / 36
        ("simsiam_cifar10.yaml", 0.2, 10, 48, 0.04),            # 384 of 390 micro-batches / 8; 0.2^2
    ],
)
def test_as_run_lr_is_the_released_formula_step_by_step_and_at_epochs_100_and_500(fit_parser, config, lr, warmup, per_epoch, peak, caplog):
    with caplog.at_level(logging.INFO):
        lrs, steps_per_epoch, scheduler, init = schedule_of(fit_parser, AS_RUN / config, steps=per_epoch + 8)
    # the fit-start line states the peak the schedule applies, not the configured lr
    stated = f"applied peaks {peak:g}, {lr:g} by parameter group" if config.startswith("simsiam") else f"applied peak {peak:g}"
    assert f"lr {lr:g} as configured (never rescaled for the batch); {stated} (lr_schedule released_get_lr)" in caplog.text
    assert steps_per_epoch == per_epoch
    loader_len = 50_000 // {"simsiam_cifar10.yaml": 128}.get(config, 256)  # the released len(train_loader)
    expected = [released_lr(s, lr, loader_len, 512, warmup) for s in range(len(lrs))]
    assert [group[0] for group in lrs] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if config.startswith("simsiam"):  # the predictor's own optimizer: the stated lr, never scheduled
        assert {group[1] for group in lrs} == {lr}
    # later epochs: the run's own LambdaLR at the step that ends epoch 100 and 500
    for epoch in (100, 500):
        step = epoch * steps_per_epoch
        applied = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        assert applied[0] == pytest.approx(released_lr(step, lr, loader_len, 512, warmup), rel=1e-12)
        if config.startswith("simsiam"):
            assert applied[1] == lr
    warmup_end = round(warmup * loader_len)
    assert scheduler.base_lrs[0] * scheduler.lr_lambdas[0](warmup_end) == pytest.approx(peak)
    if config.startswith("simsiam"):  # still 96.5% of the peak at epoch 500: the micro-batch-counted cosine
        assert scheduler.lr_lambdas[0](500 * 48) * lr / peak == pytest.approx(0.965, abs=1e-3)
    else:
        assert init.lr_schedule == "released_get_lr" and init.schedule_epochs == 512


def test_global_batch_log_states_the_peak_lr_each_schedule_applies(tmp_path):
    """The peak read from the run's own scheduler: lr under warmup_cosine, lr**2 under released_get_lr,
    lower than both when training stops inside the warmup; logged as scale/peak_lr."""
    from lightning.pytorch.loggers import CSVLogger

    from ssl_norms.callbacks.global_batch import applied_peak_lrs

    def peaks(schedule, epochs, **kwargs):
        model = SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[8], projector_dims=[4], lr=0.5, warmup_epochs=2,
                       lr_schedule=schedule, **kwargs)
        data = SyntheticLatentClasses(train_samples=64, val_samples=16, num_classes=4, latent_dim=4, ambient_dim=8, batch_size=16)
        trainer = L.Trainer(max_epochs=epochs, limit_val_batches=0, accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[GlobalBatchLog()])
        trainer.fit(model, data)  # 4 steps per epoch, warmup 8 steps
        return applied_peak_lrs(trainer), trainer.logger.experiment.hparams["scale/peak_lr"]

    assert peaks("warmup_cosine", 6) == ([pytest.approx(0.5)], pytest.approx(0.5))
    assert peaks("released_get_lr", 6, min_lr=1e-3) == ([pytest.approx(0.25)], pytest.approx(0.25))
    assert peaks("warmup_cosine", 1)[0] == [pytest.approx(0.5 * 3 / 8)]  # steps 0-3 of the 8-step warmup
    assert lr_text(0.5, [0.25], "released_get_lr") == "lr 0.5 as configured (never rescaled for the batch); applied peak 0.25 (lr_schedule released_get_lr)"


def test_summed_accumulation_gives_k_times_the_mean_gradient():
    """One optimizer step of plain SGD (lr 1, no momentum, no weight decay) over 4 accumulated
    micro-batches: the update with ``accumulation: sum`` is exactly 4 times the update with ``mean``."""
    updates = {}
    for mode in ("mean", "sum"):
        L.seed_everything(0)
        data = SyntheticLatentClasses(train_samples=256, val_samples=32, num_classes=4, latent_dim=4, ambient_dim=8, batch_size=32)
        model = SimSiam(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[8], predictor_hidden_dims=[4],
                        lr=1.0, momentum=0.0, weight_decay=0.0, warmup_epochs=0, accumulation=mode)
        before = [p.detach().clone() for p in model.parameters()]
        L.Trainer(max_steps=1, accumulate_grad_batches=4, limit_val_batches=0, accelerator="cpu", logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(model, data)
        updates[mode] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    assert any(u.abs().max() > 0 for u in updates["mean"])
    for summed, mean in zip(updates["sum"], updates["mean"]):
        torch.testing.assert_close(summed, 4 * mean, rtol=1e-5, atol=1e-6)  # float32 rounding of p - lr g


def _cifar_images(root: Path, count: int = 32) -> torch.Tensor:
    from torchvision.io import read_image

    files = sorted((root / "cifar10-jpg" / "train").glob("*/*.jpg"))
    return torch.stack([read_image(str(f)) for f in files[:: len(files) // count][:count]])


def _initial_norm(parser, config: Path, images: torch.Tensor) -> float:
    """Mean embedding norm of a freshly initialised model of ``config`` on ``images`` prepared by the
    config's own DataModule (normalised or not), in training mode as in the first training step."""
    fit = parser.parse_args(["fit", "--config", str(config)]).fit
    torch.manual_seed(0)
    model = SimCLR(**fit.model.init_args.as_dict()).train()
    x = CIFAR10DataModule(**fit.data.init_args.as_dict()).plain_transform()(images)
    with torch.no_grad():
        return model.embed(x)[1].norm(dim=1).mean().item()  # SimCLR's loss space: the projector output


def test_simclr_as_run_head_starts_at_the_released_norm_scale(fit_parser, real_data_root):
    images = _cifar_images(real_data_root)
    as_run = _initial_norm(fit_parser, AS_RUN / "simclr_cifar10.yaml", images)
    clean = _initial_norm(fit_parser, REPO / "configs" / "simclr" / "cifar10.yaml", images)
    assert 1.1 < as_run < 1.6  # the released head: ~1.3 (in -> 128 -> 128, no BN, zero-init residuals, inputs in [0, 1])
    assert clean > 4 * as_run  # the clean 2048-2048-256 BN head on normalised inputs: ~6.3


# ---------------------------------------------------------------------------------------------
# Every command of FIDELITY.md parses and instantiates
# ---------------------------------------------------------------------------------------------

FIDELITY = REPO / "FIDELITY.md"
ANALYSIS_CALLS = ("knn_by_norm", "human_agreement_by_norm", "entropy_by_norm", "opposite_pairs")


def fidelity_snippets() -> tuple[list[list[str]], list[str]]:
    """The ``ssl-norms`` commands (as argument lists) and the Python analysis calls of FIDELITY.md, from
    its fenced blocks and its inline code."""
    import re
    import shlex

    text = FIDELITY.read_text()
    fenced = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    snippets = [s.strip() for s in fenced + inline]
    commands = [shlex.split(s)[1:] for s in snippets if s.startswith("ssl-norms ")]
    calls = [s for s in snippets if s.startswith(tuple(f"{name}(" for name in ANALYSIS_CALLS))]
    return commands, calls


def test_fidelity_md_lists_commands_for_every_artefact():
    commands, calls = fidelity_snippets()
    kinds = {c[0] for c in commands}
    assert kinds == {"fit", "sweep", "simulate", "analyze"} and len(commands) > 40 and len(calls) >= 4
    first_cells = [line.split("|")[1] for line in FIDELITY.read_text().splitlines() if line.startswith("| ")]
    for artefact in ("Fig 2a", "Fig 2b", "Fig 2c", "Thm 3.4", "Fig 3", "Fig 4 left", "Fig 4 middle", "Fig 4 right", "Fig 5",
                     "Fig S1", "Fig S2", "Fig S3", "Fig S4", "Fig S5", "Fig S6", "Table 1", "Table 2", "Table 3",
                     "Table S1", "Table S2", "IsoLoss", "FroSSL"):
        assert any(artefact in cell for cell in first_cells), artefact
    assert "(FIDELITY.md)" in (REPO / "README.md").read_text()


def parse_project_command(name: str, words: list[str]):
    """``ssl-norms NAME WORDS`` parsed by the command's own parser (:mod:`ssl_norms.commands`), not run."""
    import importlib

    from ssl_norms import command_line
    from ssl_norms.commands import COMMANDS

    module, _, attribute = COMMANDS[name].target.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    return command_line.build_parser(f"ssl-norms {name}", target, COMMANDS[name].help).parse_args(words)


def test_every_fidelity_md_command_parses_and_instantiates(fit_parser, monkeypatch):
    """Commands run from the repository root; nothing is trained, written or downloaded."""
    import ast
    import inspect

    from ssl_norms import analysis
    from ssl_norms.sweep import sweep_points
    from test_sweep import check_point

    monkeypatch.chdir(REPO)
    commands, calls = fidelity_snippets()
    checked_sweeps = set()
    for args in commands:
        kind, rest = args[0], args[1:]
        if kind == "fit":
            cfg = fit_parser.parse_args(args)
            with torch.device("meta"):
                init = fit_parser.instantiate(cfg).fit
            assert init.model is not None and init.data is not None, args
        elif kind == "sweep":
            sweep = REPO / rest[0]
            if sweep in checked_sweeps:
                continue
            checked_sweeps.add(sweep)
            points = sweep_points(sweep)
            # one point per distinct config stack, and every value of every axis, through the first point
            # showing it (the clean sweeps are checked point by point in test_sweep.py)
            seen: set = set()
            for point in points:
                keys = {point.configs} | {(axis, str(value)) for axis, value in point.values.items()}
                if not keys <= seen:
                    check_point(fit_parser, point)
                    seen |= keys
        else:  # simulate, analyze: option names, types and the simulation / analysis name
            parse_project_command(kind, rest)
    for call in calls:  # Python calls: every keyword is an option of the analysis function
        node = ast.parse(call).body[0].value
        function = getattr(analysis, node.func.id)
        inspect.signature(function).bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})


# ---------------------------------------------------------------------------------------------
# The as-run options, one by one
# ---------------------------------------------------------------------------------------------


def test_lars_follows_solo_learn_with_bias_and_norm_excluded():
    """One LARS step (timm's Lars through ``optimizer: lars``) against solo-learn's rule written from its source
    (implicit-var-reg solo/utils/lars.py, ``step``): matrices get lr x min(eta |p| / (|g| + wd |p|) / lr, 1)
    x (g + wd p) (clip_lr), 1-d parameters (exclude_bias_n_norm) plain lr x g without weight decay."""
    from ssl_norms.optim import build_optimizer

    torch.manual_seed(0)
    model = SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[4], weight_decay=1e-4,
                   exclude_bias_and_norm_from_wd=True, optimizer="lars", lars_eta=0.02, lars_clip=True, lr=1.0, momentum=0.9)
    groups = model._split_weight_decay(model.parameter_groups())
    for group in groups:
        group.setdefault("weight_decay", 1e-4)
    optimizer = build_optimizer("lars", groups, lr=1.0, momentum=0.9, nesterov=False, lars_eta=0.02, lars_clip=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {p: p.detach().clone() for p in model.parameters()}
    optimizer.step()
    for p, old in before.items():
        g = p.grad
        if p.ndim == 1:
            expected = old - 1.0 * g
        else:
            ratio = min(0.02 * old.norm() / (g.norm() + old.norm() * 1e-4 + 1e-8) / 1.0, 1.0)
            expected = old - 1.0 * ratio * (g + 1e-4 * old)  # first step: the momentum buffer is the update
        torch.testing.assert_close(p.detach(), expected)


def test_released_get_lr_without_warmup_and_schedule_epochs_validation():
    from ssl_norms.optim import released_get_lr

    assert released_get_lr(0, 10, 5, 0.5, 1e-3, 0) == pytest.approx(0.5)
    assert released_get_lr(25, 10, 5, 0.5, 1e-3, 0) == pytest.approx(1e-3 + (0.5 - 1e-3) * 0.5)  # half-way: cos = 0
    with pytest.raises(ValueError, match="schedule_epochs"):
        SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[8], projector_dims=[4], warmup_epochs=10, schedule_epochs=5)
    with pytest.raises(ValueError, match="accumulation"):
        SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[8], projector_dims=[4], accumulation="max")


def test_cross_view_nce_is_the_released_nt_xent():
    """Against CLA/utils/losses.py:19-46 written out: -mean(z1_i.z2_i)/t + mean_i log sum_{j != i} exp(z1_i.z2_j / t)."""
    from ssl_norms.losses import cross_view_nce

    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    a, b = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    sims = a @ b.T / 0.5
    attractive = -(a * b).sum(-1).mean() / 0.5
    sims[torch.arange(6), torch.arange(6)] = -1e5
    repulsive = torch.log(torch.exp(sims).sum(-1)).mean()
    torch.testing.assert_close(cross_view_nce(z1, z2, 0.5).double(), attractive + repulsive, rtol=1e-5, atol=1e-6)
    # with a (single-process) gather the candidates are the same rows
    torch.testing.assert_close(cross_view_nce(z1, z2, 0.5, gather=lambda z: (z, 0)), cross_view_nce(z1, z2, 0.5))


def test_as_run_heads_backbone_and_byol_loss_scale():
    simclr = SimCLR(projector_dims=[128, 128], projector_batchnorm=False, zero_init_residual=True)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in simclr.projector.modules())
    assert [m.out_features for m in simclr.projector if isinstance(m, torch.nn.Linear)] == [128, 128]
    assert all(block.bn2.weight.abs().sum() == 0 for block in simclr.backbone.modules() if hasattr(block, "bn2"))
    narrow = SimCLR(backbone_width=8, projector_dims=[4], zero_init_residual=True)
    assert all(block.bn2.weight.abs().sum() == 0 for block in narrow.backbone.modules() if hasattr(block, "bn2"))
    assert SimCLR(projector_dims=[4]).backbone.layer1[0].bn2.weight.abs().sum() > 0  # default unchanged

    from ssl_norms.methods import BYOL

    views = [torch.randn(8, 8), torch.randn(8, 8)]
    losses = []
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        model = BYOL(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[8], predictor_hidden_dims=[4], loss_scale=scale)
        losses.append(model.ssl_step(views).loss)
    torch.testing.assert_close(losses[1], 0.25 * losses[0])


def test_isoloss_correlation_once_per_view_and_in_validation():
    from ssl_norms.methods import IsoLoss

    torch.manual_seed(0)
    kwargs = dict(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[16, 6], correlation_tau=0.9)
    model = IsoLoss(correlation_update="view", correlation_in_validation=True, **kwargs)
    views = [torch.randn(32, 8), torch.randn(32, 8)]
    with torch.no_grad():
        z1, z2 = model.projector(model.backbone(torch.cat(views))).chunk(2)
    model.ssl_step(views)
    expected = torch.zeros(6, 6)
    for z in (z1, z2):  # two EMA steps, one per view
        expected = 0.9 * expected + 0.1 * z.T @ z / len(z)
    torch.testing.assert_close(model.correlation, expected)
    model.eval()
    before = model.correlation.clone()
    model.validation_step({"image": views[0], "label": torch.zeros(32), "index": torch.arange(32)}, 0)
    assert not torch.equal(model.correlation, before)
    default = IsoLoss(**kwargs).eval()
    default.validation_step({"image": views[0], "label": torch.zeros(32), "index": torch.arange(32)}, 0)
    assert default.correlation.abs().sum() == 0  # the clean default never updates C outside training


def test_independent_jitters_and_no_normalisation():
    from ssl_norms.data.augment import BatchedSimCLRAugmentation
    from ssl_norms.data.splits import IMBALANCE_PRESETS, imbalanced_counts

    augment = BatchedSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3, color_jitter="independent")
    params = augment.sample(20_000, 32, 32, torch.Generator().manual_seed(0))
    applied = params["jitter"].float()
    assert applied.shape == (20_000, 4) and applied.mean(0).tolist() == pytest.approx([0.8] * 4, abs=0.015)
    assert abs(torch.corrcoef(applied.T)[0, 1]) < 0.03  # each jitter drawn on its own
    assert (params["order"] == torch.arange(4)).all()  # brightness, contrast, saturation, hue
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x = augment(images, torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() <= 1  # no Normalize
    plain = CIFAR10DataModule(normalize=False).plain_transform()(images)
    torch.testing.assert_close(plain, images.float() / 255)
    assert sum(imbalanced_counts(100, *IMBALANCE_PRESETS["cifar100_released"])) == 14_750


def test_released_analysis_variants_count_the_point_itself():
    from ssl_norms.eval import knn_predict_leave_one_out
    from ssl_norms.simulations.parametric import random_pair_nce

    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    # k = 2, equal votes (temperature inf), itself counted: points 0 and 1 tie (0 vs 1) and take the smaller
    # label, as sklearn's majority; point 2 has itself and point 1
    assert knn_predict_leave_one_out(feats, labels, 2, k=2, temperature=math.inf, exclude_self=False).tolist() == [0, 0, 1]
    assert knn_predict_leave_one_out(feats, labels, 2, k=1, temperature=math.inf).tolist() == [1, 0, 1]
    z, y = torch.randn(16, 4), torch.tensor([0, 1] * 8)
    loss = random_pair_nce(z, y, 1.0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
