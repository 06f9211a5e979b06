"""Positives-only alignment terms (auxiliary: used alone they allow collapse)."""

from __future__ import annotations

import torch

from contrastkit.losses.pairs import unit_pair


def cosine_alignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance of matched pairs: L = (1/B) sum_i (1 - cos(x_i, y_i)).

    No negatives: use it as an auxiliary term beside a contrastive loss (GatedCLIP uses 0.01x).

    Args:
        x, y: (B, D) paired embeddings (normalised inside; an all-zero row raises, its cosine
            being undefined).
    """
    fn = "cosine_alignment"
    x, y = unit_pair(fn, x, y, ("x", "y"))
    cos = (x * y).sum(dim=1)
    return (1 - cos).mean()
