"""WeightNormMonitor: weight norms and effective learning rates per layer group, during training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ssl_norms.lightning_compat import is_logging_step
from ssl_norms.models.scale_invariance import layer_group, normalised_layers


class WeightNormMonitor(Callback):
    """Logs, at every logging step and per layer group (``backbone.stem``, ``backbone.layer1`` ...
    ``projector``, ``predictor``; see :func:`~ssl_norms.models.scale_invariance.layer_group`):

    * ``weights/<group>/norm``: the norm of the scale-invariant parameters, i.e. weights and biases of
      the Linear/Conv layers that feed a normalisation layer (most of a ResNet);
    * ``weights/<group>/eff_lr``: the mean over those layers of ``lr / ||w_layer||^2``, the step
      size such a layer actually takes (its lr is its optimizer group's, after the step's update);
    * ``weights/<group>/free_norm``: the norm of every other parameter of the group (normalisation
      affine parameters, layers not followed by normalisation), which set the output scale.

    Cut-initialisation divides the scale-invariant weights by c without changing the function, so
    their ``eff_lr`` jumps by c^2 (issue 16's hypothesis); this monitor makes that visible. The
    layers are found once per fit by :func:`~ssl_norms.models.scale_invariance.normalised_layers`.
    """

    def __init__(self) -> None:
        self._groups: dict[str, tuple[list[list[torch.Tensor]], list[torch.Tensor]]] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fed = normalised_layers(pl_module)
        modules = dict(pl_module.named_modules())
        groups: dict[str, tuple[list[list[torch.Tensor]], list[torch.Tensor]]] = {}
        invariant: set[int] = set()
        for name, feeds_norm in fed.items():
            if feeds_norm:
                params = list(modules[name].parameters(recurse=False))
                groups.setdefault(layer_group(name), ([], []))[0].append(params)
                invariant.update(id(p) for p in params)
        for name, param in pl_module.named_parameters():
            if id(param) not in invariant:
                groups.setdefault(layer_group(name), ([], []))[1].append(param)
        self._groups = groups

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._groups or not is_logging_step(trainer):
            return
        lrs = {id(p): group["lr"] for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        metrics = {}
        for group, (layers, free) in self._groups.items():
            if layers:
                sq = [sum(p.float().pow(2).sum() for p in params) for params in layers]
                metrics[f"weights/{group}/norm"] = torch.stack(sq).sum().sqrt()
                eff = [lrs.get(id(params[0]), 0.0) / s.clamp_min(1e-24) for params, s in zip(layers, sq)]
                metrics[f"weights/{group}/eff_lr"] = torch.stack(eff).mean()
            if free:
                metrics[f"weights/{group}/free_norm"] = torch.stack([p.float().pow(2).sum() for p in free]).sum().sqrt()
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
