"""Entropic optimal transport (balanced and KL-unbalanced Sinkhorn) in the log domain.

The problem, for a cost C (N, M) and positive marginals a (N,), b (M,):

    min_P  <C, P> + eps KL(P || a b^T) + rho KL(P 1 || a) + rho KL(P^T 1 || b)

with KL(p || q) = sum p log(p/q) - p + q. Balanced OT (``reg_m=None``) is the limit rho -> inf,
where the marginals are constraints. With K_ij = a_i b_j exp(-C_ij / eps) the solution is
P = diag(u) K diag(v), found by the scaling iterations (Chizat et al. 2018)

    u <- (a / K v)^phi,   v <- (b / K^T u)^phi,   phi = rho / (rho + eps)   (phi = 1 balanced).

In the log domain, f = log u, g = log v, and since log (K v)_i = log a_i + LSE_j(log b_j + g_j
- C_ij/eps), the a_i of the reference measure cancels the a_i of the target:

    f_i <- -phi LSE_j(log b_j + g_j - C_ij / eps)
    g_j <- -phi LSE_i(log a_i + f_i - C_ij / eps)
    log P_ij = log a_i + log b_j + f_i + g_j - C_ij / eps

Every log-sum-exp subtracts its max (``torch.logsumexp``), so a small eps does not overflow.
The iterations are plain tensor ops, so autograd differentiates through the unrolled loop.

POT's ``ot.unbalanced.sinkhorn_unbalanced(reg_type="kl")`` solves the same problem with its
default reference measure ``c = a b^T``; older POT releases have no ``c`` and use the reference
1 (K = exp(-C/eps)), which equals this one only after the cost shift C - eps log(a_i b_j).
"""

from __future__ import annotations

import math
import numbers

import torch

from contrastkit.errors import InputError, check_finite, check_tensor
from contrastkit.functional.numerics import compute_dtype

_MASS_RTOL = 1e-6


def _check_positive_float(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{fn}: argument '{name}' must be a float > 0; got {type(value).__name__}.")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{fn}: argument '{name}' must be a finite float > 0; got {value}.")
    return float(value)


