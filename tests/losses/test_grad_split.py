"""info_nce_grad_split (METHODS 1.13) against autograd of B * info_nce and a float64 loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses import info_nce
from contrastkit.losses.grad_split import info_nce_grad_split


def _raw(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def ref_split(q: torch.Tensor, k: torch.Tensor, temperature: float, tangent: bool):
    """Loops over the formula: p_ij = e^{l_ij} / sum_m e^{l_im}, attract_i = -(1/t)(1 - p_ii) k_i,
    repel_i = (1/t) sum_{j != i} p_ij k_j; with ``tangent`` on the unit rows and then
    g <- (g - <g, q_i> q_i) / |u_i|."""
    b, d = q.shape
    raw_norms = [math.sqrt(sum(float(q[i, c]) ** 2 for c in range(d))) for i in range(b)]
    if tangent:
        q = torch.stack([q[i] / raw_norms[i] for i in range(b)])
        k = torch.stack([k[j] / math.sqrt(sum(float(k[j, c]) ** 2 for c in range(d))) for j in range(b)])
    p = torch.zeros(b, b, dtype=q.dtype)
    attract, repel = torch.zeros(b, d, dtype=q.dtype), torch.zeros(b, d, dtype=q.dtype)
    for i in range(b):
        logits = [loop_dot(q[i], k[j]) / temperature for j in range(b)]
        lse = loop_lse(logits)
        for j in range(b):
            p[i, j] = torch.exp(logits[j] - lse)
        attract[i] = -(1 - p[i, i]) * k[i] / temperature
        repel[i] = sum(p[i, j] * k[j] for j in range(b) if j != i) / temperature
        if tangent:
            for g in (attract, repel):
                g[i] = (g[i] - loop_dot(g[i], q[i]) * q[i]) / raw_norms[i]
    return attract, repel, p


def _autograd_b_times_loss(
    q: torch.Tensor, k: torch.Tensor, temperature: float, tangent: bool
) -> torch.Tensor:
    u = q.clone().requires_grad_()
    queries, keys = (F.normalize(u, dim=1), F.normalize(k, dim=1)) if tangent else (u, k)
    loss = q.shape[0] * info_nce(queries, keys, 1.0 / temperature)
    (grad,) = torch.autograd.grad(loss, u)
    return grad


@pytest.mark.parametrize("tangent", [False, True])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_attract_plus_repel_is_the_autograd_gradient(tangent: bool, temperature: float) -> None:
    q, k = 1.5 * _raw(6, 4, seed=1), _raw(6, 4, seed=2)
    attract, repel, _ = info_nce_grad_split(q, k, temperature, tangent=tangent)
    want = _autograd_b_times_loss(q, k, temperature, tangent)
    torch.testing.assert_close(attract + repel, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("tangent", [False, True])
def test_parts_match_the_loop_reference(tangent: bool) -> None:
    q, k = _raw(5, 3, seed=3), _raw(5, 3, seed=4)
    got = info_nce_grad_split(q, k, 0.5, tangent=tangent)
    want = ref_split(q, k, 0.5, tangent)
    for name, g, w in zip(("attract", "repel", "p"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_two_orthogonal_pairs_by_hand() -> None:
    # q = k = [e1, e2], tau = 1: l = I, p_ii = e/(e+1); the attraction pulls q_i along k_i with
    # weight 1 - p_ii = 1/(e+1), the repulsion pushes it along the other key with the same weight.
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    q = torch.stack([e1, e2])
    attract, repel, p = info_nce_grad_split(q, q.clone(), 1.0, tangent=False)
    w = 1 / (math.e + 1)
    torch.testing.assert_close(p, torch.tensor([[1 - w, w], [w, 1 - w]], dtype=torch.float64))
    torch.testing.assert_close(attract, -w * q)
    torch.testing.assert_close(repel, w * q.flip(0))
    # on the sphere the attraction along k_i = q_i has no tangent part; doubling u halves the rest
    attract_t, repel_t, _ = info_nce_grad_split(2 * q, q.clone(), 1.0, tangent=True)
    torch.testing.assert_close(attract_t, torch.zeros_like(q))
    torch.testing.assert_close(repel_t, w * q.flip(0) / 2)


def test_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    q, k = _raw(12, 6, seed=5), _raw(12, 6, seed=6)
    want = info_nce_grad_split(q, k, 0.2)
    got = info_nce_grad_split(q.float(), k.float(), 0.2)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6)
    half = info_nce_grad_split(q.bfloat16(), k.bfloat16(), 0.2)
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in half)


def test_inputs_with_grad_are_not_tracked() -> None:
    q = _raw(4, 3, seed=7).requires_grad_()
    attract, repel, p = info_nce_grad_split(q, _raw(4, 3, seed=8), 0.5)
    assert not (attract.requires_grad or repel.requires_grad or p.requires_grad)


def test_errors_name_the_argument() -> None:
    q = torch.randn(4, 3)
    fn = "info_nce_grad_split"
    with pytest.raises(InputError, match=f"{fn}: argument 'k' must have 4 rows"):
        info_nce_grad_split(q, torch.randn(3, 3), 0.1)
    with pytest.raises(InputError, match=f"{fn}: argument 'q' contains 1 NaN"):
        info_nce_grad_split(torch.tensor([[float("nan"), 1.0], [1.0, 0.0]]), torch.randn(2, 2), 0.1)
    with pytest.raises(InputError, match=f"{fn}: argument 'q' is empty"):
        info_nce_grad_split(torch.zeros(0, 3), torch.zeros(0, 3), 0.1)
    with pytest.raises(InputError, match=f"{fn}: each anchor needs at least one negative"):
        info_nce_grad_split(torch.randn(1, 3), torch.randn(1, 3), 0.1)
    with pytest.raises(InputError, match=f"{fn}: argument 'temperature'"):
        info_nce_grad_split(q, q, -1.0)
    with pytest.raises(InputError, match=f"{fn}: argument 'tangent' must be True or False"):
        info_nce_grad_split(q, q, 0.1, tangent=1)
    with pytest.raises(InputError, match=f"{fn}: argument 'k' has 1 all-zero row"):
        info_nce_grad_split(q, torch.cat([torch.zeros(1, 3), torch.randn(3, 3)]), 0.1)
