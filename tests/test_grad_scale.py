"""GradScale: identity forward, backward multiplies each row's gradient by ||z_i||^power."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_norms.grad_scale import grad_scale
from ssl_norms.losses import negative_cosine


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_forward_is_identity() -> None:
    z = _randn(4, 3).requires_grad_(True)
    out = grad_scale(z, 1.0)
    assert torch.equal(out, z)
    assert out.dtype == z.dtype and out.requires_grad


def test_power_zero_returns_input_object() -> None:
    z = _randn(4, 3).requires_grad_(True)
    assert grad_scale(z, 0) is z
    assert grad_scale(z, 0.0) is z


@pytest.mark.parametrize("power", [1.0, 2.0, -1.0, 0.5])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4), (6,)])
def test_backward_scales_rows_by_norm_power(power: float, shape: tuple[int, ...]) -> None:
    z = _randn(*shape, seed=1).requires_grad_(True)
    upstream = _randn(*shape, seed=2)
    grad_scale(z, power).backward(upstream)
    expected = upstream * z.detach().norm(dim=-1, keepdim=True).pow(power)
    torch.testing.assert_close(z.grad, expected)


def test_gradient_of_cosine_loss_becomes_norm_independent() -> None:
    """Prop 3.1 gives |grad| = sin(phi) / ||z||; GradScale(power=1) leaves sin(phi)."""
    direction, target = _randn(6, 5, seed=3), _randn(6, 5, seed=4)
    sine = torch.sqrt(1 - F.cosine_similarity(direction, target, dim=1) ** 2)
    for scale in (0.05, 1.0, 20.0):
        z = (scale * direction).requires_grad_(True)
        # Sum, not mean, so each row sees its own -cos(z_i, t_i).
        loss = negative_cosine(grad_scale(z, 1.0), target) * len(z)
        (grad,) = torch.autograd.grad(loss, z)
        torch.testing.assert_close(grad.norm(dim=1), sine, rtol=1e-4, atol=1e-6)
        # The unscaled gradient would still shrink with the norm.
        (plain,) = torch.autograd.grad(negative_cosine(z, target) * len(z), z)
        torch.testing.assert_close(plain.norm(dim=1), sine / z.detach().norm(dim=1), rtol=1e-4, atol=1e-6)


def test_works_under_bf16_autocast_with_linear_layer() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x, target = _randn(6, 8, seed=5), _randn(6, 5, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
        assert z.dtype == torch.bfloat16
        z.retain_grad()
        scaled = grad_scale(z, 1.0)
        scaled.retain_grad()
        loss = negative_cosine(scaled, target) * len(x)
    assert loss.dtype == torch.float32
    assert torch.equal(scaled, z)
    loss.backward()
    assert z.grad.dtype == torch.bfloat16
    expected = scaled.grad.float() * z.detach().float().norm(dim=1, keepdim=True)
    torch.testing.assert_close(z.grad.float(), expected, rtol=2e-2, atol=1e-3)
    sine = torch.sqrt(1 - F.cosine_similarity(z.detach().float(), target, dim=1) ** 2)
    torch.testing.assert_close(z.grad.float().norm(dim=1), sine, rtol=3e-2, atol=1e-2)
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="finite"):
        grad_scale(_randn(3, 2), float("inf"))
    with pytest.raises(ValueError, match="at least one dimension"):
        grad_scale(torch.tensor(1.0), 1.0)
