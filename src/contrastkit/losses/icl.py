"""PSQE's ICL loss: NT-Xent over the two views on raw (unnormalised) features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    check_choice,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_nonzero_rows,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import REDUCTIONS
from contrastkit.losses.supervised import supcon


def icl_loss(
    z: torch.Tensor,
    z_prime: torch.Tensor,
    temperature: float = 1.0,
    normalize: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """PSQE's intra- and cross-view contrastive loss (ICL) on paired entity embeddings.

    With l(a, b) = <a, b> / tau,

        L_a = -(1/N) sum_i log[ e^{l(z_i, z'_i)} / (sum_j e^{l(z_i, z'_j)} + sum_{j != i} e^{l(z_i, z_j)}) ]

    L_b the same with z and z' swapped, and L = 1/2 (L_a + L_b). This is exactly NT-Xent over
    the 2N stacked views [z; z'] (each anchor scored against every other view, its partner the
    positive), i.e. ``nt_xent`` without its normalisation: the loss is computed by ``supcon``
    with one label per entity (fp32 log-sum-exps, tiled for large N). PSQE uses it on raw
    features with tau = 1, hence the defaults.

    Args:
        z, z_prime: (N, D) embeddings of the same N entities in the two views (N >= 2), used as
            given unless ``normalize``.
        temperature: tau > 0.
        normalize: L2-normalise the rows first (then it equals ``nt_xent(z, z_prime, tau)``).
        reduction: ``"mean"`` (L), ``"sum"`` (2N L) or ``"none"`` -> (2N,): the N per-entity
            terms of L_a, then the N of L_b.

    Example:
        >>> z, z_prime = torch.randn(64, 32), torch.randn(64, 32)
        >>> loss = icl_loss(z, z_prime)

    Reference: PSQE, arXiv 2602.22903 (loss form of its released code); NT-Xent, arXiv 2002.05709.
    """
    fn = "icl_loss"
    check_same_device(fn, z=z, z_prime=z_prime)
    z = check_embeddings(fn, "z", z)
    z_prime = check_embeddings(fn, "z_prime", z_prime, rows=z.shape[0], dim=z.shape[1], like="z")
    temperature = check_temperature(fn, "temperature", temperature)
    normalize = check_flag(fn, "normalize", normalize)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    n = z.shape[0]
    check_has_negatives(fn, 2 * n - 1, f"N={n} gives each view only its partner")
    if normalize:
        check_nonzero_rows(fn, "z", z)
        check_nonzero_rows(fn, "z_prime", z_prime)
        z, z_prime = F.normalize(z, dim=1), F.normalize(z_prime, dim=1)
    entity = torch.arange(n, device=z.device)
    return supcon(torch.stack([z, z_prime], dim=1), entity, temperature, reduction=reduction)
