"""Projection / prediction heads as plain MLP stacks."""

from __future__ import annotations

from torch import nn


def mlp_head(dims: list[int], batchnorm_last: bool = False, bias_last: bool = True, batchnorm: bool = True) -> nn.Sequential:
    """``dims = [in, hidden..., out]``: Linear-BN-ReLU between layers, a plain Linear at the end.

    ``batchnorm_last`` adds a BatchNorm after the final layer (SimSiam's projector);
    ``batchnorm=False`` leaves out the hidden layers' BatchNorm (Linear-ReLU).
    """
    if len(dims) < 2:
        raise ValueError(f"a head needs at least [in, out] dims, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=bias_last or not last))
        if not last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)] if batchnorm else [nn.ReLU(inplace=True)]
        elif batchnorm_last:
            layers.append(nn.BatchNorm1d(d_out))
    return nn.Sequential(*layers)
