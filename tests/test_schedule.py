"""Warmup-cosine schedule: factor values and the lr a real Trainer applies; the optimizers and their
parameter groups; the lr logged once per optimizer step; the warning for a warmup as long as training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from timm.optim import Lars

from conftest import REPO, TINY_RESNET, read_metrics_csv
from ssl_norms.cli import main
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.methods import SimCLR
from ssl_norms.methods.base import warmup_cosine_factor


def test_factor_at_key_points():
    assert warmup_cosine_factor(0, 10, 110, floor=0.0) == 0.0
    assert warmup_cosine_factor(5, 10, 110, floor=0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, 10, 110, floor=0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 10, 110, floor=0.0) == pytest.approx(0.5)  # half-way down the cosine
    assert warmup_cosine_factor(110, 10, 110, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(500, 10, 110, floor=0.1) == pytest.approx(0.1)  # clamped after the end
    assert warmup_cosine_factor(0, 10, 110, floor=0.0, warmup_start=0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(0, 0, 100, floor=0.0) == pytest.approx(1.0)  # no warmup


class LrRecorder(L.Callback):
    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def _fit(accumulate: int, max_epochs: int = 4, **model_kwargs) -> tuple[list[list[float]], L.Trainer]:
    data = SyntheticLatentClasses(train_samples=512, val_samples=64, batch_size=32, num_classes=4)
    model = SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[32], projector_dims=[16], **model_kwargs)
    recorder = LrRecorder()
    trainer = L.Trainer(
        max_epochs=max_epochs, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[recorder],
    )
    trainer.fit(model, data)
    return recorder.lrs, trainer


@pytest.mark.parametrize("accumulate", [1, 4])
def test_trainer_lr_in_absolute_units_counted_in_optimizer_steps(accumulate):
    lr, min_lr = 0.4, 0.004
    lrs, trainer = _fit(accumulate, lr=lr, min_lr=min_lr, warmup_epochs=1)
    steps = trainer.global_step
    per_epoch = 16 // accumulate  # 512 samples / batch 32 = 16 micro-batches per epoch
    assert steps == 4 * per_epoch and len(lrs) == steps
    first = [g[0] for g in lrs]
    assert first[0] == pytest.approx(0.0)  # warmup starts at 0
    assert first[per_epoch] == pytest.approx(lr)  # warmup ends after exactly one epoch of optimizer steps
    assert max(first) == pytest.approx(lr)  # never squared, never above the peak
    progress = (steps - 1 - per_epoch) / (steps - per_epoch)
    expected_last = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    assert first[-1] == pytest.approx(expected_last)


def test_exclude_bias_and_norm_from_weight_decay():
    model = SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[4], weight_decay=0.1, exclude_bias_and_norm_from_wd=True)
    groups = model._split_weight_decay(model.parameter_groups())
    decayed = [p for g in groups if g.get("weight_decay", 0.1) > 0 for p in g["params"]]
    assert decayed and all(p.ndim > 1 for p in decayed)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_without_the_exclusion_every_parameter_is_decayed_in_one_group():
    """The default keeps the paper's runs as they were: one group, every parameter decayed."""
    model = SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[4], weight_decay=0.1)
    (group,) = model._split_weight_decay(model.parameter_groups())
    assert len(group["params"]) == len(list(model.parameters())) and "weight_decay" not in group


def test_timm_backbones_name_more_parameters_without_weight_decay():
    """A ViT's position embedding and class token (timm's ``no_weight_decay()``) join the 1-d
    parameters; every other matrix is decayed."""
    model = SimCLR(backbone="vit_tiny_patch16_224", backbone_kwargs={"img_size": 32, "patch_size": 4, "depth": 1},
                   projector_dims=[8], exclude_bias_and_norm_from_wd=True)
    exempt = model.no_weight_decay_parameters()
    names = {name for name, p in model.named_parameters() if id(p) in exempt}
    one_d = {name for name, p in model.named_parameters() if p.ndim <= 1}
    assert {"backbone.norm.weight", "backbone.blocks.0.attn.qkv.bias", "projector.0.bias"} <= one_d
    assert names == one_d | {"backbone.cls_token", "backbone.pos_embed"}


OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "lars": Lars, "adamw": torch.optim.AdamW}


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
def test_each_optimizer_trains_on_the_same_schedule_with_its_groups(name, exclude):
    lr, min_lr, wd = 0.01, 0.0001, 0.05
    lrs, trainer = _fit(1, max_epochs=2, optimizer=name, lr=lr, min_lr=min_lr, warmup_epochs=1, weight_decay=wd,
                        exclude_bias_and_norm_from_wd=exclude, adamw_betas=(0.8, 0.95), adamw_eps=1e-6)
    optimizer, model = trainer.optimizers[0], trainer.lightning_module
    assert type(optimizer) is OPTIMIZER_CLASSES[name]
    first = [g[0] for g in lrs]
    steps = trainer.global_step
    assert first == pytest.approx([lr * warmup_cosine_factor(k, 16, steps, min_lr / lr) for k in range(steps)])
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == ([wd, 0.0] if exclude else [wd])
    if exclude:
        assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    if name == "lars":  # the trust ratio for the decayed group only (solo-learn's rule)
        assert [g["always_adapt"] for g in groups] == ([True, False] if exclude else [True])
    if name == "adamw":
        assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, lars, adamw, got 'adam'"),
    ({"optimizer": "adamw", "adamw_betas": (0.9, 1.0)}, "adamw_betas must be two numbers in [0, 1)"),
    ({"optimizer": "adamw", "adamw_eps": 0.0}, "adamw_eps > 0, got [0.9, 0.999] and 0.0"),
    ({"optimizer": "adamw", "nesterov": True}, "nesterov applies to the sgd and lars optimizers, not adamw"),
])
def test_optimizer_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError) as refused:
        SimCLR(backbone="mlp", input_dim=8, projector_dims=[4], **kwargs)
    assert message in str(refused.value)


@pytest.mark.parametrize("warmup_epochs, schedule_epochs, expected", [
    (3, None, None),
    (4, None, "warmup_epochs 4 is as long as training (64 = 64 optimizer steps)"),
    (5, None, "warmup_epochs 5 is longer than training (80 > 64 optimizer steps)"),
    (5, 100, "warmup_epochs 5 is longer than training (80 > 64 optimizer steps)"),  # a longer schedule cut short
])
def test_warmup_as_long_as_training_warns_once_at_fit_start(warmup_epochs, schedule_epochs, expected, recwarn):
    _fit(1, warmup_epochs=warmup_epochs, schedule_epochs=schedule_epochs)
    messages = [str(w.message) for w in recwarn if "warmup never finishes" in str(w.message)]
    assert messages == ([] if expected is None else [f"{expected}: warmup never finishes and the lr never reaches its peak"])


def test_lr_is_logged_once_per_optimizer_step_under_accumulation(image_folder, tmp_path):
    """SimSiam's config (accumulate_grad_batches 4) on 72 images in batches of 8: 9 micro-batches, 3
    optimizer steps per epoch (windows of 4, 4, 1). metrics.csv gets one lr row per optimizer step,
    with the lr that step applied (the norm monitor's lr/base), not one per micro-batch."""
    run_dir = tmp_path / "run"
    main(["fit", "--config", str(REPO / "configs" / "simsiam" / "cifar10.yaml"), *TINY_RESNET, "--model.init_args.predictor_hidden_dims",
          "[8]", "--data.init_args.root", str(image_folder), "--data.init_args.batch_size", "8", "--trainer.max_epochs", "2",
          "--trainer.limit_val_batches", "0", "--model.init_args.warmup_epochs", "1", "--run_dir", str(run_dir)])
    rows = read_metrics_csv(run_dir / "metrics.csv")
    logged = [(int(row["step"]), float(row["lr-SGD"])) for row in rows if row.get("lr-SGD")]
    applied = [(int(row["step"]), float(row["lr/base"])) for row in rows if row.get("lr/base")]
    assert [step for step, _ in logged] == list(range(6))
    assert logged == [(step, pytest.approx(lr, rel=1e-6, abs=1e-12)) for step, lr in applied]  # lr/base is float32
    assert logged[3][1] == pytest.approx(0.12)  # the end of the one-epoch warmup
