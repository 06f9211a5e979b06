"""icl_loss (PSQE's ICL) against a float64 loop reference of METHODS 3.9, and its identity with nt_xent."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce
from contrastkit.errors import InputError
from contrastkit.losses.icl import icl_loss
from contrastkit.losses.selfsup import nt_xent


def _raw(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_()


def ref_icl_anchors(z: torch.Tensor, z_prime: torch.Tensor, temperature: float) -> list[torch.Tensor]:
    """The 2N per-anchor terms, L_a's (anchors z_i) then L_b's (anchors z'_i), from the formula:
    -log[e^{<z_i,z'_i>/t} / (sum_j e^{<z_i,z'_j>/t} + sum_{j != i} e^{<z_i,z_j>/t})]."""
    n = z.shape[0]
    out = []
    for anchor, other in ((z, z_prime), (z_prime, z)):
        for i in range(n):
            cross = [loop_dot(anchor[i], other[j]) / temperature for j in range(n)]
            same = [loop_dot(anchor[i], anchor[j]) / temperature for j in range(n) if j != i]
            out.append(loop_lse(cross + same) - cross[i])
    return out


def ref_icl(z, z_prime, temperature=1.0, reduction="mean"):
    return loop_reduce(ref_icl_anchors(z, z_prime, temperature), reduction)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_icl_raw_features_match_the_loop_reference(temperature: float) -> None:
    z, z_prime = _raw(6, 4, seed=1, scale=0.7), _raw(6, 4, seed=2, scale=0.7)
    assert_matches_reference(
        lambda a, b: icl_loss(a, b, temperature),
        lambda a, b: ref_icl(a, b, temperature),
        z,
        z_prime,
        atol=0.0,
        rtol=1e-6,
    )


def test_icl_reductions_match_the_loop_reference() -> None:
    z, z_prime = _raw(5, 3, seed=3), _raw(5, 3, seed=4)
    assert_matches_reference(
        lambda a, b: icl_loss(a, b, 0.8, reduction="sum"),
        lambda a, b: ref_icl(a, b, 0.8, reduction="sum"),
        z,
        z_prime,
        atol=0.0,
        rtol=1e-6,
    )
    # "none": the N terms of L_a, then the N of L_b (weighted so that each term's gradient counts)
    weights = torch.linspace(0.5, 2.0, 10, dtype=torch.float64)
    got = icl_loss(z, z_prime, 0.8, reduction="none")
    want = ref_icl(z, z_prime, 0.8, reduction="none")
    assert got.shape == (10,)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0.0)
    assert_matches_reference(
        lambda a, b: (weights * icl_loss(a, b, 0.8, reduction="none")).sum(),
        lambda a, b: (weights * ref_icl(a, b, 0.8, reduction="none")).sum(),
        z,
        z_prime,
        atol=0.0,
        rtol=1e-6,
    )


def test_icl_gradcheck() -> None:
    z, z_prime = _raw(4, 3, seed=5), _raw(4, 3, seed=6)
    assert torch.autograd.gradcheck(lambda a, b: icl_loss(a, b, 0.7), (z, z_prime))
    assert torch.autograd.gradcheck(lambda a, b: icl_loss(a, b, 0.7, normalize=True), (z, z_prime))


def test_icl_is_unnormalised_by_default() -> None:
    z, z_prime = _raw(5, 3, seed=7), _raw(5, 3, seed=8)
    doubled = icl_loss(2 * z, 2 * z_prime)
    assert not torch.allclose(doubled, icl_loss(z, z_prime))
    torch.testing.assert_close(doubled, ref_icl(2 * z, 2 * z_prime), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_icl_normalised_equals_nt_xent(temperature: float) -> None:
    z, z_prime = _raw(7, 5, seed=9), _raw(7, 5, seed=10)
    assert_matches_reference(
        lambda a, b: icl_loss(a, b, temperature, normalize=True),
        lambda a, b: nt_xent(a, b, temperature),
        z,
        z_prime,
        atol=0.0,
        rtol=1e-6,
    )
    unit = (F.normalize(z, dim=1), F.normalize(z_prime, dim=1))
    torch.testing.assert_close(
        icl_loss(z, z_prime, temperature, normalize=True), ref_icl(*unit, temperature), rtol=1e-6, atol=0.0
    )


def test_icl_identical_rows_give_log_2n_minus_1() -> None:
    n = 6
    row = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    z = row.expand(n, -1).clone()
    torch.testing.assert_close(icl_loss(z, z.clone()), torch.tensor(math.log(2 * n - 1), dtype=torch.float64))


def test_icl_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    z, z_prime = _raw(16, 8, seed=11), _raw(16, 8, seed=12)
    want = icl_loss(z, z_prime)
    got = icl_loss(z.float(), z_prime.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0.0)
    half = icl_loss(z.detach().bfloat16().requires_grad_(), z_prime.detach().bfloat16())
    assert half.dtype == torch.float32 and torch.isfinite(half)
    half.backward()


def test_icl_errors_name_the_argument() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(InputError, match="icl_loss: argument 'z_prime' must have 4 rows"):
        icl_loss(z, torch.randn(5, 3))
    with pytest.raises(InputError, match="icl_loss: argument 'z_prime' must have embedding size 3"):
        icl_loss(z, torch.randn(4, 2))
    with pytest.raises(InputError, match="icl_loss: argument 'z' contains 1 NaN"):
        icl_loss(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.randn(2, 2))
    with pytest.raises(InputError, match="icl_loss: argument 'z' is empty"):
        icl_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(InputError, match="icl_loss: each anchor needs at least one negative"):
        icl_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(InputError, match="icl_loss: argument 'temperature'"):
        icl_loss(z, z, 0.0)
    with pytest.raises(InputError, match="icl_loss: argument 'reduction'"):
        icl_loss(z, z, reduction="avg")
    with pytest.raises(InputError, match="icl_loss: argument 'normalize' must be True or False"):
        icl_loss(z, z, normalize="yes")
    with pytest.raises(InputError, match="icl_loss: argument 'z' has 1 all-zero row"):
        icl_loss(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.randn(2, 2), normalize=True)
    with pytest.raises(InputError, match="icl_loss: argument 'z' must have shape"):
        icl_loss(torch.randn(4), torch.randn(4))
