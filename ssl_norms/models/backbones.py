"""Backbones by name: torchvision ResNets (CIFAR stem, width), an MLP for vector data, any timm model
(with its own arguments, e.g. a ViT's ``img_size`` and ``patch_size``).

Every builder returns ``(module, feature_dim)`` where the module maps a batch to (N, feature_dim)
features with no classifier head.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn
from torchvision.models import resnet

_TORCHVISION_RESNETS = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (resnet.Bottleneck, [3, 4, 23, 3]),
}


def resnet_backbone(name: str, cifar_stem: bool = False, width: int = 64, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
    """torchvision ResNet without its classifier.

    ``width`` is the channel count of the first stage (64 in the standard network); narrower
    widths keep the architecture but make CPU-scale studies possible. ``cifar_stem`` swaps the
    7x7/stride-2 conv and max-pool for a 3x3/stride-1 conv, the usual choice for 32 px images.
    ``zero_init_residual``: torchvision's option, each residual block's last BatchNorm scale starts at 0.
    """
    block, layers = _TORCHVISION_RESNETS[name]
    # torchvision's ResNet hard-codes 64 channels in its stem and stages; other widths rebuild them.
    if width == 64:
        net = resnet.ResNet(block, layers, zero_init_residual=zero_init_residual)
    else:
        net = _narrow_resnet(block, layers, width, zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def _narrow_resnet(block: type, layers: list[int], width: int, zero_init_residual: bool = False) -> resnet.ResNet:
    net = resnet.ResNet(block, layers)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    net.fc = nn.Linear(width * 8 * block.expansion, 1)
    for m in net.modules():  # the same initialisation torchvision applies
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif zero_init_residual and isinstance(m, (resnet.BasicBlock, resnet.Bottleneck)):
            nn.init.zeros_(m.bn2.weight if isinstance(m, resnet.BasicBlock) else m.bn3.weight)
    return net


def mlp_backbone(input_dim: int, hidden_dims: list[int]) -> tuple[nn.Module, int]:
    """Linear-BN-ReLU stack for vector data (the synthetic latent-class demo)."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = input_dim
    for h in hidden_dims:
        layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        prev = h
    return nn.Sequential(*layers), prev


def timm_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    """Any timm model without its classifier; ``kwargs`` go to ``timm.create_model`` (a ViT for
    32 px images: ``img_size=32, patch_size=4``). A model built for one input size (a ViT's patch
    embedding) refuses other sizes with one line saying how to rebuild it: :func:`input_size_error`
    before training, and at any forward pass instead of timm's assertion deep in the patch embedding."""
    import timm  # imported lazily: timm's import is slow and most runs use torchvision

    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ValueError(
            f"unknown backbone {name!r}: use resnet18/resnet34/resnet50/resnet101, 'mlp', or a timm model name"
        ) from err
    except TypeError as err:  # an argument the model's constructor does not take
        raise ValueError(f"backbone {name} does not take backbone_kwargs {kwargs}: {err}") from err
    if fixed_input_size(net) is not None:
        net.register_forward_pre_hook(functools.partial(_refuse_other_sizes, name))
    return net, net.num_features


def fixed_input_size(net: nn.Module) -> tuple[int, int] | None:
    """(height, width) of the only images ``net`` takes (a timm patch embedding with a strict size), else None."""
    patch_embed = getattr(net, "patch_embed", None)
    if getattr(patch_embed, "strict_img_size", False) and getattr(patch_embed, "img_size", None):
        return tuple(patch_embed.img_size)
    return None


def input_size_error(name: str, net: nn.Module, height: int, width: int) -> str | None:
    """The one-line refusal of ``height`` x ``width`` images by backbone ``name``, with the
    ``backbone_kwargs`` that rebuild it for them (a smaller patch when fewer than 8 would fit a side);
    None when the size fits."""
    expected = fixed_input_size(net)
    if expected is None or (height, width) == expected:
        return None
    patch = net.patch_embed.patch_size[0]
    size = height if height == width else [height, width]
    fix = f"img_size: {size}" + (f", patch_size: {max(1, min(height, width) // 8)}" if min(height, width) // patch < 8 else "")
    return (f"backbone {name} takes {expected[0]}x{expected[1]} images, got {height}x{width}: "
            f"build it for this size with --model.init_args.backbone_kwargs '{{{fix}}}'")


def _refuse_other_sizes(name: str, module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of :func:`timm_backbone`."""
    error = input_size_error(name, module, *args[0].shape[-2:])
    if error:
        raise ValueError(error)


def build_backbone(
    name: str,
    cifar_stem: bool = False,
    width: int = 64,
    input_dim: int | None = None,
    hidden_dims: list[int] | None = None,
    zero_init_residual: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """Backbone by name. ``mlp`` needs ``input_dim``; names that are not ResNets go to timm, with
    ``backbone_kwargs`` as further arguments of ``timm.create_model``."""
    if backbone_kwargs and (name in _TORCHVISION_RESNETS or name == "mlp"):
        raise ValueError(f"backbone_kwargs go to timm models; the {name!r} backbone takes none, got {backbone_kwargs}")
    if name in _TORCHVISION_RESNETS:
        if width < 1:
            raise ValueError(f"backbone width must be >= 1, got {width}")
        return resnet_backbone(name, cifar_stem=cifar_stem, width=width, zero_init_residual=zero_init_residual)
    if zero_init_residual:
        raise ValueError(f"zero_init_residual applies to the ResNet backbones only, not {name!r}")
    if name == "mlp":
        if input_dim is None or input_dim < 1:
            raise ValueError(f"the 'mlp' backbone needs input_dim >= 1 (the data's vector length), got {input_dim}")
        return mlp_backbone(input_dim, [256, 256] if hidden_dims is None else hidden_dims)
    return timm_backbone(name, **(backbone_kwargs or {}))
