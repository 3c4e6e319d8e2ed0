"""What every SSL method shares: backbone by name, optimizer, warmup-cosine schedule, and the
exposure contract that callbacks rely on.

The exposure contract (the only thing callbacks may know about a method):

* ``training_step`` returns ``{"loss": loss, "ssl": SSLStep(...)}``. Lightning hands that dict to
  every callback's ``on_train_batch_end`` as ``outputs`` (tensors detached). ``SSLStep.embeddings``
  are the loss-space embeddings (one tensor per view, the tensors the loss is applied to) and
  ``SSLStep.features`` the backbone features; row i of every view is the same image, so rows with
  equal index across views are the positive pairs.
* Every method passes its loss-space embeddings through ``self.loss_space(z)`` right before the
  loss. Interventions such as GradScale register a function in ``loss_space_hooks`` to wrap them.
* ``validation_step`` returns ``{"features", "embeddings", "label", "index"}`` for un-augmented
  images, computed by ``embed``; monitors (OnlineKNN, norm studies) collect them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import lightning as L
import torch
from torch import Tensor, nn

from ssl_norms.models import build_backbone
from ssl_norms.optim import (
    ACCUMULATIONS, LR_SCHEDULES, OPTIMIZERS, SCHEDULE_UNITS, Accumulation, LrSchedule, OptimizerName, ScheduleUnit,
    build_optimizer, lr_factor, scale_gradients,
)
from ssl_norms.optim import warmup_cosine_factor  # noqa: F401  (its former home; tests import it from here)


class SSLStep(NamedTuple):
    """One training step as callbacks see it."""

    loss: Tensor
    features: list[Tensor]  # backbone features, one (N, F) tensor per view
    embeddings: list[Tensor]  # loss-space embeddings, one (N, D) tensor per view


def apply_to_views(network: Callable[[Tensor], Tensor], views: list[Tensor]) -> list[Tensor]:
    """``network`` applied to each view; same-shape views go through in one batched call."""
    if all(v.shape == views[0].shape for v in views):
        return list(network(torch.cat(views)).chunk(len(views)))
    return [network(v) for v in views]


def two_views(method: str, views: list[Tensor]) -> list[Tensor]:
    """``views`` when there are exactly two (pairwise methods), else a one-line error naming the fix."""
    if len(views) != 2:
        raise ValueError(f"{method} uses exactly 2 views, got {len(views)}: set --data.init_args.num_views 2")
    return views


def _is_bias_or_norm(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1  # biases and BatchNorm/LayerNorm affine parameters are 1-d


class SSLMethod(L.LightningModule):
    """Base of every method. Subclasses build their heads, implement ``project`` and ``ssl_step``.

    Args:
        backbone: ``resnet18``/``resnet34``/``resnet50``/``resnet101``, ``mlp`` (vector data) or a timm model name.
        cifar_stem: 3x3 stride-1 first conv and no max-pool (32 px images).
        backbone_width: channels of the first ResNet stage (64 standard; 16 for CPU-scale studies).
        input_dim / mlp_hidden_dims: for the ``mlp`` backbone.
        lr: peak learning rate (absolute), reached at the end of warmup.
        momentum / nesterov / weight_decay: SGD settings.
        exclude_bias_and_norm_from_wd: no weight decay on biases and normalisation parameters.
        warmup_epochs: linear warmup length, in epochs (fractions allowed); counted in optimizer steps.
        warmup_start_factor: lr at step 0 as a fraction of ``lr``.
        min_lr: absolute lr at the end of the cosine (``released_get_lr``: get_lr's ``lr_min``).
        zero_init_residual: zero the last BatchNorm scale of every residual block (torchvision's
            option; the paper's released code sets it).
        optimizer: ``sgd`` or ``lars`` (timm's LARS with solo-learn's rule, see ``ssl_norms.optim``);
            ``lars_eta`` is its trust coefficient, ``lars_clip`` clips the trust ratio at ``lr``.
        lr_schedule: ``warmup_cosine`` (absolute lr units) or ``released_get_lr`` (the paper code's
            absolute-lr function used as LambdaLR's multiplier: ``lr**2`` at the peak).
        schedule_unit: epochs of the schedule measured in optimizer steps (``optimizer_step``) or in
            the training loader's micro-batches (``micro_batch``, the paper code: with accumulation k,
            warmup and cosine last k times their epochs).
        schedule_epochs: length of the cosine in epochs, independent of where training stops
            (default: the trainer's ``max_epochs``); e.g. train 100 epochs of a 512-epoch schedule.
        accumulation: ``mean`` (Lightning's average of the accumulated micro-batch gradients) or
            ``sum`` (their sum, as the paper code: k times the mean gradient).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = True,
        backbone_width: int = 64,
        input_dim: int | None = None,
        mlp_hidden_dims: list[int] | None = None,
        lr: float = 0.3,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-6,
        exclude_bias_and_norm_from_wd: bool = False,
        warmup_epochs: float = 10.0,
        warmup_start_factor: float = 0.0,
        min_lr: float = 0.0,
        zero_init_residual: bool = False,
        optimizer: OptimizerName = "sgd",
        lars_eta: float = 1e-3,
        lars_clip: bool = False,
        lr_schedule: LrSchedule = "warmup_cosine",
        schedule_unit: ScheduleUnit = "optimizer_step",
        schedule_epochs: float | None = None,
        accumulation: Accumulation = "mean",
    ) -> None:
        super().__init__()
        for name, value in {"lr": lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "min_lr": min_lr}.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if min_lr > lr:
            raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
        for name, value, allowed in [("optimizer", optimizer, OPTIMIZERS), ("lr_schedule", lr_schedule, LR_SCHEDULES),
                                     ("schedule_unit", schedule_unit, SCHEDULE_UNITS), ("accumulation", accumulation, ACCUMULATIONS)]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if schedule_epochs is not None and not (math.isfinite(schedule_epochs) and schedule_epochs > warmup_epochs):
            raise ValueError(f"schedule_epochs must exceed warmup_epochs ({warmup_epochs}), got {schedule_epochs}")
        if not lars_eta > 0:
            raise ValueError(f"lars_eta must be > 0, got {lars_eta}")
        self.save_hyperparameters()
        self.backbone, self.feature_dim = build_backbone(
            backbone, cifar_stem=cifar_stem, width=backbone_width, input_dim=input_dim, hidden_dims=mlp_hidden_dims,
            zero_init_residual=zero_init_residual,
        )
        # Functions applied to loss-space embeddings right before the loss (see module docstring).
        self.loss_space_hooks: list[Callable[[Tensor], Tensor]] = []

    # ---- what a method implements -------------------------------------------------------------
    def project(self, features: Tensor) -> Tensor:
        """Backbone features -> loss-space embeddings (the online branch)."""
        raise NotImplementedError

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        """Loss of one batch of views, with the features and loss-space embeddings it used."""
        raise NotImplementedError

    # ---- shared machinery ----------------------------------------------------------------------
    def loss_space(self, z: Tensor) -> Tensor:
        for hook in self.loss_space_hooks:
            z = hook(z)
        return z

    def encode_views(self, views: list[Tensor]) -> list[Tensor]:
        """Backbone features of each view; same-shape views go through in one batched call."""
        return apply_to_views(self.backbone, views)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features, loss-space embeddings) of un-augmented inputs."""
        features = self.backbone(x)
        return features, self.project(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        step = self.ssl_step(batch["views"])
        self.log("train/loss", step.loss, prog_bar=True)
        return {"loss": step.loss, "ssl": step}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        features, embeddings = self.embed(batch["image"])
        return {"features": features, "embeddings": embeddings, "label": batch["label"], "index": batch["index"]}

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    # ---- optimisation --------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer. A group with ``"scheduled": False`` keeps a fixed lr
        (SimSiam's predictor option); methods override to add such groups."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def _split_weight_decay(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.hparams.exclude_bias_and_norm_from_wd:
            return groups
        names = {id(p): n for n, p in self.named_parameters()}
        split = []
        for group in groups:
            decay = [p for p in group["params"] if not _is_bias_or_norm(names.get(id(p), ""), p)]
            no_decay = [p for p in group["params"] if _is_bias_or_norm(names.get(id(p), ""), p)]
            split += [{**group, "params": decay}, {**group, "params": no_decay, "weight_decay": 0.0, "no_decay": True}]
        return [g for g in split if g["params"]]

    def steps_per_epoch(self, unit: str = "optimizer_step") -> int:
        """Schedule steps per epoch: optimizer steps (micro-batches / accumulation), so schedules count
        real updates; ``micro_batch``: the training loader's length, as the paper code counts."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches  # also loads the train dataloader
        if unit == "micro_batch":
            return max(1, len(trainer.train_dataloader))
        if trainer.max_epochs and trainer.max_epochs > 0 and trainer.num_training_batches != float("inf"):
            return max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        return max(1, int(total))

    def configure_optimizers(self):
        hp = self.hparams
        groups = self._split_weight_decay(self.parameter_groups())
        for group in groups:
            group.setdefault("weight_decay", hp.weight_decay)
        optimizer = build_optimizer(
            hp.optimizer, groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, lars_eta=hp.lars_eta, lars_clip=hp.lars_clip
        )
        per_epoch = self.steps_per_epoch(hp.schedule_unit)
        epochs = hp.schedule_epochs if hp.schedule_epochs is not None else self.trainer.max_epochs
        if hp.schedule_epochs is None and hp.schedule_unit == "optimizer_step":
            total_steps = max(1, int(self.trainer.estimated_stepping_batches))  # also right when max_steps ends training
        else:
            total_steps = max(1, int(round(epochs * per_epoch)))
        factor = lr_factor(
            hp.lr_schedule, lr=hp.lr, min_lr=hp.min_lr, warmup_start=hp.warmup_start_factor, steps_per_epoch=per_epoch,
            warmup_epochs=hp.warmup_epochs, total_steps=total_steps, schedule_epochs=epochs,
        )
        lambdas = [factor if g.get("scheduled", True) else (lambda step: 1.0) for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.hparams.accumulation == "sum":
            scale_gradients(self.parameters(), self.trainer.accumulate_grad_batches)
