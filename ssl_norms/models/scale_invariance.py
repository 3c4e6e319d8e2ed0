"""Which layers of a network feed a normalisation layer, and are therefore scale invariant.

A convolution or linear layer whose output goes straight into BatchNorm (GroupNorm, LayerNorm, ...)
computes the same function after its weight and bias are divided by c, but its gradient grows by c;
with the same lr its *relative* step grows by c^2, i.e. its effective lr is lr / ||w||^2
(van Laarhoven 2017; Hoffer et al. 2018). Cut-initialisation therefore also changes the effective
lr of every such layer, which is what ``CutInit``'s scope option and ``WeightNormMonitor`` expose.

Detection is exact rather than by naming convention: one forward pass in eval mode with hooks that
record which layer produced the tensor each normalisation layer receives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def example_input(method: nn.Module, batch: int = 2) -> Tensor:
    """A zero input the method's backbone accepts, from its hyperparameters (``input_dim`` for the
    MLP backbone, else 3-channel images of ``backbone_kwargs.img_size``, 32 px with the CIFAR stem, 224)."""
    hp: Any = getattr(method, "hparams", {})
    if hp.get("backbone") == "mlp":
        return torch.zeros(batch, hp["input_dim"])
    size = (hp.get("backbone_kwargs") or {}).get("img_size") or (32 if hp.get("cifar_stem", True) else 224)
    return torch.zeros(batch, 3, size, size)


@torch.no_grad()
def normalised_layers(method: nn.Module, x: Tensor | None = None) -> dict[str, bool]:
    """``{name: feeds a normalisation layer}`` for every Linear/Conv layer that runs in
    ``method.embed(x)`` (backbone, projector, predictor: the online branch), by module name.

    Layers not reached by that pass (an EMA target network, a linear probe) are absent: callers
    decide what to do with them. The method's train/eval mode is restored afterwards.
    """
    produced: dict[int, str] = {}
    keep: list[Tensor] = []  # holds every recorded output so no id is reused during the pass
    fed: set[str] = set()
    handles = []

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, Tensor):
                produced[id(output)] = name
                keep.append(output)
        return hook

    def check(_module, inputs):
        if inputs and isinstance(inputs[0], Tensor) and id(inputs[0]) in produced:
            fed.add(produced[id(inputs[0])])

    names = {}
    for name, module in method.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            names[name] = module
            handles.append(module.register_forward_hook(record(name)))
        elif isinstance(module, NORM_LAYERS):
            handles.append(module.register_forward_pre_hook(check))
    was_training = method.training
    try:
        method.eval()
        first = next(method.parameters())
        x = example_input(method) if x is None else x
        method.embed(x.to(device=first.device, dtype=first.dtype))
    finally:
        method.train(was_training)
        for handle in handles:
            handle.remove()
    reached = set(produced.values())
    return {name: name in fed for name in names if name in reached}


def layer_group(name: str) -> str:
    """The group a parameter or module name is reported under: ``backbone.<stage>`` for a ResNet
    stage (``conv1``/``bn1`` are the stem), else the first component (``projector``, ``predictor``)."""
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 1 and not parts[1].isdigit():  # a named stage, not a Sequential index
        stage = parts[1]
        return f"backbone.{'stem' if stage in ('conv1', 'bn1') else stage}"
    return parts[0]
