"""Similarity matrices in the loss compute dtype (fp32 for half inputs, fp64 stays fp64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.functional.numerics import compute_dtype


def scaled_logits(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """l = scale * x y^T (+ bias).  x: (B, D), y: (M, D) -> (B, M) in the compute dtype."""
    dtype = compute_dtype(x, y)
    logits = scale * (x.to(dtype) @ y.to(dtype).T)
    return logits if bias is None else logits + bias


def cosine_logits(x: torch.Tensor, y: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """l = scale * cos(x_i, y_j).  x: (B, D), y: (M, D) -> (B, M); zero rows give cosine 0."""
    dtype = compute_dtype(x, y)
    return scale * (F.normalize(x.to(dtype), dim=-1) @ F.normalize(y.to(dtype), dim=-1).T)


def stack_views(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N, D) -> itself with V = 1; (N, V, D) -> (V*N, D) stacked view-major, and V.

    Row v*N + i of the result is view v of sample i, as SupCon and Rank-N-Contrast stack them.
    """
    if z.dim() == 2:
        return z, 1
    return z.transpose(0, 1).reshape(-1, z.shape[-1]), z.shape[1]
