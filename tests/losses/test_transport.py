"""generalized_kl, sigrot_loss and sigrot_hybrid_loss against float64 loop references (METHODS 3.2)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse, unit_rows
from contrastkit.errors import InputError
from contrastkit.losses import (
    LOSSES,
    clip_loss,
    generalized_kl,
    get_loss,
    siglip_loss,
    sigrot_hybrid_loss,
    sigrot_loss,
)

N, D, E = 5, 4, 3

# --------------------------------------------------------------------------------------------
# loop references
# --------------------------------------------------------------------------------------------


def ref_gkl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k [a_k log(a_k / b_k) - a_k + b_k], with an entry a_k = 0 contributing b_k."""
    total = 0.0
    for ak, bk in zip(a.reshape(-1), b.reshape(-1), strict=True):
        if float(ak.detach()) == 0.0:
            total = total + bk
        else:
            total = total + ak * (torch.log(ak) - torch.log(bk)) - ak + bk
    return total


def ref_unbalanced_log_plan(x, y, eps, rho, n_iters):
    """log P of the unbalanced Sinkhorn, element by element in the log domain (a = b = 1/N):
    f_i = phi (log a_i - log sum_j a_i b_j exp(g_j - C_ij/eps)), and likewise for g."""
    n = x.shape[0]
    phi = rho / (rho + eps)
    log_a = -math.log(n)
    cost = [[1 - loop_dot(x[i], y[j]) for j in range(n)] for i in range(n)]
    f = [torch.zeros((), dtype=torch.float64) for _ in range(n)]
    g = [torch.zeros((), dtype=torch.float64) for _ in range(n)]
    for _ in range(n_iters):
        f = [
            phi * (log_a - loop_lse([log_a + log_a + g[j] - cost[i][j] / eps for j in range(n)]))
            for i in range(n)
        ]
        g = [
            phi * (log_a - loop_lse([log_a + log_a + f[i] - cost[i][j] / eps for i in range(n)]))
            for j in range(n)
        ]
    return [[2 * log_a + f[i] + g[j] - cost[i][j] / eps for j in range(n)] for i in range(n)]


def ref_sigrot(x, y, u, v, *, eps=0.05, rho=0.5, n_iters=20, prior_scale=20.0):
    """1/2 [GKL(T || G_i2t) + GKL(T^T || G_t2i)] / N with S = 1/4 (VV^T + UU^T + VU^T + UV^T)."""
    n = x.shape[0]
    log_p = ref_unbalanced_log_plan(x, y, eps, rho, n_iters)
    t = [[n * torch.exp(log_p[i][j]) for j in range(n)] for i in range(n)]
    u, v = u.detach(), v.detach()
    s = [
        [
            0.25 * (loop_dot(v[i], v[j]) + loop_dot(u[i], u[j]) + loop_dot(v[i], u[j]) + loop_dot(u[i], v[j]))
            for j in range(n)
        ]
        for i in range(n)
    ]
    g_i2t = [
        [
            torch.exp(prior_scale * s[i][j] - loop_lse([prior_scale * s[i][k] for k in range(n)]))
            for j in range(n)
        ]
        for i in range(n)
    ]
    s_t = [[s[j][i] for j in range(n)] for i in range(n)]
    g_t2i = [
        [
            torch.exp(prior_scale * s_t[i][j] - loop_lse([prior_scale * s_t[i][k] for k in range(n)]))
            for j in range(n)
        ]
        for i in range(n)
    ]
    total = 0.0
    for i in range(n):
        for j in range(n):
            total = total + t[i][j] * torch.log(t[i][j] / g_i2t[i][j]) - t[i][j] + g_i2t[i][j]
            total = total + t[j][i] * torch.log(t[j][i] / g_t2i[i][j]) - t[j][i] + g_t2i[i][j]
    return 0.5 * total / n


def _teacher(seed: int = 7):
    return unit_rows(N, E, seed=seed).detach(), unit_rows(N, E, seed=seed + 1).detach()


# --------------------------------------------------------------------------------------------
# generalized_kl
# --------------------------------------------------------------------------------------------


