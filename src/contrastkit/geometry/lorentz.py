"""The Lorentz (hyperboloid) model of curvature -c: {x in R^{D+1} : <x, x>_L = -1/c, x0 > 0}."""

from __future__ import annotations

import math

import torch

from contrastkit.errors import InputError
from contrastkit.geometry.base import CurvedManifold, as_compute, safe_norm
from contrastkit.geometry.poincare import arcosh1p, artanh_limit, ball_margin


def max_radius(dtype: torch.dtype) -> float:
    """Largest sqrt(c) * (distance from the origin) ``expmap0`` reaches: the radius of the Poincare
    projection, 2 artanh(1 - delta) (6.2 for float32, where cosh would overflow near 89; 12.2 for
    float64), so that both models cover the same region."""
    return 2 * math.atanh(min(1 - ball_margin(dtype), artanh_limit(dtype)))


def minkowski_inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(..., D+1), (..., D+1) -> (...): <x, y>_L = -x0 y0 + sum_k x_k y_k."""
    return (x[..., 1:] * y[..., 1:]).sum(-1) - x[..., 0] * y[..., 0]


class Lorentz(CurvedManifold):
    """The hyperboloid model with curvature -c, c = softplus(theta) + 1e-4.

    Points are (..., D+1) tensors (time coordinate x0 first); tangent vectors at the origin
    (1/sqrt(c), 0, ..., 0) are given by their D spatial coordinates, (..., D), so ``expmap0`` maps
    the same (..., D) vectors as ``PoincareBall.expmap0``. Float32 for half inputs, float64 kept.

    - dist: d = (1/sqrt(c)) arcosh(-c <x, y>_L), the argument clamped >= 1 + 1e-7 (1 + 1e-15 in
      float64, so that d(x, x) is 0 to 5e-8 there).
    - expmap0(v) = (cosh(sqrt(c)||v||)/sqrt(c), sinh(sqrt(c)||v||) v / (sqrt(c)||v||)), with
      sqrt(c)||v|| clamped to ``max_radius`` (the Poincare projection radius: same reach in both
      models, and no overflow of cosh in float32).
    - logmap0(x) = arcosh(sqrt(c) x0)/sqrt(c) * x_s/||x_s||, computed as asinh(sqrt(c)||x_s||)/sqrt(c)
      (equal on the hyperboloid, and exact for small ||x_s|| where arcosh loses digits).
    - proj(x): x0 = sqrt(1/c + ||x_s||^2).

    Example:
        >>> hyp = Lorentz(c=1.0)
        >>> x = hyp.expmap0(torch.randn(4, 2)); x.shape
        torch.Size([4, 3])

    Reference: Nickel & Kiela 2018, arXiv 1806.03417; Law et al. 2019 (curvature -c).
    """

    name = "lorentz"

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., D+1), (..., D+1) -> (...): (1/sqrt(c)) arcosh(-c <x, y>_L)."""
        x, y = as_compute(x), as_compute(y)
        c = self._c(x)
        return arcosh1p(-c * minkowski_inner(x, y) - 1) / c.sqrt()

    def pairwise_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, D+1), (M, D+1) -> (N, M) distances, <x_i, y_j>_L by matmuls (no (N, M, D) tensor)."""
        x, y = as_compute(x), as_compute(y)
        c = self._c(x)
        inner = x[:, 1:] @ y[:, 1:].T - x[:, :1] * y[:, 0][None, :]
        return arcosh1p(-c * inner - 1) / c.sqrt()

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) -> (...): distance from the origin, asinh(sqrt(c) ||x_s||)/sqrt(c)."""
        x = as_compute(x)
        sqrt_c = self._c(x).sqrt()
        return torch.asinh(sqrt_c * x[..., 1:].norm(dim=-1)) / sqrt_c

    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        """(..., D) tangent vectors at the origin -> (..., D+1) points (x0 set by ``proj``)."""
        v = as_compute(v)
        sqrt_c = self._c(v).sqrt()
        norm = safe_norm(v)
        radius = (sqrt_c * norm).clamp_max(max_radius(v.dtype))
        spatial = torch.sinh(radius) * v / (sqrt_c * norm)
        return self.proj(torch.cat((spatial.new_zeros(spatial.shape[:-1] + (1,)), spatial), dim=-1))

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) points -> (..., D) tangent vectors at the origin (spatial coordinates)."""
        x = as_compute(x)
        sqrt_c = self._c(x).sqrt()
        spatial = x[..., 1:]
        norm = safe_norm(spatial)
        return torch.asinh(sqrt_c * norm) / (sqrt_c * norm) * spatial

    def proj(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) -> the hyperboloid point with the same spatial part: x0 = sqrt(1/c + ||x_s||^2)."""
        x = as_compute(x)
        spatial = x[..., 1:]
        x0 = torch.sqrt(1 / self._c(x) + (spatial * spatial).sum(-1, keepdim=True))
        return torch.cat((x0, spatial), dim=-1)

    def to_poincare(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D+1) hyperboloid points -> (..., D) Poincare-ball points of the same c (an
        isometry): y = x_s / (1 + sqrt(c) x0)."""
        x = as_compute(x)
        return x[..., 1:] / (1 + self._c(x).sqrt() * x[..., :1])

    def check_point(self, fn: str, arg: str, x: torch.Tensor) -> None:
        """Raise ``InputError`` unless the rows have D+1 >= 2 coordinates, x0 > 0 and
        c <x, x>_L = -1 to sqrt(eps) relative accuracy."""
        if x.shape[-1] < 2:
            raise InputError(
                f"{fn}: argument '{arg}' must hold Lorentz points (..., D+1) with D >= 1; got shape "
                f"{tuple(x.shape)}. Map (..., D) vectors with manifold.expmap0(v)."
            )
        c = float(self.c.detach())
        x64 = x.detach().to(torch.float64)
        residual = (c * minkowski_inner(x64, x64) + 1).abs()
        tol = torch.finfo(x.dtype).eps ** 0.5 * (1 + c * x64[..., 0] ** 2)
        bad = (x64[..., 0] <= 0) | (residual > tol)
        if bool(bad.any()):
            raise InputError(
                f"{fn}: argument '{arg}' has {int(bad.sum())} row(s) off the hyperboloid "
                f"<x, x>_L = -1/c (c = {c:.4g}, x0 > 0). Map (..., D) vectors with "
                f"manifold.expmap0(v), or fix the time coordinate with manifold.proj(x)."
            )
