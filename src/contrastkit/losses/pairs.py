"""Validation shared by the losses that take two paired, cosine-compared embedding sets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import check_embeddings, check_nonzero_rows, check_same_device
from contrastkit.functional import compute_dtype


def unit_pair(
    fn: str, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two paired (B, D) sets (same device, finite, non-empty, no all-zero row) and return
    them L2-normalised in the compute dtype."""
    first, second = names
    check_same_device(fn, **{first: a, second: b})
    a = check_embeddings(fn, first, a)
    b = check_embeddings(fn, second, b, rows=a.shape[0], dim=a.shape[1], like=first)
    check_nonzero_rows(fn, first, a)
    check_nonzero_rows(fn, second, b)
    dtype = compute_dtype(a, b)
    return F.normalize(a.to(dtype), dim=1), F.normalize(b.to(dtype), dim=1)
