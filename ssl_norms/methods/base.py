"""What every SSL method shares: backbone by name, optimizer, warmup-cosine schedule, and the
implementation of the exposure contract (``ssl_norms.contract``): the view-count check before
``ssl_step``, the heads applied to all views in one call (``embed_views``), the loss-space hooks,
and the typed training and evaluation outputs.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch
from typing import Any, Callable, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.hardware import channels_last_is_faster, use_channels_last
from ssl_norms.models import build_backbone
from ssl_norms.models.backbones import input_size_error
from ssl_norms.optim import (
    ACCUMULATIONS, LR_SCHEDULES, OPTIMIZERS, SCHEDULE_UNITS, Accumulation, LrSchedule, OptimizerName, ScheduleUnit,
    build_optimizer, lr_factor, scale_gradients, scale_lr, split_weight_decay,
)
from ssl_norms.optim import warmup_cosine_factor  # noqa: F401  (its former home; tests import it from here)




def apply_to_views(network: Callable[[Tensor], Tensor], views: list[Tensor]) -> list[Tensor]:
    """``network`` applied to each view; same-shape views go through in one batched call."""
    if all(v.shape == views[0].shape for v in views):
        return list(network(torch.cat(views)).chunk(len(views)))
    return [network(v) for v in views]


def _check_layer_dims(hparams: dict[str, Any]) -> None:
    """Every ``*_dims`` argument lists layer widths: positive integers, and at least one unless the
    layers are optional hidden ones (``*_hidden_dims``)."""
    for name, dims in hparams.items():
        if not name.endswith("_dims") or dims is None:
            continue
        dims = list(dims)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
            raise ValueError(f"{name} must list layer widths >= 1, got {dims}")
        if not dims and not name.endswith("_hidden_dims"):
            raise ValueError(f"{name} must list at least one layer width, got []")


class SSLMethod(L.LightningModule):
    """Base of every method. Subclasses build their heads, implement ``embed_features`` and
    ``ssl_step``, and set ``accepted_views`` when their loss takes other than exactly 2 views.

    Args:
        backbone: ``resnet18``/``resnet34``/``resnet50``/``resnet101``, ``mlp`` (vector data) or a timm model name.
        cifar_stem: 3x3 stride-1 first conv and no max-pool (32 px images).
        backbone_width: channels of the first ResNet stage (64 standard; 16 for CPU-scale studies).
        input_dim / mlp_hidden_dims: for the ``mlp`` backbone.
        backbone_kwargs: further arguments of a timm backbone, e.g. ``{img_size: 32, patch_size: 4}``
            for a ViT on 32 px images.
        lr: peak learning rate (absolute), reached at the end of warmup.
        momentum / nesterov: SGD's and LARS's momentum; weight_decay: every optimizer's (AdamW's is decoupled).
        exclude_bias_and_norm_from_wd: no weight decay (and with LARS no trust ratio) on biases,
            normalisation parameters and what a timm backbone declares in ``no_weight_decay()`` (a
            ViT's position embedding and class token). Off by default, as the paper's runs decayed every
            parameter; ViT training (the ``configs/presets/vit_tiny_cifar.yaml`` preset) turns it on.
        warmup_epochs: linear warmup length, in epochs (fractions allowed); counted in optimizer steps.
        warmup_start_factor: lr at step 0 as a fraction of ``lr``.
        min_lr: absolute lr at the end of the cosine (``released_get_lr``: get_lr's ``lr_min``).
        zero_init_residual: zero the last BatchNorm scale of every residual block (torchvision's
            option; the paper's released code sets it).
        optimizer: ``sgd``, ``lars`` (timm's LARS with solo-learn's rule, see ``ssl_norms.optim``) or
            ``adamw`` (torch's); ``lars_eta`` is LARS's trust coefficient, ``lars_clip`` clips the trust
            ratio at ``lr``; ``adamw_betas`` and ``adamw_eps`` are AdamW's. All follow ``lr_schedule``.
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

    #: Views per training image the loss accepts: (fewest, most), most None for no limit.
    accepted_views: ClassVar[tuple[int, int | None]] = (2, 2)

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = True,
        backbone_width: int = 64,
        input_dim: int | None = None,
        mlp_hidden_dims: list[int] | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
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
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
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
        if len(adamw_betas) != 2 or not all(0 <= beta < 1 for beta in adamw_betas) or not adamw_eps > 0:
            raise ValueError(
                f"adamw_betas must be two numbers in [0, 1) and adamw_eps > 0, got {list(adamw_betas)} and {adamw_eps}"
            )
        if nesterov and optimizer == "adamw":
            raise ValueError("nesterov applies to the sgd and lars optimizers, not adamw")
        self.save_hyperparameters()  # also records the subclass's arguments
        _check_layer_dims(self.hparams)
        self.backbone, self.feature_dim = build_backbone(
            backbone, cifar_stem=cifar_stem, width=backbone_width, input_dim=input_dim, hidden_dims=mlp_hidden_dims,
            zero_init_residual=zero_init_residual, backbone_kwargs=backbone_kwargs,
        )
        # Functions applied to the loss's input right before the loss (ssl_norms.contract).
        self.loss_space_hooks: list[Callable[..., Tensor]] = []
        # channels_last convolutions (ssl_norms.hardware): None where the hardware runs them faster
        self.channels_last: bool | None = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device.type if self._trainer is not None else "cpu"
        if self.channels_last if self.channels_last is not None else channels_last_is_faster(self.backbone, device):
            use_channels_last(self, self.backbone)

    # ---- what a method implements -------------------------------------------------------------
    def embed_features(self, features: Tensor) -> Tensor:
        """Backbone features -> loss-space embeddings (the online branch: projector, predictor ...)."""
        raise NotImplementedError

    def ssl_step(self, views: list[Tensor]) -> SSLStep:
        """Loss of one batch of views, with the features and loss-space embeddings it used."""
        raise NotImplementedError

    # ---- shared machinery ----------------------------------------------------------------------
    def check_views(self, views: list[Tensor]) -> None:
        """A one-line error naming the fix unless ``len(views)`` is in ``accepted_views``."""
        fewest, most = self.accepted_views
        if fewest <= len(views) and (most is None or len(views) <= most):
            return
        name = type(self).__name__
        if most is None:
            accepted, fix = f"needs at least {fewest}", f"{fewest} or more"
        elif most == fewest:
            accepted, fix = f"uses exactly {fewest}", f"{fewest}"
        else:
            accepted, fix = f"uses {fewest} to {most}", f"between {fewest} and {most}"
        raise ValueError(f"{name} {accepted} views, got {len(views)}: set --data.init_args.num_views {fix}")

    def check_input_size(self, size: int | None) -> None:
        """A one-line error naming the fix unless the backbone takes ``size`` x ``size`` images (None:
        not image data); the CLI calls it before the run starts, so a misfit never reaches a forward pass."""
        error = input_size_error(self.hparams.backbone, self.backbone, size, size) if size is not None else None
        if error:
            raise ValueError(error)

    def loss_space(self, z: Tensor, norm_source: Tensor | None = None) -> Tensor:
        """``z`` through every hook; ``norm_source`` is the loss-space embedding when it is not ``z``."""
        for hook in self.loss_space_hooks:
            z = hook(z, norm_source=z if norm_source is None else norm_source)
        return z

    def encode_views(self, views: list[Tensor]) -> list[Tensor]:
        """Backbone features of each view; same-shape views go through in one batched call."""
        return apply_to_views(self.backbone, views)

    def embed_views(self, inputs: list[Tensor], head: Callable[[Tensor], Tensor] | None = None) -> list[Tensor]:
        """Loss-space embeddings of each view: ``head`` (default ``embed_features``) over all views in
        one batched call (BatchNorm sees all V x N rows), through ``loss_space``, split per view."""
        head = head or self.embed_features
        return apply_to_views(lambda x: self.loss_space(head(x)), inputs)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(backbone features, loss-space embeddings) of un-augmented inputs."""
        features = self.backbone(x)
        return features, self.embed_features(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.check_views(batch["views"])
        step = self.ssl_step(batch["views"])
        self.log("train/loss", step.loss, prog_bar=True)
        # the epoch's mean, a row per epoch whatever log_every_n_steps (one call with on_step and
        # on_epoch would rename the per-step column train/loss_step)
        self.log("train/loss_epoch", step.loss, on_step=False, on_epoch=True, batch_size=len(batch["views"][0]), sync_dist=True)
        return {"loss": step.loss, "ssl": step}

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> EmbeddedBatch:
        return EmbeddedBatch(*self.embed(batch["image"]), batch["label"], batch["index"])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> EmbeddedBatch:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> EmbeddedBatch:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    # ---- optimisation --------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer. A group with ``"scheduled": False`` keeps a fixed lr
        (SimSiam's predictor option); methods override to add such groups."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def no_weight_decay_parameters(self) -> set[int]:
        """``id``s of the parameters ``exclude_bias_and_norm_from_wd`` exempts: the 1-d ones (biases,
        BatchNorm/LayerNorm affine parameters) and those the backbone names in timm's ``no_weight_decay()``."""
        declared = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        named = {id(p) for name, p in self.backbone.named_parameters() if any(fnmatch(name, pattern) for pattern in declared)}
        return named | {id(p) for p in self.parameters() if p.ndim <= 1}

    def _split_weight_decay(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self.hparams.exclude_bias_and_norm_from_wd:
            return groups
        return split_weight_decay(groups, self.no_weight_decay_parameters())

    def lr_scales(self) -> dict[int, float]:
        """``{id(parameter): lr multiplier}`` from the trainer's callbacks that define
        ``lr_scales(module)`` (``CutInit(bn_lr_scale=True)``); multipliers of one parameter multiply."""
        scales: dict[int, float] = {}
        for callback in self.trainer.callbacks if self._trainer is not None else []:
            for key, scale in (callback.lr_scales(self) if hasattr(callback, "lr_scales") else {}).items():
                scales[key] = scales.get(key, 1.0) * scale
        return scales

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
        groups = scale_lr(self._split_weight_decay(self.parameter_groups()), self.lr_scales(), hp.lr)
        for group in groups:
            group.setdefault("weight_decay", hp.weight_decay)
        optimizer = build_optimizer(
            hp.optimizer, groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, lars_eta=hp.lars_eta,
            lars_clip=hp.lars_clip, adamw_betas=hp.adamw_betas, adamw_eps=hp.adamw_eps,
        )
        per_epoch = self.steps_per_epoch(hp.schedule_unit)
        epochs = hp.schedule_epochs if hp.schedule_epochs is not None else self.trainer.max_epochs
        if hp.schedule_epochs is None and hp.schedule_unit == "optimizer_step":
            total_steps = max(1, int(self.trainer.estimated_stepping_batches))  # also right when max_steps ends training
        else:
            total_steps = max(1, int(round(epochs * per_epoch)))
        warmup_steps = int(round(hp.warmup_epochs * per_epoch))
        trained = self.trainer.estimated_stepping_batches  # this run's optimizer steps, whatever the schedule's length
        trained = max(1, int(trained)) if math.isfinite(trained) else math.inf
        if warmup_steps >= trained:
            relation, sign = ("as long as", "=") if warmup_steps == trained else ("longer than", ">")
            rank_zero_warn(
                f"warmup_epochs {hp.warmup_epochs:g} is {relation} training ({warmup_steps} {sign} {trained} optimizer steps): "
                f"warmup never finishes and the lr never reaches its peak"
            )
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
