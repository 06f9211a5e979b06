"""cosine_alignment against a float64 loop of METHODS 1.11: L = (1/B) sum_i (1 - cos(a_i, b_i))."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_matches_reference
from contrastkit import InputError, cosine_alignment


def _raw(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def ref_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i in range(x.shape[0]):
        cos = (x[i] * y[i]).sum() / (x[i].pow(2).sum().sqrt() * y[i].pow(2).sum().sqrt())
        total = total + (1 - cos)
    return total / x.shape[0]


@pytest.mark.parametrize("b, d", [(1, 3), (5, 4), (16, 8)])
def test_cosine_alignment_matches_loop(b: int, d: int) -> None:
    x, y = _raw(b, d, seed=b), _raw(b, d, seed=100 + b)
    assert_matches_reference(cosine_alignment, ref_alignment, x, y)


def test_identical_inputs_give_zero() -> None:
    x = _raw(6, 5, seed=1)
    assert abs(cosine_alignment(x, x.detach().clone()).item()) < 1e-15
    # Same directions, different lengths: still zero (cosine).
    factors = torch.tensor([0.1, 2.0, 7.0, 1.0, 0.3, 40.0], dtype=torch.float64)[:, None]
    assert abs(cosine_alignment(x, x.detach() * factors).item()) < 1e-14


def test_opposite_inputs_give_two() -> None:
    x = _raw(6, 5, seed=2)
    assert abs(cosine_alignment(x, -3.0 * x.detach()).item() - 2.0) < 1e-14


def test_orthogonal_inputs_give_one() -> None:
    eye = torch.eye(4, dtype=torch.float64)
    assert abs(cosine_alignment(eye, eye.roll(1, dims=0)).item() - 1.0) < 1e-15


def test_mixed_hand_case() -> None:
    # Pairs with cos = 1, -1, 0 -> mean(0, 2, 1) = 1; a pair with cos 1/2 -> 1/2.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [1.0, 3.0**0.5]], dtype=torch.float64)
    assert abs(cosine_alignment(x, y).item() - (0 + 2 + 1 + 0.5) / 4) < 1e-15


def test_cosine_alignment_gradcheck() -> None:
    x, y = _raw(3, 4, seed=3), _raw(3, 4, seed=4)
    assert torch.autograd.gradcheck(cosine_alignment, (x, y))


def test_cosine_alignment_bad_shapes_raise() -> None:
    x = _raw(4, 3, seed=5)
    with pytest.raises(InputError):
        cosine_alignment(x, _raw(5, 3, seed=6))
    with pytest.raises(InputError):
        cosine_alignment(x, _raw(4, 2, seed=7))
    with pytest.raises(InputError):
        cosine_alignment(x[0], x[1])