def test_generalized_kl_matches_reference_with_zeros():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, generator=g, dtype=torch.float64)
    b = torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.1
    a[0, 1] = 0.0
    a[2, 2] = 0.0
    torch.testing.assert_close(generalized_kl(a, b), ref_gkl(a, b), rtol=1e-12, atol=0)
    # A = 0 entries contribute exactly B
    only_b = generalized_kl(
        torch.zeros(3, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    )
    assert float(only_b) == 3.5


def test_generalized_kl_gradients_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    b = (torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    assert_matches_reference(generalized_kl, ref_gkl, a, b, atol=1e-12)
    assert torch.autograd.gradcheck(generalized_kl, (a, b))


def test_generalized_kl_special_values():
    a = torch.tensor([0.2, 0.3, 0.5])
    assert float(generalized_kl(a, a)) == pytest.approx(0.0, abs=1e-7)
    assert float(generalized_kl(a, 2 * a)) > 0
    assert float(generalized_kl(torch.tensor([1.0]), torch.tensor([0.0]))) == math.inf
    assert float(generalized_kl(torch.tensor([0.0]), torch.tensor([0.0]))) == 0.0
    # equal masses: the ordinary KL
    p, q = torch.tensor([0.1, 0.9], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert float(generalized_kl(p, q)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-12)


@pytest.mark.parametrize(
    "a, b, match",
    [
        (torch.ones(2), torch.ones(3), "one shape"),
        (torch.tensor([-0.1, 1.0]), torch.ones(2), "'a' must be non-negative"),
        (torch.ones(2), torch.tensor([1.0, float("nan")]), "'b' contains 1 NaN"),
        (torch.ones(2, dtype=torch.long), torch.ones(2), "floating-point"),
        ([1.0], torch.ones(1), "torch.Tensor"),
    ],
)
def test_generalized_kl_errors(a, b, match):
    with pytest.raises(InputError, match=match):
        generalized_kl(a, b)


# --------------------------------------------------------------------------------------------
# sigrot_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps, rho, scale", [(0.05, 0.5, 20.0), (0.2, 2.0, 5.0)])
def test_sigrot_matches_loop_reference(eps, rho, scale):
    x, y = unit_rows(N, D, seed=1), unit_rows(N, D, seed=2)
    u, v = _teacher()
    assert_matches_reference(
        lambda x, y: sigrot_loss(x, y, u, v, epsilon=eps, reg_m=rho, n_iters=20, prior_scale=scale),
        lambda x, y: ref_sigrot(x, y, u, v, eps=eps, rho=rho, n_iters=20, prior_scale=scale),
        x,
        y,
        atol=1e-9,
        rtol=1e-9,
    )


def test_sigrot_equals_generalized_kl_of_plan_and_prior():
    from contrastkit.functional import sinkhorn

    x, y = unit_rows(N, D, seed=3), unit_rows(N, D, seed=4)
    u, v = _teacher(9)
    t = N * sinkhorn(1 - x @ y.T, epsilon=0.05, reg_m=0.5, n_iters=200)
    s = 0.25 * (u + v) @ (u + v).T
    g_i2t, g_t2i = torch.softmax(20 * s, 1), torch.softmax(20 * s.T, 1)
    want = 0.5 * (generalized_kl(t, g_i2t) + generalized_kl(t.T, g_t2i)) / N
    torch.testing.assert_close(sigrot_loss(x, y, u, v), want, rtol=1e-10, atol=0)


def test_sigrot_prior_tau_is_the_inverse_of_prior_scale():
    x, y = unit_rows(N, D, seed=5), unit_rows(N, D, seed=6)
    u, v = _teacher()
    default = sigrot_loss(x, y, u, v, n_iters=30)
    torch.testing.assert_close(sigrot_loss(x, y, u, v, n_iters=30, prior_tau=0.05), default)
    torch.testing.assert_close(sigrot_loss(x, y, u, v, n_iters=30, prior_scale=20.0), default)
    assert not torch.allclose(sigrot_loss(x, y, u, v, n_iters=30, prior_scale=5.0), default)


def test_sigrot_gradcheck_and_teacher_gets_no_gradient():
    x, y = unit_rows(3, 3, seed=1), unit_rows(3, 3, seed=2)
    u = unit_rows(3, 2, seed=3)  # requires grad: the loss must not propagate into the teacher
    v = unit_rows(3, 2, seed=4)
    assert torch.autograd.gradcheck(lambda x, y: sigrot_loss(x, y, u, v, epsilon=0.2, n_iters=10), (x, y))
    loss = sigrot_loss(x, y, u, v, epsilon=0.2, n_iters=10)
    loss.backward()
    assert u.grad is None and v.grad is None


def test_sigrot_float32_and_half():
    x, y = unit_rows(8, 6, seed=1), unit_rows(8, 6, seed=2)
    u, v = unit_rows(8, 5, seed=3).detach(), unit_rows(8, 5, seed=4).detach()
    want = sigrot_loss(x, y, u, v)
    got = sigrot_loss(x.float(), y.float(), u.float(), v.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    half = sigrot_loss(x.detach().bfloat16(), y.detach().bfloat16(), u.bfloat16(), v.bfloat16())
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_sigrot_is_smaller_when_the_plan_follows_the_teacher():
    # the teacher pairs i with i; an embedding with x = y matches it better than a shuffled one
    u, v = unit_rows(6, 6, seed=11).detach(), None
    v = u.clone()
    aligned = sigrot_loss(u, u, u, v)
    shuffled = sigrot_loss(u, u[torch.tensor([1, 2, 3, 4, 5, 0])], u, v)
    assert float(aligned) < float(shuffled)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y": torch.ones(4, 4)}, "'y' must have 5 rows"),
        ({"teacher_image": torch.ones(4, 3)}, "'teacher_image' must have 5 rows"),
        ({"teacher_text": torch.ones(5, 2)}, "'teacher_text' must have embedding size 3"),
        ({"teacher_text": torch.full((5, 3), float("nan"))}, "'teacher_text' contains"),
        ({"prior_tau": 0.05, "prior_scale": 20.0}, "not both"),
        ({"prior_tau": 0.0}, "'prior_tau' must be a finite float > 0"),
        ({"prior_scale": -1.0}, "'prior_scale' must be a finite float > 0"),
        ({"epsilon": 0.0}, "'epsilon' must be a finite float > 0"),
        ({"reg_m": 0.0}, "'reg_m' must be a finite float > 0"),
        ({"n_iters": 0}, "'n_iters' must be an int >= 1"),
    ],
)
def test_sigrot_errors(kwargs, match):
    args = {
        "x": torch.ones(5, 4) / 2,
        "y": torch.ones(5, 4) / 2,
        "teacher_image": torch.ones(5, 3),
        "teacher_text": torch.ones(5, 3),
    } | kwargs
    with pytest.raises(InputError, match=match):
        sigrot_loss(args.pop("x"), args.pop("y"), args.pop("teacher_image"), args.pop("teacher_text"), **args)


# --------------------------------------------------------------------------------------------
# hybrids and registry
# --------------------------------------------------------------------------------------------


def test_clip_hybrid_is_weighted_sum():
    x, y = unit_rows(N, D, seed=1), unit_rows(N, D, seed=2)
    u, v = _teacher()
    ids = torch.tensor([0, 0, 1, 2, 3])
    got = sigrot_hybrid_loss(x, y, 10.0, u, v, sample_ids=ids, n_iters=30)
    want = 0.1 * clip_loss(x, y, 10.0, sample_ids=ids) + sigrot_loss(x, y, u, v, n_iters=30)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_siglip_hybrid_is_weighted_sum():
    x, y = unit_rows(N, D, seed=1), unit_rows(N, D, seed=2)
    u, v = _teacher()
    got = sigrot_hybrid_loss(x, y, 10.0, u, v, base="siglip", bias=-10.0, base_weight=0.5, n_iters=30)
    want = 0.5 * siglip_loss(x, y, 10.0, -10.0) + sigrot_loss(x, y, u, v, n_iters=30)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_hybrid_gradient_reaches_the_scale():
    x, y = unit_rows(N, D, seed=1), unit_rows(N, D, seed=2)
    u, v = _teacher()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    sigrot_hybrid_loss(x, y, scale, u, v, n_iters=10).backward()
    assert scale.grad is not None and float(scale.grad) != 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base": "infonce"}, "'base' must be one of"),
        ({"base_weight": -0.1}, "'base_weight' must be a finite float >= 0"),
        ({"bias": -10.0}, "base='clip' takes none"),
        ({"base": "siglip"}, "needs 'bias'"),
        ({"base": "siglip", "bias": -10.0, "label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_hybrid_errors(kwargs, match):
    x, y = unit_rows(N, D, seed=1), unit_rows(N, D, seed=2)
    u, v = _teacher()
    with pytest.raises(InputError, match=match):
        sigrot_hybrid_loss(x, y, 10.0, u, v, **kwargs)


def test_registry_names():
    assert LOSSES["sigrot"] is sigrot_loss and get_loss("sigrot") is sigrot_loss
    assert get_loss("sigrot_hybrid") is sigrot_hybrid_loss
