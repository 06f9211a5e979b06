"""Geometry of embedding spaces: alignment loss, uniformity, modality gap and matched cosine.

Every function normalises its inputs first and returns a Python float.
"""

from __future__ import annotations

import math

import torch

from contrastkit.errors import InputError, check_same_device, check_scalar
from contrastkit.eval._checks import check_chunk_size, check_emb, unit, unit_pair
from contrastkit.functional import compute_dtype


def _pair(fn: str, x: object, y: object, *, same_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_device(fn, x=x, y=y)
    x = check_emb(fn, "x", x)
    y = check_emb(fn, "y", y, rows=x.shape[0] if same_rows else None, dim=x.shape[1], like="x")
    return unit_pair(x, y)


@torch.no_grad()
def alignment_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola (2020) alignment, lower is better: (1/N) sum_i ||x_i - y_i||_2^alpha on unit rows.

    x, y: (N, D) paired embeddings (row i of x with row i of y); alpha > 0.
    """
    fn = "alignment_loss"
    alpha = float(check_scalar(fn, "alpha", alpha, minimum=0.0))
    if alpha == 0:
        raise InputError(f"{fn}: argument 'alpha' must be > 0 (2 as in Wang & Isola); got 0.")
    x, y = _pair(fn, x, y, same_rows=True)
    return float((x - y).norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def uniformity(x: torch.Tensor, t: float = 2.0, chunk_size: int = 1024) -> float:
    """Wang & Isola (2020) uniformity, lower is more uniform, exact and chunked:

        log( 1/(N(N-1)) sum_{i != j} exp(-t ||x_i - x_j||^2) ),  ||x_i - x_j||^2 = 2 - 2 x_i.x_j

    on unit rows, as a log-sum-exp over ``chunk_size`` rows at a time (never N x N at once).
    x: (N, D) with N >= 2; t > 0.
    """
    fn = "uniformity"
    t = float(check_scalar(fn, "t", t, minimum=0.0))
    if t == 0:
        raise InputError(f"{fn}: argument 't' must be > 0 (2 as in Wang & Isola); got 0.")
    x = check_emb(fn, "x", x)
    n = x.shape[0]
    if n < 2:
        raise InputError(
            f"{fn}: argument 'x' needs at least 2 rows (pairs i != j); got shape {tuple(x.shape)}."
        )
    chunk_size = check_chunk_size(fn, chunk_size)
    x = unit(x, compute_dtype(x))
    row_lse = torch.empty(n, dtype=x.dtype, device=x.device)
    for s in range(0, n, chunk_size):
        sq = (2 - 2 * (x[s : s + chunk_size] @ x.T)).clamp_min(0)
        logits = -t * sq
        rows = torch.arange(s, s + logits.shape[0], device=x.device)
        logits[rows - s, rows] = -math.inf
        row_lse[s : s + chunk_size] = torch.logsumexp(logits, dim=1)
    return float(torch.logsumexp(row_lse, dim=0) - math.log(n * (n - 1)))


@torch.no_grad()
def modality_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """Liang et al. (2022) modality gap: || mean_i x_i/||x_i|| - mean_j y_j/||y_j|| ||_2.

    x: (N, D), y: (M, D); the rows need not be paired.
    """
    x, y = _pair("modality_gap", x, y, same_rows=False)
    return float((x.mean(dim=0) - y.mean(dim=0)).norm())


@torch.no_grad()
def mean_matched_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """(1/N) sum_i cos(x_i, y_i) over paired rows.  x, y: (N, D)."""
    x, y = _pair("mean_matched_cosine", x, y, same_rows=True)
    return float((x * y).sum(dim=1).mean())


def representation_metrics(x: torch.Tensor, y: torch.Tensor, chunk_size: int = 1024) -> dict[str, float]:
    """All of the above for paired (N, D) embeddings of two modalities (N >= 2).

    Returns {"alignment", "uniformity_x", "uniformity_y", "modality_gap", "matched_cosine"} with
    alpha = 2 and t = 2.
    """
    _pair("representation_metrics", x, y, same_rows=True)
    return {
        "alignment": alignment_loss(x, y),
        "uniformity_x": uniformity(x, chunk_size=chunk_size),
        "uniformity_y": uniformity(y, chunk_size=chunk_size),
        "modality_gap": modality_gap(x, y),
        "matched_cosine": mean_matched_cosine(x, y),
    }
