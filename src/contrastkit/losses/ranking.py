"""Rank-N-Contrast: contrast ordered by label distance, for continuous, vector or group labels."""

from __future__ import annotations

import numbers

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_finite,
    check_generator,
    check_labels,
    check_same_device,
    check_temperature,
    check_tensor,
)
from contrastkit.functional import compute_dtype, stack_views


def rank_n_contrast(
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    temperature: float = 2.0,
    *,
    label_dist: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank-N-Contrast over raw features and continuous labels (or label distances).

    With s_ij = -||z_i - z_j||_2 and d_ij = ||y_i - y_j||_1 (or ``label_dist[i, j]``) over n anchors,

        L = -1/(n(n-1)) sum_i sum_{j != i} [ s_ij/tau - LSE_{k != i : d_ik >= d_ij} s_ik/tau ]

    The denominator of pair (i, j) holds j and every k at least as far from i in label space
    (ties included). Each row is sorted by d and read through a cumulative log-sum-exp at the
    last index of each tie group: O(n^2 log n) time, O(n^2) memory.

    Args:
        z: (n, D) features or (N, V, D) views (stacked view-major), used raw (not normalised).
        y: (N,) or (N, K) labels (float or int), repeated over the views.
        temperature: tau > 0 (2.0 as in the paper).
        label_dist: (N, N) label distances over samples, instead of ``y`` (repeated over the
            views). Only the order within each row matters: any finite real values, not
            necessarily symmetric. The diagonal is ignored for (n, D) features; with V > 1 views
            label_dist[i, i] is the distance between two views of sample i (0 for ``y``).

    Reference: Zha et al. 2023, "Rank-N-Contrast", arXiv 2210.01189.
    """
    fn = "rank_n_contrast"
    check_same_device(fn, z=z, y=y, label_dist=label_dist)
    z = check_embeddings(fn, "z", z, shape="(n, D) or (N, V, D)", ndims=(2, 3))
    temperature = check_temperature(fn, "temperature", temperature)
    n_samples = z.shape[0]
    if (y is None) == (label_dist is None):
        raise InputError(f"{fn}: pass exactly one of 'y' (N,) or (N, K) and 'label_dist' (N, N).")
    if y is not None:
        y = _real_target(fn, "y", y)
        if y.dim() not in (1, 2) or y.shape[0] != n_samples:
            raise InputError(
                f"{fn}: 'y' must have shape ({n_samples},) or ({n_samples}, K); got {tuple(y.shape)}."
            )
        y = y.reshape(n_samples, -1)
        label_dist = torch.cdist(y, y, p=1)
    else:
        label_dist = _real_target(fn, "label_dist", label_dist)
        if tuple(label_dist.shape) != (n_samples, n_samples):
            raise InputError(
                f"{fn}: 'label_dist' must have shape ({n_samples}, {n_samples}) (one row and column "
                f"per sample of 'z'); got {tuple(label_dist.shape)}."
            )
    z, views = stack_views(z)
    label_dist = label_dist.repeat(views, views)
    n = z.shape[0]
    if n < 2:
        raise InputError(f"{fn}: needs at least 2 anchors; got {n}.")

    dtype = compute_dtype(z)
    similarity = -torch.cdist(z.to(dtype), z.to(dtype), compute_mode=_EXACT) / temperature
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    similarity = similarity[off_diagonal].view(n, n - 1)
    label_dist = label_dist[off_diagonal].view(n, n - 1)
    return -_ranked_log_likelihoods(similarity, label_dist).mean()


def group_rank_n_contrast(
    feat_x: torch.Tensor,
    feat_y: torch.Tensor,
    grp_x: torch.Tensor,
    grp_y: torch.Tensor,
    group_dist: torch.Tensor,
    temperature: float = 2.0,
    anchors_per_group: int | None = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Group-wise Rank-N-Contrast between the points of two shapes (UniMatch).

    Points carry group (part) ids into ``group_dist``; the same id on both shapes is a matched
    part. Up to ``anchors_per_group`` points per group are drawn from each shape (sets X, Y);
    with s_ij = -||f_i - f_j||_2 and d_ij = group_dist[g(i), g(j)], the ranking runs over
    cross-shape pairs only, in both directions:

        L_XY = -1/(|X||Y|) sum_{i in X} sum_{j in Y} [ s_ij/tau - LSE_{k in Y : d_ik >= d_ij} s_ik/tau ]
        L    = (L_XY + L_YX) / 2

    (pairs within one shape are not ranked). The denominator holds j and all its ties, as in
    ``rank_n_contrast``: O(|X||Y| log |Y|).

    Args:
        feat_x: (Nx, D) per-point features of shape x, used raw (not normalised).
        feat_y: (Ny, D) per-point features of shape y.
        grp_x: (Nx,) integer group ids in [0, G).
        grp_y: (Ny,) integer group ids in [0, G).
        group_dist: (G, G) group distances: symmetric, >= 0, zero diagonal (matched parts);
            e.g. 1 - cos of part-name text embeddings. Only their order matters.
        temperature: tau > 0 (2.0 as in the paper).
        anchors_per_group: the most points drawn per group and shape (int >= 1); None keeps
            every point.
        generator: the ``torch.Generator`` of the draw (None: the global one).

    Reference: UniMatch, arXiv 2602.19112 (group RnC); Zha et al. 2023, arXiv 2210.01189.
    """
    fn = "group_rank_n_contrast"
    check_same_device(fn, feat_x=feat_x, feat_y=feat_y, grp_x=grp_x, grp_y=grp_y, group_dist=group_dist)
    feat_x = check_embeddings(fn, "feat_x", feat_x, shape="(Nx, D)")
    feat_y = check_embeddings(fn, "feat_y", feat_y, shape="(Ny, D)", dim=feat_x.shape[1], like="feat_x")
    temperature = check_temperature(fn, "temperature", temperature)
    _check_per_group(fn, "anchors_per_group", anchors_per_group)
    check_generator(fn, generator)
    group_dist = _group_distances(fn, group_dist)
    grp_x = _group_ids(fn, "grp_x", grp_x, feat_x.shape[0], group_dist.shape[0])
    grp_y = _group_ids(fn, "grp_y", grp_y, feat_y.shape[0], group_dist.shape[0])
    keep_x = sample_per_group(grp_x, anchors_per_group, generator)
    keep_y = sample_per_group(grp_y, anchors_per_group, generator)
    for name, n in (("feat_x", keep_x.shape[0]), ("feat_y", keep_y.shape[0])):
        if n < 2:
            raise InputError(
                f"{fn}: '{name}' needs at least 2 points to rank (after drawing at most "
                f"anchors_per_group={anchors_per_group} per group); got {n}. Pass more points or "
                f"a larger anchors_per_group."
            )
    feat_x, grp_x = feat_x[keep_x], grp_x[keep_x]
    feat_y, grp_y = feat_y[keep_y], grp_y[keep_y]

    dtype = compute_dtype(feat_x, feat_y)
    similarity = -torch.cdist(feat_x.to(dtype), feat_y.to(dtype), compute_mode=_EXACT) / temperature
    dist = group_dist[grp_x[:, None], grp_y[None, :]]
    x_to_y = _ranked_log_likelihoods(similarity, dist).mean()
    y_to_x = _ranked_log_likelihoods(similarity.T, dist.T).mean()
    return -(x_to_y + y_to_x) / 2


def sample_per_group(
    groups: torch.Tensor, per_group: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of at most ``per_group`` points of each group, drawn without replacement.

    Args:
        groups: (N,) integer group ids.
        per_group: the most indices kept per group (int >= 1); a group with fewer points keeps
            them all; None keeps every index.
        generator: the ``torch.Generator`` of the draw (None: the global one).

    Returns:
        (M,) int64 indices into ``groups``, sorted ascending.
    """
    fn = "sample_per_group"
    groups = check_tensor(fn, "groups", groups, floating=False)
    if groups.dim() != 1:
        raise InputError(f"{fn}: argument 'groups' must have shape (N,); got {tuple(groups.shape)}.")
    n = groups.shape[0]
    groups = check_labels(fn, "groups", groups, n)
    check_generator(fn, generator)
    if _check_per_group(fn, "per_group", per_group) is None:
        return torch.arange(n, device=groups.device)
    device = groups.device if generator is None else generator.device
    keys = torch.rand(n, generator=generator, device=device)
    order = torch.argsort(keys.to(groups.device))
    order = order[torch.argsort(groups[order], stable=True)]  # by group, random within a group
    sorted_groups = groups[order]
    rank = torch.arange(n, device=groups.device) - torch.searchsorted(sorted_groups, sorted_groups)
    return order[rank < per_group].sort().values


_EXACT = "donot_use_mm_for_euclid_dist"


def _ranked_log_likelihoods(similarity: torch.Tensor, label_dist: torch.Tensor) -> torch.Tensor:
    """s_ij - LSE_{k : d_ik >= d_ij} s_ik for every entry of (m, c) similarities and distances.

    The candidates are the c columns (ties included in each denominator). Each row is sorted
    by d, descending, and read through a cumulative log-sum-exp at the last index of its tie
    group. Returns (m, c) with the columns of each row in that sorted order.
    """
    order = torch.argsort(label_dist, dim=1, descending=True, stable=True)
    similarity = similarity.gather(1, order)
    ascending = -label_dist.gather(1, order)
    running_lse = torch.logcumsumexp(similarity, dim=1)
    last_of_tie = torch.searchsorted(ascending, ascending, right=True) - 1
    return similarity - running_lse.gather(1, last_of_tie)


def _check_per_group(fn: str, name: str, value: object) -> int | None:
    """An int >= 1 (the most points kept per group) or None (every point)."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
    ):
        raise InputError(f"{fn}: argument '{name}' must be an int >= 1 or None (every point); got {value!r}.")
    return value


def _real_target(fn: str, name: str, t: object) -> torch.Tensor:
    """A finite real label tensor, detached in float64 (it only orders the pairs; float64
    keeps large integer labels apart)."""
    t = check_tensor(fn, name, t, floating=False)
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{fn}: '{name}' must hold real numbers; got dtype {t.dtype}.")
    t = t.detach().to(torch.float64)
    check_finite(fn, name, t)
    return t


def _group_distances(fn: str, group_dist: object) -> torch.Tensor:
    """A (G, G) symmetric, non-negative, zero-diagonal group distance matrix, in float64."""
    d = _real_target(fn, "group_dist", group_dist)
    if d.dim() != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise InputError(
            f"{fn}: argument 'group_dist' must be a non-empty square (G, G) matrix; got {tuple(d.shape)}."
        )
    if bool((d < 0).any()):
        raise InputError(f"{fn}: argument 'group_dist' must be >= 0; its minimum is {float(d.min())}.")
    if not torch.equal(d, d.T):
        raise InputError(
            f"{fn}: argument 'group_dist' must be symmetric (largest |D - D^T| is "
            f"{float((d - d.T).abs().max())}); pass (D + D.T) / 2."
        )
    if bool(d.diagonal().ne(0).any()):
        raise InputError(
            f"{fn}: argument 'group_dist' must have a zero diagonal (a part matched with itself); "
            f"set it with D.fill_diagonal_(0)."
        )
    return d


def _group_ids(fn: str, name: str, ids: object, n: int, n_groups: int) -> torch.Tensor:
    """Integer group ids of shape (n,), each in [0, n_groups)."""
    ids = check_labels(fn, name, ids, n)
    if bool(((ids < 0) | (ids >= n_groups)).any()):
        raise InputError(
            f"{fn}: argument '{name}' must hold ids in [0, {n_groups}) (rows of 'group_dist'); got "
            f"values from {int(ids.min())} to {int(ids.max())}."
        )
    return ids
