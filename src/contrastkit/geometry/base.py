"""What every manifold shares: the curvature parameter, the compute dtype and the safe norm.

Curvature is -c with c > 0, parameterised as c = softplus(theta) + 1e-4 (METHODS 3.11), theta0
chosen so that c starts at the requested value; ``learnable=True`` makes theta a Parameter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contrastkit.errors import InputError, check_flag
from contrastkit.functional import compute_dtype, softplus

MIN_CURVATURE = 1e-4
MIN_NORM = 1e-15  # guard for ||v|| -> 0 in v / ||v||


def as_compute(x: torch.Tensor) -> torch.Tensor:
    """x in its compute dtype: float64 stays, everything else (bf16, fp16, fp32) becomes float32."""
    return x.to(compute_dtype(x))


def safe_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| over the last dim, kept (..., 1), clamped to MIN_NORM so that x / ||x|| is finite."""
    return x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)


class Manifold(nn.Module):
    """Base class of the manifolds the hyperbolic losses accept (``dist``, ``pairwise_dist``,
    ``expmap0``, ``logmap0``, ``dist0``, ``proj``, ``check_point``)."""

    name = "manifold"

    def check_point(self, fn: str, arg: str, x: torch.Tensor) -> None:
        """Raise ``InputError`` (naming ``fn`` and ``arg``) if a row of ``x`` is not on the manifold."""


class CurvedManifold(Manifold):
    """A manifold of constant curvature -c, with c = softplus(theta) + 1e-4.

    Args:
        c: the initial curvature magnitude, a float > 1e-4 (1.0: the unit ball / hyperboloid).
        learnable: make theta an ``nn.Parameter`` (else a buffer that follows ``.to()``).

    theta is created in float64 (so that ``.double()`` keeps c exact); c is cast to the dtype of
    the points in every operation.
    """

    def __init__(self, c: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        fn = type(self).__name__
        check_flag(fn, "learnable", learnable)
        if (
            isinstance(c, bool)
            or not isinstance(c, (int, float))
            or not math.isfinite(c)
            or c <= MIN_CURVATURE
        ):
            raise InputError(
                f"{fn}: argument 'c' (the curvature magnitude, curvature = -c) must be a float > "
                f"{MIN_CURVATURE}; got {c!r}."
            )
        excess = float(c) - MIN_CURVATURE  # theta0 = softplus^-1(excess); exp(excess) overflows past 709
        inverse = math.log(math.expm1(excess)) if excess < 50 else excess + math.log1p(-math.exp(-excess))
        theta0 = torch.tensor(inverse, dtype=torch.float64)
        if learnable:
            self.theta = nn.Parameter(theta0)
        else:
            self.register_buffer("theta", theta0)
        self.learnable = learnable

    @property
    def c(self) -> torch.Tensor:
        """The curvature magnitude c = softplus(theta) + 1e-4, a 0-d tensor (differentiable)."""
        return softplus(self.theta) + MIN_CURVATURE

    def _c(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.to(x.dtype)

    def extra_repr(self) -> str:
        return f"c={float(self.c.detach()):.4g}, learnable={self.learnable}"
