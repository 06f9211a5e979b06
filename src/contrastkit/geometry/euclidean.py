"""Flat space with the manifold interface: the Euclidean baseline of the hyperbolic losses."""

from __future__ import annotations

import torch

from contrastkit.geometry.base import Manifold, as_compute


class Euclidean(Manifold):
    """R^D with d(x, y) = ||x - y||; expmap0, logmap0 and proj are the identity.

    The c -> 0 limit of ``PoincareBall`` (up to the factor 2 of its metric), for running the
    same loss and metrics without curvature.
    """

    name = "euclidean"

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(..., D), (..., D) -> (...): ||x - y||."""
        return (as_compute(x) - as_compute(y)).norm(dim=-1)

    def pairwise_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, D), (M, D) -> (N, M) distances (torch.cdist, no (N, M, D) tensor)."""
        return torch.cdist(as_compute(x), as_compute(y), compute_mode="donot_use_mm_for_euclid_dist")

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...): ||x||."""
        return as_compute(x).norm(dim=-1)

    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        return as_compute(v)

    def logmap0(self, x: torch.Tensor) -> torch.Tensor:
        return as_compute(x)

    def proj(self, x: torch.Tensor) -> torch.Tensor:
        return as_compute(x)
