from __future__ import annotations

import pytest
import torch

from ssl_norms.models import build_backbone, mlp_head


@pytest.mark.parametrize("width, expected_dim", [(64, 512), (16, 128)])
def test_resnet18_cifar_stem_and_width(width, expected_dim):
    net, dim = build_backbone("resnet18", cifar_stem=True, width=width)
    assert dim == expected_dim
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, expected_dim)


def test_resnet50_imagenet_stem_feature_dim():
    net, dim = build_backbone("resnet50", width=16)
    assert dim == 16 * 8 * 4 and net.conv1.kernel_size == (7, 7)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_standard_resnet18_matches_torchvision_parameter_count():
    import torchvision

    net, _ = build_backbone("resnet18")
    reference = torchvision.models.resnet18()
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in net.parameters()) == expected


def test_timm_backbone_and_unknown_name():
    net, dim = build_backbone("resnet10t")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("no_such_net_xyz")


def test_mlp_head_shapes_and_batchnorm_last():
    head = mlp_head([8, 16, 4], batchnorm_last=True)
    assert isinstance(head[-1], torch.nn.BatchNorm1d)
    assert head(torch.randn(5, 8)).shape == (5, 4)


def test_mlp_backbone_hidden_layers_and_input_dim():
    net, dim = build_backbone("mlp", input_dim=6)
    assert dim == 256 and net(torch.randn(3, 6)).shape == (3, 256)  # default [256, 256]
    net, dim = build_backbone("mlp", input_dim=6, hidden_dims=[])  # no hidden layer: the input itself
    assert dim == 6 and not any(isinstance(m, torch.nn.Linear) for m in net)
    for bad in (None, 0):
        with pytest.raises(ValueError, match="needs input_dim >= 1"):
            build_backbone("mlp", input_dim=bad)