def _check_marginal(fn: str, name: str, m: object, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A (n,) finite, strictly positive marginal (uniform 1/n when None), in ``dtype``."""
    if m is None:
        return torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    m = check_tensor(fn, name, m)
    if m.dim() != 1 or m.shape[0] != n:
        raise InputError(
            f"{fn}: argument '{name}' must have shape ({n},) to match 'cost'; got {tuple(m.shape)}."
        )
    if m.device != device:
        raise InputError(f"{fn}: argument '{name}' is on {m.device} but 'cost' is on {device}.")
    check_finite(fn, name, m)
    if bool((m <= 0).any()):
        bad = int((m <= 0).sum())
        raise InputError(
            f"{fn}: argument '{name}' must be strictly positive (a zero-mass point has log-mass -inf; "
            f"drop it from the cost instead); got {bad} entr(y/ies) <= 0."
        )
    return m.to(dtype)


def _check_inputs(fn, cost, a, b, epsilon, reg_m, n_iters):
    cost = check_tensor(fn, "cost", cost)
    if cost.dim() != 2 or cost.shape[0] == 0 or cost.shape[1] == 0:
        raise InputError(
            f"{fn}: argument 'cost' must be a non-empty (N, M) matrix; got shape {tuple(cost.shape)}."
        )
    check_finite(fn, "cost", cost)
    epsilon = _check_positive_float(fn, "epsilon", epsilon)
    if reg_m is not None:
        reg_m = _check_positive_float(fn, "reg_m", reg_m)
    if isinstance(n_iters, bool) or not isinstance(n_iters, numbers.Integral) or n_iters < 1:
        raise InputError(f"{fn}: argument 'n_iters' must be an int >= 1; got {n_iters!r}.")
    dtype = compute_dtype(cost, *(t for t in (a, b) if isinstance(t, torch.Tensor)))
    n, m = cost.shape
    a = _check_marginal(fn, "a", a, n, dtype, cost.device)
    b = _check_marginal(fn, "b", b, m, dtype, cost.device)
    if reg_m is None:
        mass_a, mass_b = float(a.detach().sum()), float(b.detach().sum())
        if abs(mass_a - mass_b) > _MASS_RTOL * max(mass_a, mass_b):
            raise InputError(
                f"{fn}: balanced transport (reg_m=None) needs marginals of equal mass; got sum(a) = "
                f"{mass_a:.6g} and sum(b) = {mass_b:.6g}. Normalise them, or pass reg_m for "
                f"unbalanced transport."
            )
    return cost.to(dtype), a, b, epsilon, reg_m, int(n_iters)


def log_sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    epsilon: float = 0.05,
    reg_m: float | None = None,
    n_iters: int = 200,
) -> torch.Tensor:
    """The log of the entropic transport plan, log P (N, M); see ``sinkhorn``.

    Use it where log P is consumed (a KL against the plan): it never underflows to log 0.
    """
    fn = "log_sinkhorn"
    cost, a, b, epsilon, reg_m, n_iters = _check_inputs(fn, cost, a, b, epsilon, reg_m, n_iters)
    return _log_plan(cost, a, b, epsilon, reg_m, n_iters)


def _log_plan(cost, a, b, epsilon, reg_m, n_iters):
    phi = 1.0 if reg_m is None else reg_m / (reg_m + epsilon)
    log_a, log_b = a.log(), b.log()
    kernel = -cost / epsilon  # log K_ij - log a_i - log b_j
    g = torch.zeros_like(log_b)
    f = torch.zeros_like(log_a)
    for _ in range(n_iters):
        f = -phi * torch.logsumexp(kernel + (log_b + g)[None, :], dim=1)
        g = -phi * torch.logsumexp(kernel + (log_a + f)[:, None], dim=0)
    return kernel + (log_a + f)[:, None] + (log_b + g)[None, :]


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    epsilon: float = 0.05,
    reg_m: float | None = None,
    n_iters: int = 200,
) -> torch.Tensor:
    """Entropic optimal transport plan P (N, M) by log-domain Sinkhorn scaling.

        min_P <C, P> + eps KL(P || a b^T) + rho KL(P 1 || a) + rho KL(P^T 1 || b)

    Balanced (marginals as constraints: P 1 = a, P^T 1 = b at convergence) when ``reg_m`` is
    None; KL-unbalanced with marginal weight rho = ``reg_m`` otherwise, where each half-step is
    damped by phi = rho / (rho + eps) and the plan's marginals approach a and b as rho grows.
    The u-update runs first; ``n_iters`` full (u, v) updates are unrolled, and gradients flow
    through all of them (plain autograd: memory O(n_iters N M) when a gradient is needed).

    Args:
        cost: (N, M) finite cost matrix C.
        a: (N,) strictly positive source marginal; default uniform 1/N.
        b: (M,) strictly positive target marginal; default uniform 1/M. With ``reg_m=None``,
            sum(a) must equal sum(b) (relative tolerance 1e-6).
        epsilon: entropic regularisation eps > 0 (the cost is divided by it).
        reg_m: marginal weight rho > 0 of the KL-unbalanced problem; None for balanced OT.
        n_iters: number of (u, v) scaling iterations >= 1 (no early stop, so the result is a
            fixed differentiable function of the inputs).

    Returns:
        P (N, M), float32 (float64 if any input is float64; half inputs are upcast).

    Example:
        >>> cost = 1 - x @ y.T                                   # doctest: +SKIP
        >>> plan = sinkhorn(cost, epsilon=0.05, reg_m=0.5)       # doctest: +SKIP

    References: Cuturi 2013 (arXiv 1306.0895); Chizat, Peyre, Schmitzer, Vialard 2018,
    "Scaling algorithms for unbalanced optimal transport problems" (arXiv 1607.05816).
    """
    fn = "sinkhorn"
    cost, a, b, epsilon, reg_m, n_iters = _check_inputs(fn, cost, a, b, epsilon, reg_m, n_iters)
    return _log_plan(cost, a, b, epsilon, reg_m, n_iters).exp()
