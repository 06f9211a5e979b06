"""nt_xent and dcl against float64 loop references written from METHODS 1.4 and 1.5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_lse, unit_rows
from contrastkit import InputError, dcl, nt_xent


def _raw(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """(n, d) float64 rows that are NOT unit norm (so the normalisation is exercised)."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())


# ---------------------------------------------------------------- references (plain loops)


def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """L = 1/(2N) sum_a [LSE_{b != a} <Z_a, Z_b>/tau - <Z_a, Z_pos(a)>/tau], one anchor at a time."""
    n = z1.shape[0]
    z = [z1[i] for i in range(n)] + [z2[i] for i in range(n)]
    total = torch.zeros((), dtype=torch.float64)
    for a in range(2 * n):
        pos = a + n if a < n else a - n
        others = [_cos(z[a], z[b]) / temperature for b in range(2 * n) if b != a]
        total = total + loop_lse(others) - _cos(z[a], z[pos]) / temperature
    return total / (2 * n)


def ref_dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    weighted: bool = False,
    sigma: float = 0.5,
    detach_weight: bool = False,
) -> torch.Tensor:
    """L = 1/2 (mean_i L0_i + mean_i L1_i), positive not in the denominator; DCLW weights w_i."""
    n = z1.shape[0]
    pos_cos = [_cos(z1[i], z2[i]) for i in range(n)]
    if weighted:
        src = [c.detach() for c in pos_cos] if detach_weight else pos_cos
        denom = sum(torch.exp(c / sigma) for c in src)
        weights = [2 - n * torch.exp(src[i] / sigma) / denom for i in range(n)]
    else:
        weights = [1.0] * n

    def side(anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for i in range(n):
            negs = [_cos(anchor[i], anchor[j]) / temperature for j in range(n) if j != i]
            negs += [_cos(anchor[i], other[j]) / temperature for j in range(n) if j != i]
            total = total + loop_lse(negs) - weights[i] * pos_cos[i] / temperature
        return total / n

    return 0.5 * (side(z1, z2) + side(z2, z1))


# ---------------------------------------------------------------- nt_xent


@pytest.mark.parametrize("n, d, temperature", [(2, 3, 0.5), (2, 4, 0.1), (5, 3, 0.5), (7, 6, 0.07)])
def test_nt_xent_matches_loop_reference(n: int, d: int, temperature: float) -> None:
    z1, z2 = _raw(n, d, seed=10 + n), _raw(n, d, seed=20 + n, scale=3.0)
    assert_matches_reference(
        lambda a, b: nt_xent(a, b, temperature), lambda a, b: ref_nt_xent(a, b, temperature), z1, z2
    )


def test_nt_xent_matches_reference_on_unit_rows() -> None:
    z1, z2 = unit_rows(6, 5, seed=1), unit_rows(6, 5, seed=2)
    assert_matches_reference(lambda a, b: nt_xent(a, b, 0.2), lambda a, b: ref_nt_xent(a, b, 0.2), z1, z2)


def test_nt_xent_default_temperature_is_used() -> None:
    z1, z2 = _raw(4, 3, seed=3), _raw(4, 3, seed=4)
    # The signature's default (0.5 per the docstring) is what the call without it uses.
    torch.testing.assert_close(nt_xent(z1, z2), ref_nt_xent(z1, z2, 0.5), atol=1e-12, rtol=0)


def test_nt_xent_gradcheck() -> None:
    z1, z2 = _raw(3, 4, seed=5), _raw(3, 4, seed=6)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 7.0])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_nt_xent_identical_embeddings_give_log_2n_minus_1(n: int, temperature: float) -> None:
    row = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    z = row.expand(n, 3).clone()
    got = nt_xent(z, z.clone(), temperature)
    assert abs(got.item() - math.log(2 * n - 1)) < 1e-12


def test_nt_xent_single_pair_raises_instead_of_a_silent_zero() -> None:
    z = unit_rows(1, 3, seed=0)
    with pytest.raises(InputError, match="at least one negative"):
        nt_xent(z, z)


