"""Warmup-cosine schedule: factor values and the lr a real Trainer applies."""

from __future__ import annotations

import math

import lightning as L
import pytest

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


def _fit(accumulate: int, **model_kwargs) -> tuple[list[list[float]], int]:
    data = SyntheticLatentClasses(train_samples=512, val_samples=64, batch_size=32, num_classes=4)
    model = SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[32], projector_dims=[16], **model_kwargs)
    recorder = LrRecorder()
    trainer = L.Trainer(
        max_epochs=4, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[recorder],
    )
    trainer.fit(model, data)
    return recorder.lrs, trainer.global_step


@pytest.mark.parametrize("accumulate", [1, 4])
def test_trainer_lr_in_absolute_units_counted_in_optimizer_steps(accumulate):
    lr, min_lr = 0.4, 0.004
    lrs, steps = _fit(accumulate, lr=lr, min_lr=min_lr, warmup_epochs=1)
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
