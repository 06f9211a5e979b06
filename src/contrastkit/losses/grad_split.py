"""The InfoNCE gradient on a query split into its attraction and repulsion parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_nonzero_rows,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import compute_dtype, scaled_logits


def info_nce_grad_split(
    q: torch.Tensor, k: torch.Tensor, temperature: float, *, tangent: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attraction and repulsion parts of dL_i/dq_i for InfoNCE with diagonal positives.

    For L_i = -l_ii + LSE_j l_ij with l_ij = <q_i, k_j>/tau and p = softmax_j(l):

        attract_i = -(1/tau) (1 - p_ii) k_i,   repel_i = (1/tau) sum_{j != i} p_ij k_j,

    so attract_i + repel_i = dL_i/dq_i (= the gradient of B * info_nce(q, k, 1/tau) on row i).
    With ``tangent=True`` q and k are raw vectors u, v compared by cosine (l_ij =
    <u_i/|u_i|, v_j/|v_j|>/tau) and both parts are taken w.r.t. u_i: multiplied by
    (I - q_i q_i^T)/|u_i|, the projection onto the sphere's tangent space. ||repel_i|| is the
    repulsion mass anchor i receives. Computed without autograd (detached inputs).

    Args:
        q: (B, D) queries (raw when ``tangent``, else used as given).
        k: (B, D) keys, k_i the positive of q_i (B >= 2).
        temperature: tau > 0.
        tangent: cosine logits and gradients w.r.t. the unnormalised q (METHODS 1.13).

    Returns:
        (attract (B, D), repel (B, D), p (B, B)), in the loss compute dtype (fp32 for half inputs).

    Example:
        >>> attract, repel, p = info_nce_grad_split(torch.randn(16, 8), torch.randn(16, 8), 0.1)
        >>> repulsion_mass = repel.norm(dim=1)

    Reference: InfoNCE, van den Oord et al. 2018, arXiv 1807.03748; the split as in Wang & Isola
    2020 (alignment vs uniformity), arXiv 2005.10242.
    """
    fn = "info_nce_grad_split"
    check_same_device(fn, q=q, k=k)
    q = check_embeddings(fn, "q", q)
    k = check_embeddings(fn, "k", k, rows=q.shape[0], dim=q.shape[1], like="q")
    temperature = check_temperature(fn, "temperature", temperature)
    tangent = check_flag(fn, "tangent", tangent)
    check_has_negatives(fn, q.shape[0], f"B={q.shape[0]} gives each query only its key")
    dtype = compute_dtype(q, k)
    q, k = q.detach().to(dtype), k.detach().to(dtype)
    if tangent:
        check_nonzero_rows(fn, "q", q)
        check_nonzero_rows(fn, "k", k)
        raw_norm = q.norm(dim=1, keepdim=True)
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    p = torch.softmax(scaled_logits(q, k, 1.0 / temperature), dim=1)
    diagonal = p.diagonal()
    attract = -(1 - diagonal)[:, None] * k / temperature
    off_diagonal = p - torch.diag_embed(diagonal)
    repel = off_diagonal @ k / temperature
    if tangent:
        attract, repel = (_tangent(g, q) / raw_norm for g in (attract, repel))
    return attract, repel, p


def _tangent(grad: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Row-wise (I - u u^T) g: the part of g (B, D) orthogonal to the unit rows u (B, D)."""
    return grad - (grad * unit).sum(dim=1, keepdim=True) * unit
