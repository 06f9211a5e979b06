"""Hard decoys for pocket-ligand contrast (BindCLIP): extra query-side negatives and the anchor hinge."""

from __future__ import annotations

import math

import torch

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_mask,
    check_range,
    check_same_device,
    check_scale,
    check_tensor,
)
from contrastkit.functional import REDUCTIONS, compute_dtype, reduce_anchor_losses
from contrastkit.losses.infonce import info_nce

DECOY_REDUCTIONS = ("mean", "sum")


def clip_loss_extra_negatives(
    q: torch.Tensor,
    k: torch.Tensor,
    k_extra: torch.Tensor | None,
    scale: float | torch.Tensor = 14.0,
    *,
    duplicate_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric CLIP loss whose query side also scores extra negatives (BindCLIP's decoys).

        l = scale * [q k^T | q k_extra^T]                     (B, B + E)
        L = 1/2 CE(q_i -> [k ; k_extra], target k_i) + 1/2 CE(k_j -> q, target q_j)

    The extra negatives act on the query (pocket) side only: each key (molecule) still scores
    the B queries alone. In BindCLIP decoy_i is an edit of molecule i, yet a candidate for every
    pocket, so the shared (E, D) form with the B decoys stacked is exactly its loss; the
    per-query (B, E, D) form is for decoy sets that belong to one query only.

    Args:
        q: (B, D) queries (pockets), used as given (normalise them first).
        k: (B, D) keys (molecules), row i paired with q_i.
        k_extra: (E, D) negatives shared by every query, (B, E, D) per query, or None. An empty
            tensor (E = 0) is the same as None: the loss is then ``clip_loss(q, k, scale)``.
        scale: multiplicative logit scale; a float is fixed (BindCLIP: 14, no gradient), a 0-d
            (or one-element) tensor is used as given, so a learnable one gets its gradient.
        duplicate_mask: (B, B) bool; True at (i, j) marks pair j as a duplicate of pair i (same
            pocket or same molecule). It drops k_j from q_i's candidates and q_i from k_j's; the
            diagonal (the positive itself) is never dropped, so a mask built as
            ``ids[:, None] == ids[None, :]`` may be passed as is. Make it symmetric for duplicates.
        reduction: ``"mean"`` (the library's: each direction averaged over its anchors, then
            the two averaged) or ``"sum"`` (the release's: 1/2 of each direction summed over its
            anchors). An anchor left with no negative by the mask is left out.

    Returns:
        The scalar loss, float32 (float64 for float64 input; half inputs are computed in float32).

    Raises:
        InputError: bad shapes, NaN/inf, empty batch, B < 2, negative scale, bad mask or reduction.
        NoPositivePairsError: ``duplicate_mask`` marks every off-diagonal pair, so no molecule
            has a negative.

    Example:
        >>> pockets, mols, decoys = torch.nn.functional.normalize(torch.randn(3, 8, 32), dim=-1)
        >>> loss = clip_loss_extra_negatives(pockets, mols, decoys)  # the decoys, shared (E = 8)

    Reference: BindCLIP, arXiv 2602.15236 (the DrugCLIP loss, arXiv 2310.06367, plus decoys).
    """
    fn = "clip_loss_extra_negatives"
    check_same_device(fn, q=q, k=k, k_extra=k_extra, scale=scale, duplicate_mask=duplicate_mask)
    q = check_embeddings(fn, "q", q)
    k = check_embeddings(fn, "k", k, rows=q.shape[0], dim=q.shape[1], like="q")
    k_extra = _check_extra(fn, k_extra, q.shape[0], q.shape[1])
    scale = check_scale(fn, "scale", scale)
    check_choice(fn, "reduction", reduction, DECOY_REDUCTIONS)
    batch = q.shape[0]
    if batch < 2:
        raise InputError(
            f"{fn}: each molecule scores the B pockets alone, so it needs B >= 2 pairs to have a "
            f"negative; got a batch of {batch}."
        )
    ignore = ignore_t = None
    if duplicate_mask is not None:
        duplicate_mask = check_mask(fn, "duplicate_mask", duplicate_mask, (batch, batch))
        ignore = duplicate_mask & ~torch.eye(batch, dtype=torch.bool, device=q.device)
        if bool(ignore.sum() == batch * (batch - 1)):
            raise NoPositivePairsError(
                f"{fn}: 'duplicate_mask' marks every off-diagonal pair as a duplicate, so no molecule "
                f"has a negative. Deduplicate the batch (one pair per pocket and molecule) instead."
            )
        ignore_t = ignore.T
    to_keys = info_nce(q, k, scale, extra_negatives=k_extra, ignore_mask=ignore, reduction=reduction)
    to_queries = info_nce(k, q, scale, ignore_mask=ignore_t, reduction=reduction)
    return 0.5 * (to_keys + to_queries)


def _check_extra(fn: str, k_extra: object, batch: int, dim: int) -> torch.Tensor | None:
    """``k_extra`` checked as (E, D) or (B, E, D); None when absent or empty (E = 0)."""
    if k_extra is None:
        return None
    k_extra = check_tensor(fn, "k_extra", k_extra)
    if k_extra.dim() not in (2, 3) or k_extra.shape[-1] != dim:
        raise InputError(
            f"{fn}: argument 'k_extra' must have shape (E, D={dim}) or (B={batch}, E, D={dim}); "
            f"got {tuple(k_extra.shape)}."
        )
    if k_extra.dim() == 3 and k_extra.shape[0] != batch:
        raise InputError(
            f"{fn}: per-query 'k_extra' must have shape (B={batch}, E, D); got {tuple(k_extra.shape)}."
        )
    if k_extra.shape[-2] == 0:
        return None
    shape = "(E, D) or (B, E, D)"
    return check_embeddings(fn, "k_extra", k_extra, shape=shape, ndims=(2, 3), dim=dim)


def anchor_hinge(
    anchor: torch.Tensor,
    hard_negative: torch.Tensor,
    batch: torch.Tensor,
    valid: torch.Tensor,
    margin: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Keep each hard negative at least as close to its anchor as the anchor's batch mates are.

        m_i = stopgrad(anchor_i),   h_i = <m_i, hard_negative_i>,
        a_i = stopgrad( mean_{j != i} <m_i, batch_j> ),
        L   = sum_i valid_i * relu(a_i - h_i + margin)   ("sum"),  that sum / #valid  ("mean")

    Only ``hard_negative`` gets a gradient. BindCLIP anchors each decoy to the molecule it was
    edited from (batch = the molecules themselves), so pushing decoys away from the pockets
    cannot collapse them into a region of the ligand space of their own.

    Args:
        anchor: (B, D) anchors (BindCLIP: the molecules), used as given; detached.
        hard_negative: (B, D) hard negatives, row i made from anchor i (the decoys).
        batch: (B, D) reference rows, row i excluded from a_i (BindCLIP: the molecules); detached.
        valid: (B,) bool, True where hard_negative_i is a true negative (a decoy that is not a
            binder); the other rows are left out.
        margin: m >= 0 added inside the hinge (BindCLIP: 0).
        reduction: ``"mean"`` over the valid rows, ``"sum"``, or ``"none"`` -> (B,) with NaN at
            invalid rows.

    Returns:
        The loss (0-d, or (B,) for ``"none"``), float32 (float64 for float64 input).

    Raises:
        InputError: bad shapes, NaN/inf, B < 2, non-bool ``valid``, bad margin or reduction.
        NoPositivePairsError: no row is valid (never a silent 0).

    Reference: BindCLIP, arXiv 2602.15236.
    """
    fn = "anchor_hinge"
    check_same_device(fn, anchor=anchor, hard_negative=hard_negative, batch=batch, valid=valid)
    anchor = check_embeddings(fn, "anchor", anchor)
    rows, dim = anchor.shape
    hard_negative = check_embeddings(fn, "hard_negative", hard_negative, rows=rows, dim=dim, like="anchor")
    batch = check_embeddings(fn, "batch", batch, rows=rows, dim=dim, like="anchor")
    valid = check_mask(fn, "valid", valid, (rows,))
    margin = check_range(fn, "margin", margin, 0.0, math.inf)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if rows < 2:
        raise InputError(f"{fn}: a_i averages over the other rows, so it needs B >= 2; got B = {rows}.")
    dtype = compute_dtype(anchor, hard_negative, batch)
    m = anchor.detach().to(dtype)
    similarity = m @ batch.detach().to(dtype).T
    others = similarity.sum(1) - similarity.diagonal()
    mean_other = others / (rows - 1)
    hard = (m * hard_negative.to(dtype)).sum(1)
    loss = torch.relu(mean_other - hard + margin)
    if not bool(valid.any()):
        raise NoPositivePairsError(
            f"{fn}: 'valid' marks no row, so the hinge has nothing to average. Pass at least one "
            f"true negative, or skip the term for this batch."
        )
    return reduce_anchor_losses(fn, loss[valid], valid, reduction)
