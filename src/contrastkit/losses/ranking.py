"""Rank-N-Contrast: contrast ordered by label distance, for continuous or vector labels."""

from __future__ import annotations

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_finite,
    check_same_device,
    check_temperature,
    check_tensor,
)
from contrastkit.functional import compute_dtype, stack_views


def rank_n_contrast(z: torch.Tensor, y: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Rank-N-Contrast over raw features and continuous labels.

    With s_ij = -||z_i - z_j||_2 and d_ij = ||y_i - y_j||_1 over n anchors,

        L = -1/(n(n-1)) sum_i sum_{j != i} [ s_ij/tau - LSE_{k != i : d_ik >= d_ij} s_ik/tau ]

    The denominator of pair (i, j) holds j and every k at least as far from i in label space
    (ties included). Each row is sorted by d and read through a cumulative log-sum-exp at the
    last index of each tie group: O(n^2 log n) time, O(n^2) memory.

    Args:
        z: (n, D) features or (N, V, D) views (stacked view-major), used raw (not normalised).
        y: (N,) or (N, K) labels (float or int), repeated over the views.
        temperature: tau > 0 (2.0 as in the paper).

    Reference: Zha et al. 2023, "Rank-N-Contrast", arXiv 2210.01189.
    """
    fn = "rank_n_contrast"
    check_same_device(fn, z=z, y=y)
    z = check_embeddings(fn, "z", z, shape="(n, D) or (N, V, D)", ndims=(2, 3))
    temperature = check_temperature(fn, "temperature", temperature)
    y = check_tensor(fn, "y", y, floating=False)
    if y.dim() not in (1, 2) or y.shape[0] != z.shape[0]:
        raise InputError(
            f"{fn}: 'y' must have shape ({z.shape[0]},) or ({z.shape[0]}, K); got {tuple(y.shape)}."
        )
    if y.dtype == torch.bool or y.is_complex():
        raise InputError(f"{fn}: 'y' must hold real numbers; got dtype {y.dtype}.")
    # Label distances only order the pairs: float64 keeps large integer labels apart.
    y = y.detach().to(torch.float64).reshape(y.shape[0], -1)
    check_finite(fn, "y", y)
    z, views = stack_views(z)
    y = y.repeat(views, 1)
    n = z.shape[0]
    if n < 2:
        raise InputError(f"{fn}: needs at least 2 anchors; got {n}.")

    dtype = compute_dtype(z)
    exact = "donot_use_mm_for_euclid_dist"
    similarity = -torch.cdist(z.to(dtype), z.to(dtype), compute_mode=exact) / temperature
    label_dist = torch.cdist(y, y, p=1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    similarity = similarity[off_diagonal].view(n, n - 1)
    label_dist = label_dist[off_diagonal].view(n, n - 1)

    order = torch.argsort(label_dist, dim=1, descending=True, stable=True)
    similarity = similarity.gather(1, order)
    ascending = -label_dist.gather(1, order)
    running_lse = torch.logcumsumexp(similarity, dim=1)
    last_of_tie = torch.searchsorted(ascending, ascending, right=True) - 1
    return -(similarity - running_lse.gather(1, last_of_tie)).mean()
