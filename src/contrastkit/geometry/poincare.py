"""The Poincare ball of curvature -c: {x in R^D : c ||x||^2 < 1} (METHODS 3.11)."""

from __future__ import annotations

import torch

from contrastkit.errors import InputError
from contrastkit.geometry.base import CurvedManifold, as_compute, safe_norm


def artanh_limit(dtype: torch.dtype) -> float:
    """The largest artanh argument used: 1 - 1e-15 in float64, 1 - 1e-5 otherwise."""
    return 1 - 1e-15 if dtype == torch.float64 else 1 - 1e-5


def ball_margin(dtype: torch.dtype) -> float:
    """delta of the projection radius (1 - delta) / sqrt(c): 1e-5 in float64, 4e-3 otherwise."""
    return 1e-5 if dtype == torch.float64 else 4e-3


def arcosh_floor(dtype: torch.dtype) -> float:
    """Smallest z in arcosh(1 + z): 1e-15 in float64, 1e-7 otherwise (keeps the gradient finite)."""
    return 1e-15 if dtype == torch.float64 else 1e-7


def arcosh1p(z: torch.Tensor) -> torch.Tensor:
    """arcosh(1 + z) = log1p(z + sqrt(z (z + 2))), accurate for small z >= 0 (z clamped to the floor)."""
    z = z.clamp_min(arcosh_floor(z.dtype))
    return torch.log1p(z + torch.sqrt(z * (z + 2)))


class PoincareBall(CurvedManifold):
    """The Poincare ball model of hyperbolic space with curvature -c, c = softplus(theta) + 1e-4.

    Points are (..., D) tensors with c ||x||^2 < 1; tangent vectors at the origin are (..., D).
    Computations run in float32 for half inputs and in float64 for float64 inputs, with the clamps
    of METHODS 3.11 (artanh argument <= 1 - 1e-5 / 1 - 1e-15, projection radius (1 - delta)/sqrt(c)
    with delta = 4e-3 / 1e-5, ||v|| guarded away from 0).

    Args:
        c: initial curvature magnitude (> 1e-4).
        learnable: train c (through theta) with the model.

    Example:
        >>> ball = PoincareBall(c=1.0)
        >>> x = ball.expmap0(0.5 * torch.randn(4, 2)); y = ball.expmap0(0.5 * torch.randn(4, 2))
        >>> ball.dist(x, y).shape, ball.pairwise_dist(x, y).shape
        (torch.Size([4]), torch.Size([4, 4]))

    Reference: Ganea, Becigneul & Hofmann 2018, arXiv 1805.09112 (Mobius operations and maps).
    """

    name = "poincare"

    def mobius_add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., D), (..., D) -> (..., D): Mobius addition

        x (+)_c y = [(1 + 2c<x,y> + c||y||^2) x + (1 - c||x||^2) y] / (1 + 2c<x,y> + c^2 ||x||^2 ||y||^2).
        """
        x, y = as_compute(x), as_compute(y)
        c = self._c(x)
        xy = (x * y).sum(-1, keepdim=True)
        x2, y2 = (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
        num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
        den = 1 + 2 * c * xy + c**2 * x2 * y2
        return num / den.clamp_min(torch.finfo(x.dtype).tiny)

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., D), (..., D) -> (...): d_c(x, y) = (2/sqrt(c)) artanh(sqrt(c) ||(-x) (+)_c y||)."""
        x, y = as_compute(x), as_compute(y)
        sqrt_c = self._c(x).sqrt()
        arg = sqrt_c * self.mobius_add(-x, y).norm(dim=-1)
        return 2 / sqrt_c * torch.atanh(arg.clamp_max(artanh_limit(x.dtype)))

    def pairwise_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, D), (M, D) -> (N, M) distances by the arcosh form (no (N, M, D) tensor):

        d_c = (1/sqrt(c)) arcosh(1 + 2c ||x - y||^2 / ((1 - c||x||^2)(1 - c||y||^2))).

        ||x - y|| comes from ``torch.cdist`` without the matmul expansion, whose cancellation
        near the boundary would put errors of several % into the distances of close points.
        """
        x, y = as_compute(x), as_compute(y)
        c = self._c(x)
        x2, y2 = (x * x).sum(-1), (y * y).sum(-1)
        diff2 = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        tiny = torch.finfo(x.dtype).tiny
        den = (1 - c * x2).clamp_min(tiny)[:, None] * (1 - c * y2).clamp_min(tiny)[None, :]
        return arcosh1p(2 * c * diff2 / den) / c.sqrt()

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...): distance from the origin, (2/sqrt(c)) artanh(sqrt(c) ||x||)."""
        x = as_compute(x)
        sqrt_c = self._c(x).sqrt()
        return 2 / sqrt_c * torch.atanh((sqrt_c * x.norm(dim=-1)).clamp_max(artanh_limit(x.dtype)))

    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) tangent vectors at 0 -> points: proj(tanh(sqrt(c) ||v||) v / (sqrt(c) ||v||))."""
        v = as_compute(v)
        sqrt_c = self._c(v).sqrt()
        norm = safe_norm(v)
        return self.proj(torch.tanh(sqrt_c * norm) * v / (sqrt_c * norm))

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) points -> tangent vectors at 0: artanh(sqrt(c) ||x||) x / (sqrt(c) ||x||)."""
        x = as_compute(x)
        sqrt_c = self._c(x).sqrt()
        norm = safe_norm(x)
        return torch.atanh((sqrt_c * norm).clamp_max(artanh_limit(x.dtype))) * x / (sqrt_c * norm)

    def proj(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale rows with ||x|| > (1 - delta)/sqrt(c) onto that radius; other rows unchanged."""
        x = as_compute(x)
        radius = (1 - ball_margin(x.dtype)) / self._c(x).sqrt()
        norm = safe_norm(x)
        return torch.where(norm > radius, x / norm * radius, x)

    def to_lorentz(self, y: torch.Tensor) -> torch.Tensor:
        """(..., D) ball points -> (..., D+1) hyperboloid points of the same c (an isometry):

        x0 = (1 + c||y||^2) / (sqrt(c) (1 - c||y||^2)),  x_s = 2y / (1 - c||y||^2).
        """
        y = as_compute(y)
        c = self._c(y)
        y2 = (y * y).sum(-1, keepdim=True)
        den = (1 - c * y2).clamp_min(torch.finfo(y.dtype).tiny)
        return torch.cat(((1 + c * y2) / (c.sqrt() * den), 2 * y / den), dim=-1)

    def check_point(self, fn: str, arg: str, x: torch.Tensor) -> None:
        """Raise ``InputError`` if a row has c ||x||^2 >= 1 (outside the open ball)."""
        c = float(self.c.detach())
        sq = (x.detach().to(torch.float64) ** 2).sum(-1) * c
        if bool((sq >= 1).any()):
            raise InputError(
                f"{fn}: argument '{arg}' has {int((sq >= 1).sum())} row(s) outside the Poincare ball "
                f"of curvature -{c:.4g} (c ||x||^2 up to {float(sq.max()):.4g}, must be < 1). Map "
                f"Euclidean vectors in with manifold.expmap0(v), or pull points back with manifold.proj(x)."
            )
