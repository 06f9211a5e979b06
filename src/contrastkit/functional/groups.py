"""Per-group sums: the O(B D) positive terms of a loss whose positives share an id."""

from __future__ import annotations

import torch


def group_sums(
    values: torch.Tensor, ids: torch.Tensor, groups: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum the rows of ``values`` per distinct id.

    Args:
        values: (B, D) rows.
        ids: (B,) integer ids.
        groups: G, when ``ids`` already are group indices in [0, G) (rows of two sets put in one
            numbering); None numbers the distinct ids in sorted order.

    Returns:
        (sums (G, D), counts (G,) in the dtype of ``values``, group (B,) the group index of each row).
        Differentiable in ``values``.
    """
    if groups is None:
        _, group, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    else:
        group, counts = ids, torch.bincount(ids, minlength=groups)
    sums = values.new_zeros(counts.shape[0], values.shape[1]).index_add(0, group, values)
    return sums, counts.to(values.dtype), group
