"""Self-supervised two-view losses: NT-Xent (SimCLR) and DCL / DCLW."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.distributed import Layout, agreement, resolve_mode
from contrastkit.errors import (
    InputError,
    check_flag,
    check_has_negatives,
    check_temperature,
)
from contrastkit.functional import choose_tiling, tiled_logsumexp
from contrastkit.losses.pairs import unit_pair


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    *,
    chunk_size: int | None = None,
    distributed: str | None = None,
) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2N views, with cosine similarity.

    Z = [z1; z2] normalised, l_ab = <Z_a, Z_b> / temperature, the positive of a is a +- N:

        L = 1/(2N) sum_a [ LSE_{b != a} l_ab - l_{a, pos(a)} ]

    Self-similarity is excluded from the denominator. Identical views give log(2N - 1) at
    any temperature when all embeddings are equal.

    Args:
        z1, z2: (N, D) the two augmented views, paired by row (normalised inside).
        temperature: tau > 0. The default 0.5 is lightly's; SimCLR's best with large batches
            is 0.1.
        chunk_size: ``None`` tiles automatically once the (2N, 2N) logits outgrow
            ``PLAIN_LOGITS_BUDGET_BYTES``; an int >= 1 tiles with that many rows; 0 never tiles.
        distributed: under ``torch.distributed``, ``"local"`` (this rank's 2 N_r views against
            every rank's views) or ``"gather"`` (the whole loss on every rank); see
            ``contrastkit.distributed``. None: this process's batch only.

    Reference: Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", arXiv 2002.05709.
    """
    fn = "nt_xent"
    mode = resolve_mode(fn, distributed)
    with agreement(fn, mode) as agreed:
        z1, z2 = unit_pair(fn, z1, z2, ("z1", "z2"))
        temperature = check_temperature(fn, "temperature", temperature)
        agreed.batch = z1
    layout = agreed.layout or Layout.single(z1.shape[0])
    n = layout.total
    check_has_negatives(fn, 2 * n - 1, f"N={n} gives each view only its partner")
    if mode == "gather":
        z1, z2 = layout.gather(z1), layout.gather(z2)
    if mode != "local":
        return _nt_xent_sum(fn, z1, z2, None, temperature, chunk_size) / (2 * n)
    others = torch.cat([layout.gather_others(z1), layout.gather_others(z2)])
    return layout.share(fn, _nt_xent_sum(fn, z1, z2, others, temperature, chunk_size), 2 * n)


def _nt_xent_sum(fn, z1, z2, others, temperature, chunk_size):
    """Sum of the NT-Xent losses of the 2n anchors [z1; z2] (n, D each) against themselves and
    ``others`` (the other ranks' views, or None): self excluded, positive at +- n."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    candidates = z if others is None else torch.cat([z, others])
    chunk = choose_tiling(fn, chunk_size, 2 * n, candidates.shape[0], z.dtype)
    if chunk:
        lse, _ = tiled_logsumexp(z, candidates, 1.0 / temperature, chunk_size=chunk, skip_diagonal=True)
        return (lse - ((z1 * z2).sum(1) / temperature).repeat(2)).sum()
    logits = (z @ candidates.T) / temperature
    self_pair = torch.eye(2 * n, candidates.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, targets, reduction="sum")


def dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    *,
    weighted: bool = False,
    sigma: float = 0.5,
    detach_weight: bool = False,
) -> torch.Tensor:
    """Decoupled contrastive loss (DCL) and its weighted form DCLW, with cosine similarity.

    The positive pair is removed from the denominator. For anchor z1_i:

        L1_i = -w_i <z1_i, z2_i>/tau + LSE( {<z1_i, z1_j>/tau}_{j != i} u {<z1_i, z2_j>/tau}_{j != i} )

    symmetrically for z2_i, and L = 1/2 (mean_i L1_i + mean_i L2_i). DCL has w_i = 1; DCLW has
    w_i = 2 - N softmax_i(<z1_i, z2_i> / sigma), the softmax over the batch. L can be negative.

    Args:
        z1, z2: (N, D) the two views, paired by row (normalised inside), N >= 2.
        temperature: tau > 0.
        weighted: use the von Mises-Fisher weights of DCLW.
        sigma: DCLW weight temperature (0.5 in the paper).
        detach_weight: stop the gradient through w (lightly does; the paper's formula does not).

    Reference: Yeh et al. 2022, "Decoupled Contrastive Learning", arXiv 2110.06848.
    """
    fn = "dcl"
    z1, z2 = unit_pair(fn, z1, z2, ("z1", "z2"))
    temperature = check_temperature(fn, "temperature", temperature)
    sigma = check_temperature(fn, "sigma", sigma)
    weighted = check_flag(fn, "weighted", weighted)
    detach_weight = check_flag(fn, "detach_weight", detach_weight)
    n = z1.shape[0]
    if n < 2:
        raise InputError(f"{fn}: needs at least 2 pairs so that each anchor has a negative; got N={n}.")
    positive_cos = (z1 * z2).sum(dim=1)
    weight = 1.0
    if weighted:
        weight = 2 - n * torch.softmax(positive_cos / sigma, dim=0)
        if detach_weight:
            weight = weight.detach()
    self_pair = torch.eye(n, dtype=torch.bool, device=z1.device)

    def one_side(anchor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        same_view = (anchor @ anchor.T / temperature).masked_fill(self_pair, float("-inf"))
        cross_view = (anchor @ other.T / temperature).masked_fill(self_pair, float("-inf"))
        negatives = torch.logsumexp(torch.cat([same_view, cross_view], dim=1), dim=1)
        return (negatives - weight * positive_cos / temperature).mean()

    return 0.5 * (one_side(z1, z2) + one_side(z2, z1))
