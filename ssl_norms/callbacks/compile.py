"""Opt-in ``torch.compile`` of the backbone, where most of a step's time goes."""

from __future__ import annotations

from typing import Any

import lightning as L


class CompileBackbone(L.Callback):
    """Compile ``pl_module.backbone`` in place (``nn.Module.compile``) before the first batch: the state
    dict, checkpoints and every callback see the same module. The first steps (and the first batch of
    a new shape, e.g. validation) wait for the compiler; later ones run the compiled kernels.

    Args:
        mode / backend / dynamic: passed to ``torch.compile`` (``backend: inductor`` needs a C++
            compiler on a CPU; ``aot_eager`` or ``eager`` check the tracing without one).
    """

    def __init__(self, mode: str | None = None, backend: str = "inductor", dynamic: bool | None = None) -> None:
        self.options: dict[str, Any] = {"mode": mode, "backend": backend, "dynamic": dynamic}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module.backbone, "_compiled_call_impl", None) is None:
            pl_module.backbone.compile(**self.options)
