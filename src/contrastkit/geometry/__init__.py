"""Hyperbolic (and flat) manifolds with learnable curvature, for the hyperbolic losses."""

from contrastkit.geometry.base import Manifold
from contrastkit.geometry.euclidean import Euclidean
from contrastkit.geometry.lorentz import Lorentz, minkowski_inner
from contrastkit.geometry.poincare import PoincareBall

__all__ = ["Euclidean", "Lorentz", "Manifold", "PoincareBall", "minkowski_inner"]