def _lightly_nt_xent(out0: torch.Tensor, out1: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent written out as lightly's NTXentLoss does it (no memory bank)."""
    out0 = F.normalize(out0, dim=1)
    out1 = F.normalize(out1, dim=1)
    batch_size = out0.shape[0]
    logits_00 = out0 @ out0.T / temperature
    logits_01 = out0 @ out1.T / temperature
    logits_10 = out1 @ out0.T / temperature
    logits_11 = out1 @ out1.T / temperature
    diag_mask = torch.eye(batch_size, dtype=torch.bool)
    logits_00 = logits_00[~diag_mask].view(batch_size, -1)
    logits_11 = logits_11[~diag_mask].view(batch_size, -1)
    logits_0100 = torch.cat([logits_01, logits_00], dim=1)
    logits_1011 = torch.cat([logits_10, logits_11], dim=1)
    logits = torch.cat([logits_0100, logits_1011], dim=0)
    labels = torch.arange(batch_size).repeat(2)
    return F.cross_entropy(logits, labels)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightly_style_formula(temperature: float) -> None:
    z1, z2 = _raw(6, 4, seed=7), _raw(6, 4, seed=8)
    assert_matches_reference(
        lambda a, b: nt_xent(a, b, temperature),
        lambda a, b: _lightly_nt_xent(a, b, temperature),
        z1,
        z2,
    )


def test_nt_xent_is_invariant_to_positive_row_scaling() -> None:
    z1, z2 = _raw(5, 4, seed=9), _raw(5, 4, seed=11)
    factors = torch.tensor([0.01, 3.0, 1.0, 250.0, 0.5], dtype=torch.float64)[:, None]
    base = nt_xent(z1, z2, 0.2)
    torch.testing.assert_close(nt_xent(z1 * factors, z2, 0.2), base, atol=1e-12, rtol=0)
    torch.testing.assert_close(nt_xent(z1, z2 * factors.flip(0), 0.2), base, atol=1e-12, rtol=0)
    # Control: swapping two rows of one view breaks the pairing and changes the loss.
    assert abs(nt_xent(z1[[1, 0, 2, 3, 4]], z2, 0.2).item() - base.item()) > 1e-3


# ---------------------------------------------------------------- dcl


@pytest.mark.parametrize("n, d, temperature", [(2, 3, 0.1), (5, 4, 0.1), (6, 3, 0.5)])
def test_dcl_matches_loop_reference(n: int, d: int, temperature: float) -> None:
    z1, z2 = _raw(n, d, seed=30 + n), _raw(n, d, seed=40 + n, scale=2.0)
    assert_matches_reference(
        lambda a, b: dcl(a, b, temperature), lambda a, b: ref_dcl(a, b, temperature), z1, z2
    )


@pytest.mark.parametrize("detach_weight", [False, True])
@pytest.mark.parametrize("sigma", [0.5, 0.2])
def test_dclw_matches_loop_reference(detach_weight: bool, sigma: float) -> None:
    z1, z2 = _raw(5, 4, seed=50), _raw(5, 4, seed=51)
    assert_matches_reference(
        lambda a, b: dcl(a, b, 0.1, weighted=True, sigma=sigma, detach_weight=detach_weight),
        lambda a, b: ref_dcl(a, b, 0.1, weighted=True, sigma=sigma, detach_weight=detach_weight),
        z1,
        z2,
    )


def test_dclw_detach_weight_changes_only_the_gradient() -> None:
    z1, z2 = _raw(5, 4, seed=52), _raw(5, 4, seed=53)
    attached = dcl(z1, z2, 0.1, weighted=True)
    detached = dcl(z1, z2, 0.1, weighted=True, detach_weight=True)
    torch.testing.assert_close(attached, detached, atol=1e-13, rtol=0)
    g_att = torch.autograd.grad(attached, z1)[0]
    g_det = torch.autograd.grad(detached, z1)[0]
    assert (g_att - g_det).abs().max() > 1e-4
    # Weighted differs from unweighted in value (the weights are not all 1 here).
    assert abs(dcl(z1, z2, 0.1).item() - attached.item()) > 1e-4


def test_dcl_gradcheck() -> None:
    z1, z2 = _raw(3, 4, seed=54), _raw(3, 4, seed=55)
    assert torch.autograd.gradcheck(lambda a, b: dcl(a, b, 0.3), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: dcl(a, b, 0.3, weighted=True), (z1, z2))
    # detach_weight=True is deliberately not the true derivative, so it is checked against the
    # loop reference above (test_dclw_matches_loop_reference), not by gradcheck.


def test_dcl_single_pair_raises() -> None:
    z1, z2 = _raw(1, 4, seed=56), _raw(1, 4, seed=57)
    with pytest.raises(InputError, match="N=1"):
        dcl(z1, z2)
    with pytest.raises(InputError):
        dcl(z1, z2, weighted=True)


def test_dcl_can_be_negative() -> None:
    # Well-separated, perfectly aligned pairs: the positive is out of the denominator, so L < 0.
    z = torch.eye(4, dtype=torch.float64)
    assert dcl(z, z.clone(), 0.1).item() < 0


@pytest.mark.parametrize("weighted", [False, True])
def test_dcl_is_invariant_to_positive_row_scaling(weighted: bool) -> None:
    z1, z2 = _raw(5, 4, seed=58), _raw(5, 4, seed=59)
    factors = torch.tensor([4.0, 0.02, 1.0, 90.0, 0.7], dtype=torch.float64)[:, None]
    base = dcl(z1, z2, 0.1, weighted=weighted)
    torch.testing.assert_close(
        dcl(z1 * factors, z2 * factors.flip(0), 0.1, weighted=weighted), base, atol=1e-12, rtol=0
    )
    assert abs(dcl(z1, z2[[0, 2, 1, 3, 4]], 0.1, weighted=weighted).item() - base.item()) > 1e-3
