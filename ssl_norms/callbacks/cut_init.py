"""CutInit: divide every parameter by c once, before the first optimizer step of a fresh run.

Smaller weights give smaller embeddings, and by Prop 3.1 a cosine loss then takes larger steps,
so training starts faster (Draganov et al. 2025, Sec 5). The callback works on any method:
it touches ``pl_module.parameters()`` only.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

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


class CutInit(Callback):
    """Divide every parameter of the LightningModule by ``c`` once, at ``on_train_start`` of a fresh run.

    *Every* parameter means weights, biases, BatchNorm affine parameters, heads, predictor and any
    EMA target network registered as a submodule, so a target deep-copied from the online network
    stays equal to the cut online network. At ``on_train_start`` the optimizer exists but has taken
    no step (SGD momentum buffers are empty), so it never sees the uncut weights.

    The application is recorded in the callback state, which Lightning saves in every checkpoint
    (``checkpoint["callbacks"]["CutInit"]["record"] = {"c": ..., "global_step": ...}``), and on the
    module object. Weights that do not come from a fresh initialisation are handled explicitly:

    * a checkpoint (``--ckpt_path``, a resumed run or a new fit started from another run's
      checkpoint) or an earlier fit of the same module that *was* cut: never cut again;
    * a checkpoint or earlier fit that was *not* cut: ``on_checkpoint="skip"`` (default) keeps the
      weights and warns that CutInit did nothing; ``on_checkpoint="apply"`` cuts them once (e.g. to
      study a cut on a pretrained network). Optimizer state restored from that checkpoint is kept.

    Weights loaded by hand (``Method.load_from_checkpoint`` then a new ``fit``) carry no record
    and count as a fresh initialisation; read the checkpoint's callback state to see whether they
    were cut.

    Args:
        c: the cut constant, a finite number > 0 (c < 1 enlarges the weights, as in Fig S4).
        on_checkpoint: ``skip`` or ``apply``, for weights from an uncut checkpoint (see above).
    """

    def __init__(self, c: float, on_checkpoint: Literal["skip", "apply"] = "skip") -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"CutInit c must be a finite number > 0 (c < 1 is allowed), got {c!r}")
        if on_checkpoint not in ("skip", "apply"):
            raise ValueError(f"CutInit on_checkpoint must be 'skip' or 'apply', got {on_checkpoint!r}")
        self.c = float(c)
        self.on_checkpoint = on_checkpoint
        self.record: dict[str, Any] | None = None  # set once the current model has been cut
        self._weights_from: str | None = None  # where non-fresh weights came from, None when fresh

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"record": self.record}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.record = state_dict.get("record")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called whenever the trainer restores a checkpoint, whether or not it holds our state.
        self._weights_from = f"checkpoint {trainer.ckpt_path}"

    # ---- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # a callback object may serve several fits: start every fit unrecorded
            self.record, self._weights_from = None, None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"cut_init/c": self.c})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # All restores (weights, callback state, optimizer) have happened by now, for every strategy.
        if self._weights_from is None and getattr(pl_module, MODULE_RECORD, None) is not None:
            self.record, self._weights_from = getattr(pl_module, MODULE_RECORD), "an earlier fit of this module"
        if self.record is not None:
            rank_zero_info(
                f"CutInit: weights from {self._weights_from} were already cut by c={self.record['c']:g} "
                f"at step {self.record['global_step']}; not cutting again"
            )
        elif self._weights_from is not None and self.on_checkpoint == "skip":
            rank_zero_warn(
                f"CutInit(c={self.c:g}) did nothing: the weights come from {self._weights_from}, which was never cut; "
                "pass on_checkpoint='apply' to cut them"
            )
        else:
            values = cut_parameters(pl_module, self.c)
            self.record = {"c": self.c, "global_step": trainer.global_step}
            rank_zero_info(f"CutInit: divided {values} parameter values by c={self.c:g}")
        setattr(pl_module, MODULE_RECORD, self.record)
