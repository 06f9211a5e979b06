"""sinkhorn / log_sinkhorn against an independent float64 plain-domain scaling loop and POT."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.functional import log_sinkhorn, sinkhorn


def _cost(n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, 6, generator=g, dtype=torch.float64), dim=1)
    return 1 - x @ y.T


def _marginal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return w / w.sum()


def ref_scaling(cost, a, b, eps, rho, n_iters):
    """Plain-domain scaling (Chizat et al. 2018), written element by element in Python floats:
    K_ij = a_i b_j exp(-C_ij/eps); u_i = (a_i / sum_j K_ij v_j)^phi; v_j = (b_j / sum_i K_ij u_i)^phi."""
    n, m = cost.shape
    c = cost.tolist()
    a, b = a.tolist(), b.tolist()
    phi = 1.0 if rho is None else rho / (rho + eps)
    k = [[a[i] * b[j] * math.exp(-c[i][j] / eps) for j in range(m)] for i in range(n)]
    u, v = [1.0] * n, [1.0] * m
    for _ in range(n_iters):
        u = [(a[i] / sum(k[i][j] * v[j] for j in range(m))) ** phi for i in range(n)]
        v = [(b[j] / sum(k[i][j] * u[i] for i in range(n))) ** phi for j in range(m)]
    return torch.tensor([[u[i] * k[i][j] * v[j] for j in range(m)] for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("rho", [None, 0.5, 5.0])
@pytest.mark.parametrize("eps", [0.1, 0.5])
@pytest.mark.parametrize("shape", [(5, 5), (4, 7)])
def test_matches_plain_domain_reference(shape, eps, rho):
    n, m = shape
    cost, a, b = _cost(n, m), _marginal(n, 1), _marginal(m, 2)
    got = sinkhorn(cost, a, b, epsilon=eps, reg_m=rho, n_iters=30)
    want = ref_scaling(cost, a, b, eps, rho, 30)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(log_sinkhorn(cost, a, b, epsilon=eps, reg_m=rho, n_iters=30), want.log())


def test_uniform_default_marginals():
    cost = _cost(4, 6)
    got = sinkhorn(cost, epsilon=0.2, reg_m=0.5, n_iters=20)
    want = ref_scaling(
        cost,
        torch.full((4,), 0.25, dtype=torch.float64),
        torch.full((6,), 1 / 6, dtype=torch.float64),
        0.2,
        0.5,
        20,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_balanced_plan_has_the_marginals():
    cost, a, b = _cost(6, 8), _marginal(6, 3), _marginal(8, 4)
    plan = sinkhorn(cost, a, b, epsilon=0.05, n_iters=500)
    torch.testing.assert_close(plan.sum(0), b, atol=1e-9, rtol=0)  # exact after a v-update
    torch.testing.assert_close(plan.sum(1), a, atol=1e-7, rtol=0)


def test_small_epsilon_is_stable_and_near_the_assignment():
    # eps = 0.005: the plain-domain K would underflow (exp(-400)); the log domain does not
    cost = _cost(5, 5)
    plan = sinkhorn(cost, epsilon=0.005, n_iters=2000)
    assert torch.isfinite(plan).all()
    # slow convergence at small eps; the columns are exact after the last v-update
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 0.2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((5,), 0.2, dtype=torch.float64), atol=1e-3, rtol=0)
    # nearly a permutation: each row puts almost all its mass on one column
    assert float(plan.max(1).values.min()) > 0.15


def test_unbalanced_marginals_approach_the_targets_as_rho_grows():
    cost, a, b = _cost(6, 6), _marginal(6, 5), _marginal(6, 6)
    errors = []
    for rho in [0.05, 0.5, 5.0, 50.0]:
        plan = sinkhorn(cost, a, b, epsilon=0.1, reg_m=rho, n_iters=500)
        errors.append(float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum()))
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:], strict=False)), errors
    balanced = sinkhorn(cost, a, b, epsilon=0.1, n_iters=500)
    near = sinkhorn(cost, a, b, epsilon=0.1, reg_m=1e6, n_iters=500)
    torch.testing.assert_close(near, balanced, atol=1e-6, rtol=0)


def test_unbalanced_plan_is_a_fixed_point():
    # at convergence u = (a / K v)^phi holds: one more u-update leaves the plan unchanged
    cost = _cost(4, 5)
    plan = sinkhorn(cost, epsilon=0.1, reg_m=0.5, n_iters=400)
    plan2 = sinkhorn(cost, epsilon=0.1, reg_m=0.5, n_iters=401)
    torch.testing.assert_close(plan, plan2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rho", [None, 0.5])
def test_gradcheck(rho):
    cost = _cost(3, 4).requires_grad_()
    a, b = _marginal(3, 1).requires_grad_(), _marginal(4, 2).requires_grad_()
    if rho is None:  # balanced needs equal masses; keep b fixed (a perturbation would break it)
        b = b.detach()
        a = a.detach()
    assert torch.autograd.gradcheck(
        lambda c, a, b: sinkhorn(c, a, b, epsilon=0.3, reg_m=rho, n_iters=15), (cost, a, b)
    )


def test_float32_and_half_inputs():
    cost = _cost(5, 5)
    got32 = sinkhorn(cost.float(), epsilon=0.05, reg_m=0.5)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), sinkhorn(cost, epsilon=0.05, reg_m=0.5), rtol=1e-4, atol=1e-7)
    half = sinkhorn(cost.to(torch.bfloat16), epsilon=0.05, reg_m=0.5)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cost": torch.ones(3)}, "'cost' must be a non-empty"),
        ({"cost": torch.ones(0, 3)}, "'cost' must be a non-empty"),
        ({"cost": torch.tensor([[0.0, float("nan")]])}, "'cost' contains 1 NaN"),
        ({"cost": torch.ones(2, 2, dtype=torch.long)}, "floating-point"),
        ({"epsilon": 0.0}, "'epsilon' must be a finite float > 0"),
        ({"epsilon": float("inf")}, "'epsilon' must be a finite float > 0"),
        ({"reg_m": -1.0}, "'reg_m' must be a finite float > 0"),
        ({"n_iters": 0}, "'n_iters' must be an int >= 1"),
        ({"n_iters": 2.5}, "'n_iters' must be an int >= 1"),
        ({"a": torch.ones(3) / 3}, r"'a' must have shape \(2,\)"),
        ({"a": torch.tensor([1.0, 0.0])}, "'a' must be strictly positive"),
        ({"b": torch.tensor([0.5, float("inf")])}, "'b' contains 1 NaN/inf"),
        ({"a": torch.tensor([0.5, 0.6])}, "equal mass"),
    ],
)
def test_errors(kwargs, match):
    args = {"cost": torch.ones(2, 2)} | kwargs
    cost = args.pop("cost")
    with pytest.raises(InputError, match=match):
        sinkhorn(cost, args.pop("a", None), args.pop("b", None), **args)


def test_unbalanced_accepts_unequal_masses():
    plan = sinkhorn(torch.ones(2, 2), torch.tensor([0.5, 0.6]), reg_m=1.0)
    assert torch.isfinite(plan).all()


# --------------------------------------------------------------------------------------------
# POT (optional)
# --------------------------------------------------------------------------------------------


def test_balanced_against_pot():
    ot = pytest.importorskip("ot")
    cost, a, b = _cost(6, 7), _marginal(6, 1), _marginal(7, 2)
    want = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), 0.1, numItermax=10000, stopThr=1e-14)
    got = sinkhorn(cost, a, b, epsilon=0.1, n_iters=2000)
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-10, rtol=1e-7)


@pytest.mark.parametrize("rho", [0.5, 5.0])
def test_unbalanced_against_pot(rho):
    ot = pytest.importorskip("ot")
    cost, a, b = _cost(6, 7), _marginal(6, 1), _marginal(7, 2)
    params = inspect.signature(ot.unbalanced.sinkhorn_unbalanced).parameters
    if "c" in params:  # reference measure a b^T, as here
        extra, pot_cost = {"c": (a[:, None] * b[None, :]).numpy()}, cost
    else:  # old POT: reference 1; eps KL(P || a b^T) = eps KL(P || 1) - eps <log(a b^T), P> + const
        extra, pot_cost = {}, cost - 0.1 * (a.log()[:, None] + b.log()[None, :])
    want = ot.unbalanced.sinkhorn_unbalanced(
        a.numpy(),
        b.numpy(),
        pot_cost.numpy(),
        0.1,
        rho,
        reg_type="kl",
        numItermax=10000,
        stopThr=1e-15,
        **extra,
    )
    got = sinkhorn(cost, a, b, epsilon=0.1, reg_m=rho, n_iters=3000)
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-10, rtol=1e-7)
