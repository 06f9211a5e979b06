"""A pristine prototype: how far an embedding has drifted from clean conditions (METHODS 3.23)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_nonzero_rows,
    check_range,
    check_same_device,
)
from contrastkit.functional import compute_dtype

METRICS = ("cosine", "mahalanobis")


class PristinePrototype:
    """Fit on clean embeddings, then score any embedding by its distance from them.

    ``metric="cosine"``: mu = normalize(mean_i z_clean_i) and score(z) = 1 - cos(z, mu), in
    [0, 2].

    ``metric="mahalanobis"``: m = mean_i z_clean_i (not normalised), S the sample covariance
    (1/(n-1)) of the clean rows, shrunk towards a scaled identity,
    S_a = (1 - a) S + a (tr S / D) I with a = ``shrinkage``, and
    score(z) = sqrt((z - m)^T S_a^{-1} (z - m)).

    Statistics are fitted without gradient and kept in float64; scores come back (N,) in float32
    (float64 for float64 z) and carry the gradient to z.
    Rows are used as given (the cosine score is scale-free; normalise first for the Mahalanobis
    one if the model's embeddings are unit rows elsewhere).

    Args:
        metric: "cosine" or "mahalanobis".
        shrinkage: a in [0, 1] (Mahalanobis only); 0 needs n > D clean rows in general position.

    Example:
        >>> proto = PristinePrototype().fit(torch.randn(100, 8))
        >>> proto.score(torch.randn(5, 8)).shape
        torch.Size([5])

    Reference: "Self-aware detection via degradation manifolds", arXiv 2602.18394 (prototype
    score); Mahalanobis with shrinkage: Ledoit & Wolf 2004 (shrinkage to a scaled identity).
    """

    def __init__(self, metric: str = "cosine", shrinkage: float = 0.1) -> None:
        fn = "PristinePrototype"
        self.metric = check_choice(fn, "metric", metric, METRICS)
        self.shrinkage = check_range(fn, "shrinkage", shrinkage, 0.0, 1.0)
        self.prototype_: torch.Tensor | None = None  # (D,) unit mu (cosine)
        self.mean_: torch.Tensor | None = None  # (D,) m (Mahalanobis)
        self.cholesky_: torch.Tensor | None = None  # (D, D) lower factor of S_a

    def fit(self, z_clean: torch.Tensor) -> PristinePrototype:
        """Fit on clean embeddings z_clean (n, D): n >= 1 for cosine, n >= 2 for Mahalanobis."""
        fn = "PristinePrototype.fit"
        z = check_embeddings(fn, "z_clean", z_clean, shape="(n, D)").detach().to(torch.float64)
        if self.metric == "cosine":
            mean = z.mean(dim=0)
            check_nonzero_rows(fn, "mean of z_clean", mean[None])
            self.prototype_ = F.normalize(mean, dim=0)
            return self
        n, dim = z.shape
        if n < 2:
            raise InputError(
                f"{fn}: argument 'z_clean' needs at least 2 rows for a covariance; got {n}. Pass more "
                f"clean embeddings or use metric='cosine'."
            )
        mean = z.mean(dim=0)
        centred = z - mean
        cov = centred.T @ centred / (n - 1)
        target = cov.diagonal().mean() * torch.eye(dim, dtype=cov.dtype, device=cov.device)
        shrunk = (1 - self.shrinkage) * cov + self.shrinkage * target
        factor, info = torch.linalg.cholesky_ex(shrunk)
        if int(info) != 0:
            raise InputError(
                f"{fn}: the shrunk covariance of 'z_clean' ({n} rows, D = {dim}) is singular "
                f"(shrinkage={self.shrinkage}); raise 'shrinkage' above 0 or pass more, varied clean rows."
            )
        self.mean_, self.cholesky_ = mean, factor
        return self

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Distance from pristine conditions: (N, D) -> (N,), larger = further from clean."""
        fn = "PristinePrototype.score"
        fitted = self.prototype_ if self.metric == "cosine" else self.mean_
        if fitted is None:
            raise InputError(f"{fn}: the prototype is not fitted; call fit(z_clean) first.")
        z = check_embeddings(fn, "z", z, shape="(N, D)", dim=fitted.shape[0], like="fit's z_clean")
        check_same_device(fn, z=z, fitted=fitted)
        out_dtype = compute_dtype(z)
        z64 = z.to(torch.float64)
        if self.metric == "cosine":
            check_nonzero_rows(fn, "z", z)
            return (1 - F.normalize(z64, dim=1) @ self.prototype_).to(out_dtype)
        whitened = torch.linalg.solve_triangular(self.cholesky_, (z64 - self.mean_).T, upper=False)
        return whitened.square().sum(dim=0).sqrt().to(out_dtype)
