"""grad_reverse, GradientReversal and the DANN lambda schedule (Ganin & Lempitsky 2015)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from contrastkit.errors import InputError
from contrastkit.models.reversal import GradientReversal, grad_reverse, reversal_lambda


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def _downstream(y: torch.Tensor) -> torch.Tensor:
    """A nonlinear loss of y, so that the incoming gradient differs per entry."""
    return (torch.sin(y) * torch.arange(1, y.numel() + 1, dtype=y.dtype).view_as(y)).sum()


# ---------------------------------------------------------------- grad_reverse


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, 2.5, torch.tensor(0.7), torch.tensor([0.7])])
def test_forward_is_identity_and_backward_is_minus_lambda_times_identity_grad(lambd) -> None:
    x = _x(3, 4, seed=1)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    (got,) = torch.autograd.grad(_downstream(y), x)
    (plain,) = torch.autograd.grad(_downstream(x), x)
    torch.testing.assert_close(got, -float(lambd) * plain, atol=0, rtol=0)


def test_gradcheck_of_the_reversed_backward() -> None:
    # grad_reverse(x) + (1 + lambda)(x - x.detach()) has forward x and, iff the backward of
    # grad_reverse is exactly -lambda, backward 1: gradcheck then compares it with finite differences.
    x = _x(2, 3, seed=2)
    for lambd in (0.0, 0.4, 1.0):
        assert torch.autograd.gradcheck(
            lambda v, lam=lambd: _downstream(grad_reverse(v, lam) + (1 + lam) * (v - v.detach())), (x,)
        )
    # Control: grad_reverse alone has the "wrong" (reversed) gradient, which gradcheck sees.
    assert not torch.autograd.gradcheck(lambda v: grad_reverse(v, 0.4), (x,), raise_exception=False)


def test_lambda_gets_no_gradient_and_other_dtypes_pass_through() -> None:
    lambd = torch.tensor(0.5, requires_grad=True)
    x = _x(4, seed=3, dtype=torch.float32)
    grad_reverse(x, lambd).sum().backward()
    assert lambd.grad is None
    torch.testing.assert_close(x.grad, torch.full((4,), -0.5))
    xb = _x(2, 2, seed=4, dtype=torch.bfloat16)
    yb = grad_reverse(xb, 1.0)
    yb.float().sum().backward()
    assert yb.dtype == torch.bfloat16 and torch.equal(xb.grad, -torch.ones(2, 2, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "x, lambd, match",
    [
        ([1.0, 2.0], 1.0, "'x' must be a torch.Tensor"),
        (torch.arange(3), 1.0, "'x' must be a floating-point"),
        (torch.tensor([1.0, float("nan")]), 1.0, "NaN"),
        (torch.ones(2), -0.1, "'lambd' must be finite and >= 0.0"),
        (torch.ones(2), float("inf"), "'lambd'"),
        (torch.ones(2), torch.ones(2), "'lambd' must be a scalar"),
        (torch.ones(2), "1", "'lambd' must be a float"),
    ],
)
def test_grad_reverse_bad_inputs_raise(x, lambd, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        grad_reverse(x, lambd)
    assert "grad_reverse" in str(info.value)


# ---------------------------------------------------------------- GradientReversal


def test_module_reverses_the_encoder_gradient_only() -> None:
    torch.manual_seed(0)
    encoder = nn.Linear(3, 4).double()
    head = nn.Linear(4, 2).double()
    reversal = GradientReversal(0.25)
    x = _x(5, 3, seed=5).detach()

    def grads(model: nn.Module) -> list[torch.Tensor]:
        loss = _downstream(model(x))
        return torch.autograd.grad(loss, [*encoder.parameters(), *head.parameters()])

    plain = grads(nn.Sequential(encoder, head))
    reversed_ = grads(nn.Sequential(encoder, reversal, head))
    for got, want in zip(reversed_[:2], plain[:2], strict=True):  # encoder: -lambda times
        torch.testing.assert_close(got, -0.25 * want, atol=1e-14, rtol=0)
    for got, want in zip(reversed_[2:], plain[2:], strict=True):  # head: unchanged
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_module_lambda_is_settable_and_checked() -> None:
    layer = GradientReversal()
    assert layer.lambd == 1.0 and "lambd=1.0" in repr(layer)
    layer.lambd = reversal_lambda(0.5)
    x = _x(3, seed=6)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -math.tanh(2.5), dtype=torch.float64))
    layer.lambd = torch.tensor(0.0)
    assert layer.lambd == 0.0 and isinstance(layer.lambd, float)
    with pytest.raises(InputError, match="GradientReversal: argument 'lambd'"):
        layer.lambd = -1.0
    with pytest.raises(InputError, match="GradientReversal: argument 'lambd'"):
        GradientReversal(float("nan"))
    assert list(layer.parameters()) == []


# ---------------------------------------------------------------- schedule


def test_schedule_values() -> None:
    assert reversal_lambda(0.0) == 0.0
    # 2 / (1 + e^-10) - 1 = (1 - e^-10) / (1 + e^-10)
    assert abs(reversal_lambda(1.0) - (1 - math.exp(-10)) / (1 + math.exp(-10))) < 1e-15
    assert abs(reversal_lambda(1.0) - 0.9999092042625951) < 1e-15
    # p = 0.1, gamma 10: 2 / (1 + e^-1) - 1 = 0.46211715726000974 (= tanh 0.5)
    assert abs(reversal_lambda(0.1) - 0.46211715726000974) < 1e-15
    # p = 0.5, gamma 2: 2 / (1 + e^-1) - 1 as well
    assert abs(reversal_lambda(0.5, gamma=2.0) - 0.46211715726000974) < 1e-15
    values = [reversal_lambda(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v < 1.0 for v in values)


@pytest.mark.parametrize(
    "progress, gamma, match",
    [
        (-0.1, 10.0, "'progress' must be in \\[0.0, 1.0\\]"),
        (1.5, 10.0, "'progress'"),
        (float("nan"), 10.0, "'progress'"),
        ("0.5", 10.0, "'progress' must be a float"),
        (0.5, 0.0, "'gamma' must be > 0"),
        (0.5, -1.0, "'gamma'"),
        (0.5, float("inf"), "'gamma'"),
    ],
)
def test_schedule_bad_inputs_raise(progress, gamma, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        reversal_lambda(progress, gamma)
    assert "reversal_lambda" in str(info.value)
