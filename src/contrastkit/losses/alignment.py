"""Positives-only alignment terms (auxiliary: used alone they allow collapse)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import check_embeddings, check_nonzero_rows, check_same_device
from contrastkit.functional import compute_dtype


def cosine_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance of matched pairs: L = (1/B) sum_i (1 - cos(x_i, y_i)).

    No negatives: use it as an auxiliary term beside a contrastive loss (GatedCLIP uses 0.01x).

    Args:
        x, y: (B, D) paired embeddings (normalised inside; an all-zero row raises, its cosine
            being undefined).
    """
    fn = "cosine_alignment"
    check_same_device(fn, x=x, y=y)
    x = check_embeddings(fn, "x", x)
    y = check_embeddings(fn, "y", y, rows=x.shape[0], dim=x.shape[1], like="x")
    check_nonzero_rows(fn, "x", x)
    check_nonzero_rows(fn, "y", y)
    dtype = compute_dtype(x, y)
    cos = (F.normalize(x.to(dtype), dim=1) * F.normalize(y.to(dtype), dim=1)).sum(dim=1)
    return (1 - cos).mean()
