"""Optimisers, learning-rate schedules and gradient-accumulation reduction of :class:`SSLMethod`.

The defaults are the clean recipe (SGD, warmup then cosine in absolute lr units counted in
optimizer steps, accumulated micro-batch gradients averaged). The other options reproduce what
released code actually ran, so that "as stated" and "as run" are both real, named choices:

* ``lr_schedule="released_get_lr"``: the paper's released training loop hands ``get_lr``, which
  returns an *absolute* lr, to ``LambdaLR`` as its multiplier (SSLEmbeddingNorms
  ``CLA/training/training_loop.py:60-70`` with ``CLA/utils/utils.py:11-20``). The applied lr is
  therefore ``lr * get_lr(step, ..., lr_max=lr, lr_min)``: ``lr**2`` at the end of warmup.
* ``schedule_unit="micro_batch"``: that loop also sizes warmup and cosine with ``len(train_loader)``
  (micro-batches per epoch) but advances the schedule once per optimizer step, so with gradient
  accumulation k both last k times longer than their stated epochs.
* ``accumulation="sum"``: it never divides the accumulated micro-batch losses by k, so each
  optimizer step sees the *sum* of k mean gradients (``training_loop.py:176-189``).
* ``optimizer="lars"``: IsoLoss and FroSSL train with solo-learn's LARS; this is timm's
  :class:`~timm.optim.Lars` with solo-learn's parameter-group rule (see :func:`build_optimizer`).

``optimizer="adamw"`` (torch's AdamW) is for backbones trained that way, such as ViTs; every optimizer
runs the same step-counted schedules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor

LrSchedule = Literal["warmup_cosine", "released_get_lr"]
ScheduleUnit = Literal["optimizer_step", "micro_batch"]
Accumulation = Literal["mean", "sum"]
OptimizerName = Literal["sgd", "lars", "adamw"]

LR_SCHEDULES = ("warmup_cosine", "released_get_lr")
SCHEDULE_UNITS = ("optimizer_step", "micro_batch")
ACCUMULATIONS = ("mean", "sum")
OPTIMIZERS = ("sgd", "lars", "adamw")


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float, warmup_start: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from ``warmup_start`` to 1, then cosine
    down to ``floor`` (a fraction of the base lr) at ``total_steps``.

    LambdaLR multiplies the base lr by this value, so it must be a *factor*; returning an absolute
    lr here would square the learning rate (which is what ``released_get_lr`` reproduces on purpose).
    """
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def released_get_lr(step: int, steps_per_epoch: int, epochs: float, lr_max: float, lr_min: float, warmup_epochs: float) -> float:
    """The released code's ``get_lr`` (SSLEmbeddingNorms ``CLA/utils/utils.py:11-20``): an absolute lr.

    Linear from 0 to ``lr_max`` over ``warmup_epochs`` epochs (the last warmup step included), then
    ``lr_min + (lr_max - lr_min) (1 + cos(pi step / total)) / 2`` where the cosine's phase counts
    from step 0, not from the end of warmup (so the lr drops a little right after warmup), and is
    not clamped after ``total`` (the released runs never train past it).
    """
    total = steps_per_epoch * epochs
    warmup = warmup_epochs * steps_per_epoch
    if step > warmup or warmup == 0:
        return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(step / total * math.pi))
    return lr_max * step / warmup


def lr_factor(
    schedule: str, *, lr: float, min_lr: float, warmup_start: float, steps_per_epoch: int, warmup_epochs: float, total_steps: int,
    schedule_epochs: float,
) -> Callable[[int], float]:
    """The LambdaLR multiplier of the configured ``lr`` at each optimizer step.

    ``warmup_cosine``: warmup over ``warmup_epochs * steps_per_epoch`` steps, cosine to ``min_lr``
    (absolute) at ``total_steps``. ``released_get_lr``: :func:`released_get_lr` with
    ``lr_max = lr`` and ``lr_min = min_lr``, itself the multiplier (hence ``lr**2`` at the peak).
    """
    if schedule == "released_get_lr":
        return lambda step: released_get_lr(step, steps_per_epoch, schedule_epochs, lr, min_lr, warmup_epochs)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    floor = min_lr / lr if lr > 0 else 0.0
    return lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, floor, warmup_start)


def split_weight_decay(groups: list[dict[str, Any]], no_decay: set[int]) -> list[dict[str, Any]]:
    """Each group split in two: its parameters with weight decay, and those whose ``id`` is in
    ``no_decay`` with ``weight_decay: 0`` and ``no_decay: True`` (which also keeps LARS from adapting
    them, see :func:`build_optimizer`). Empty groups are dropped; the other keys of a group are kept."""
    split = []
    for group in groups:
        decay = [p for p in group["params"] if id(p) not in no_decay]
        excluded = [p for p in group["params"] if id(p) in no_decay]
        split += [{**group, "params": decay}, {**group, "params": excluded, "weight_decay": 0.0, "no_decay": True}]
    return [g for g in split if g["params"]]


def scale_lr(groups: list[dict[str, Any]], scales: dict[int, float], lr: float) -> list[dict[str, Any]]:
    """Each group split by the lr multiplier of its parameters (``scales``: ``id`` -> multiplier,
    1 when absent): a part with multiplier m != 1 gets ``lr`` = m x the group's lr (default ``lr``)
    and ``lr_scale: m``. LambdaLR multiplies each group's initial lr, so the schedule still applies,
    with m as a constant factor. Unscaled groups come first, in their order, so group 0 keeps the
    configured lr (the lr the progress line and the norm monitor report). The other keys of a group
    are kept."""
    split = []
    for group in groups:
        parts: dict[float, list] = {}
        for param in group["params"]:
            parts.setdefault(scales.get(id(param), 1.0), []).append(param)
        for scale, params in parts.items():
            scaled = {} if scale == 1.0 else {"lr": group.get("lr", lr) * scale, "lr_scale": scale}
            split.append({**group, "params": params, **scaled})
    return sorted(split, key=lambda group: "lr_scale" in group)


def build_optimizer(
    name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float = 0.9, nesterov: bool = False,
    lars_eta: float = 1e-3, lars_clip: bool = False, adamw_betas: tuple[float, float] = (0.9, 0.999), adamw_eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """SGD, AdamW, or LARS with solo-learn's rule (``solo/utils/lars.py``, ``exclude_bias_n_norm``):
    groups without weight decay (the ``no_decay`` groups of :func:`split_weight_decay`) get neither the
    trust ratio nor weight decay; every other group is adapted, also with ``weight_decay: 0``.
    ``lars_clip`` is LARC clipping of the trust ratio at ``lr`` (solo-learn's ``clip_lr``). Each
    group's ``weight_decay`` is the caller's: AdamW's is decoupled, SGD's and LARS's an L2 term."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(adamw_betas), eps=adamw_eps)
    from timm.optim import Lars

    for group in groups:
        group["always_adapt"] = not group.get("no_decay", False)
    return Lars(groups, lr=lr, momentum=momentum, nesterov=nesterov, trust_coeff=lars_eta, trust_clip=lars_clip)


@torch.no_grad()
def scale_gradients(params: Iterable[Tensor], factor: float) -> None:
    """Multiply every existing gradient by ``factor`` (Lightning averages accumulated micro-batches;
    ``factor = k`` turns that mean into the sum)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads and factor != 1:
        torch._foreach_mul_(grads, factor)
