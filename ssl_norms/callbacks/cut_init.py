"""CutInit: divide parameters by c once, before the first optimizer step of a fresh run.

Smaller weights give smaller embeddings, and by Prop 3.1 a cosine loss then takes larger steps,
so training starts faster (Draganov et al. 2025, Sec 5). The paper cuts every parameter. A
Linear/Conv layer whose output feeds a normalisation layer is scale invariant, though: the cut
leaves its function unchanged and multiplies its effective lr (lr / ||w||^2) by c^2
(``ssl_norms.models.scale_invariance``). The ``scope`` and ``bn_lr_scale`` options separate the
two effects (issue 16).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ssl_norms.models.scale_invariance import WEIGHT_LAYERS, normalised_layers

Scope = Literal["all", "unnormalised", "normalised"]
SCOPES = ("all", "unnormalised", "normalised")

# Attribute on the module holding the cut record, so the same module object fitted again is not cut twice.
MODULE_RECORD = "_cut_init_record"


@torch.no_grad()
def cut_parameters(module: nn.Module, c: float) -> int:
    """Divide every parameter of ``module`` in place by ``c``; returns how many values were divided.

    Parameters only: BatchNorm running statistics are buffers and are left alone (they describe
    activations, and the next training batches re-estimate them from the cut network).
    ``parameters()`` yields a shared tensor once, so tied weights are divided exactly once.
    """
    count = 0
    for param in module.parameters():
        param.div_(c)
        count += param.numel()
    return count


def scoped_parameters(module: nn.Module, scope: str) -> list[Tensor]:
    """The parameters (weight and bias) of the Linear/Conv layers of ``module`` whose output feeds a
    normalisation layer (``normalised``) or does not (``unnormalised``), each once.

    An EMA target's parameters (a submodule with ``parameter_twins()``, such as
    :class:`~ssl_norms.methods.ema.EMATarget`) go with their online twins. Any other Linear/Conv layer that the
    online forward pass does not reach is an error: whether it feeds a normalisation layer is unknown.
    """
    feeds_norm = normalised_layers(module)
    targets = [name for name, m in module.named_modules() if hasattr(m, "parameter_twins")]
    unknown = [
        name for name, m in module.named_modules()
        if isinstance(m, WEIGHT_LAYERS) and name not in feeds_norm and not any(name.startswith(f"{t}.") for t in targets)
    ]
    if unknown:
        raise ValueError(
            f"CutInit cannot tell whether {type(module).__name__}'s layers {', '.join(unknown)} feed a normalisation "
            "layer (its embed pass does not reach them); use scope 'all' without bn_lr_scale"
        )
    layers = dict(module.named_modules())
    chosen = {id(p): p for name, fed in feeds_norm.items() if fed == (scope == "normalised") for p in layers[name].parameters()}
    for name in targets:
        chosen.update({id(t): t for t, online in layers[name].parameter_twins() if id(online) in chosen})
    return list(chosen.values())


class CutInit(Callback):
    """Divide the LightningModule's parameters by ``c`` once, at ``on_train_start`` of a fresh run.

    ``scope`` picks the parameters:

    * ``all`` (the paper's): every parameter, i.e. weights, biases, BatchNorm affine parameters,
      heads, predictor and any EMA target network registered as a submodule, so a target
      deep-copied from the online network stays equal to the cut online network;
    * ``unnormalised``: only weight and bias of the Linear/Conv layers whose output does *not* feed
      a normalisation layer (SimCLR's last projector layer, SimSiam's last predictor layer): the
      part of the cut that changes the function and the embedding norm;
    * ``normalised``: only those of the layers that do; the network computes the same function,
      and only those layers' effective lr grows by c^2 (the control of the BN hypothesis).

    Layers are classified by :func:`~ssl_norms.models.scale_invariance.normalised_layers`; an EMA
    target's parameters follow their online twins. ``bn_lr_scale`` trains the parameters of the
    layers feeding normalisation with lr / c^2 for the whole run (a constant factor on the
    schedule), which cancels their effective-lr change: with SGD and no weight decay a cut layer
    then follows the uncut layer's trajectory divided by c as long as the rest of the network
    computes what the uncut one does. That holds exactly with ``scope="normalised"``; with ``all``
    the other parameters are cut too and keep the full lr, so it holds only approximately. It
    means nothing for ``unnormalised``, which does not cut those layers.

    At ``on_train_start`` the optimizer exists but has taken no step (SGD momentum buffers are
    empty), so it never sees the uncut weights. The application is recorded in the callback state,
    which Lightning saves in every checkpoint (``checkpoint["callbacks"]["CutInit"]["record"] =
    {"c", "global_step", "scope", "bn_lr_scale"}``), and on the module object. Weights that do not
    come from a fresh initialisation are handled explicitly:

    * a checkpoint (``--ckpt_path``, a resumed run or a new fit started from another run's
      checkpoint) or an earlier fit of the same module that *was* cut: never cut again;
    * a checkpoint or earlier fit that was *not* cut: ``on_checkpoint="skip"`` (default) keeps the
      weights and warns that CutInit did nothing; ``on_checkpoint="apply"`` cuts them once (e.g. to
      study a cut on a pretrained network). Optimizer state restored from that checkpoint is kept.

    The optimizer state of a checkpoint holds its group lrs, so a fit from a checkpoint must agree
    with it on ``bn_lr_scale`` (checked when the checkpoint is loaded).

    Weights loaded by hand (``Method.load_from_checkpoint`` then a new ``fit``) carry no record
    and count as a fresh initialisation; read the checkpoint's callback state to see whether they
    were cut.

    Args:
        c: the cut constant, a finite number > 0 (c < 1 enlarges the weights, as in Fig S4).
        on_checkpoint: ``skip`` or ``apply``, for weights from an uncut checkpoint (see above).
        scope: ``all``, ``unnormalised`` or ``normalised`` (see above).
        bn_lr_scale: lr / c^2 for the layers feeding normalisation (scope ``all`` or ``normalised``).
    """

    def __init__(
        self, c: float, on_checkpoint: Literal["skip", "apply"] = "skip", scope: Scope = "all", bn_lr_scale: bool = False,
    ) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"CutInit c must be a finite number > 0 (c < 1 is allowed), got {c!r}")
        if on_checkpoint not in ("skip", "apply"):
            raise ValueError(f"CutInit on_checkpoint must be 'skip' or 'apply', got {on_checkpoint!r}")
        if scope not in SCOPES:
            raise ValueError(f"CutInit scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if bn_lr_scale and scope == "unnormalised":
            raise ValueError("CutInit bn_lr_scale needs scope 'all' or 'normalised': scope 'unnormalised' does not cut "
                             "the layers feeding normalisation")
        self.c = float(c)
        self.on_checkpoint = on_checkpoint
        self.scope = scope
        self.bn_lr_scale = bool(bn_lr_scale)
        self.record: dict[str, Any] | None = None  # set once the current model has been cut
        self._weights_from: str | None = None  # where non-fresh weights came from, None when fresh
        self._lr_scaled = 0  # parameter values given lr / c^2 in this fit

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"record": self.record}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.record = state_dict.get("record")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called whenever the trainer restores a checkpoint, whether or not it holds our state.
        self._weights_from = f"checkpoint {trainer.ckpt_path}"
        record = ((checkpoint.get("callbacks") or {}).get(self.state_key) or {}).get("record")
        trained_scaled = bool(record and record.get("bn_lr_scale"))
        if trained_scaled != self.bn_lr_scale:
            raise ValueError(
                f"CutInit(bn_lr_scale={self.bn_lr_scale}) cannot continue from checkpoint {trainer.ckpt_path}: its optimizer "
                f"was built with bn_lr_scale={trained_scaled}; use the checkpoint's setting"
            )

    # ---- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a callback object may serve several fits: start every fit unrecorded
            self.record, self._weights_from, self._lr_scaled = None, None, 0

    def lr_scales(self, pl_module: nn.Module) -> dict[int, float]:
        """``{id(parameter): 1 / c^2}`` for the layers feeding normalisation when ``bn_lr_scale``;
        ``SSLMethod.configure_optimizers`` asks for it (after any checkpoint's callback state is loaded)."""
        if not self.bn_lr_scale:
            return {}
        params = [p for p in scoped_parameters(pl_module, "normalised") if p.requires_grad]
        self._lr_scaled = sum(p.numel() for p in params)
        return {id(p): self.c**-2 for p in params}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hparams = {"cut_init/c": self.c, "cut_init/scope": self.scope, "cut_init/bn_lr_scale": self.bn_lr_scale}
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # All restores (weights, callback state, optimizer) have happened by now, for every strategy.
        if self._weights_from is None and getattr(pl_module, MODULE_RECORD, None) is not None:
            self.record, self._weights_from = getattr(pl_module, MODULE_RECORD), "an earlier fit of this module"
        lr_note = f"; lr x 1/{self.c**2:g} on {self._lr_scaled} parameter values feeding normalisation" if self.bn_lr_scale else ""
        if self.record is not None:
            rank_zero_info(
                f"CutInit: weights from {self._weights_from} were already cut by c={self.record['c']:g} "
                f"(scope {self.record.get('scope', 'all')}) at step {self.record['global_step']}; not cutting again{lr_note}"
            )
        elif self._weights_from is not None and self.on_checkpoint == "skip":
            rank_zero_warn(
                f"CutInit(c={self.c:g}) did nothing: the weights come from {self._weights_from}, which was never cut; "
                "pass on_checkpoint='apply' to cut them"
            )
        else:
            values = self._cut(pl_module)
            self.record = {"c": self.c, "global_step": trainer.global_step, "scope": self.scope, "bn_lr_scale": self.bn_lr_scale}
            rank_zero_info(f"CutInit: divided {values} parameter values by c={self.c:g} (scope {self.scope}){lr_note}")
        setattr(pl_module, MODULE_RECORD, self.record)

    @torch.no_grad()
    def _cut(self, pl_module: nn.Module) -> int:
        if self.scope == "all":
            return cut_parameters(pl_module, self.c)
        params = scoped_parameters(pl_module, self.scope)
        for param in params:
            param.div_(self.c)
        return sum(p.numel() for p in params)
