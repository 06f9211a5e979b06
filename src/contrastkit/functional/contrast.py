"""Masked, multi-positive cross-entropy: the plain (materialised) core of every softmax loss.

Given logits l (R, C), a positive mask P and an ignore mask I, anchor i scores its
positives P_i = P[i] & ~I[i] against the candidates A_i = ~I[i]. Anchors with no positive are
*invalid*: they are left out of the reduction, never counted as a zero loss.
"""

from __future__ import annotations

import torch

from contrastkit.errors import NoPositivePairsError, check_choice
from contrastkit.functional.numerics import softplus

MULTI_POSITIVE_MODES = ("mean", "lse", "exclusive")
REDUCTIONS = ("mean", "sum", "none")


def multi_positive_cross_entropy(
    logits: torch.Tensor,
    positive_mask: torch.Tensor,
    ignore_mask: torch.Tensor | None = None,
    *,
    mode: str = "mean",
    label_smoothing: float = 0.0,
    count_normalize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor loss of a softmax over candidates with several positives.

    Args:
        logits: (R, C) float32/float64 logits l_ij.
        positive_mask: (R, C) bool, P[i, j] = column j is a positive of anchor i.
        ignore_mask: (R, C) bool, I[i, j] = drop column j from anchor i's candidates
            (self-similarity, duplicates, false negatives). An ignored column is never a positive.
        mode: how several positives combine, with LSE taken over the candidates A_i:
            ``"mean"``  L_i = LSE_A l_i - sum_j w_ij l_ij, w = (1-eps) P_i/|P_i| + eps/|A_i| on A_i
                        (cross-entropy with a uniform soft target; SupCon L_out).
            ``"lse"``   L_i = LSE_A l_i - LSE_P l_i (+ log|P_i| with ``count_normalize``; L_in).
            ``"exclusive"``  L_i = (1/|P_i|) sum_p [LSE over {p} and A_i minus P_i  -  l_ip].
        label_smoothing: eps in [0, 1], only for ``mode="mean"``; with one positive per row and
            nothing ignored this equals ``F.cross_entropy(..., label_smoothing=eps)``.
        count_normalize: add log|P_i| in ``"lse"`` mode (MoBind's count normalisation).

    Returns:
        (loss, valid): loss (V,) for the V valid anchors, in row order, and valid (R,) bool
        marking the anchors that have at least one positive. Rows without a positive are never
        evaluated, so they cannot put NaN into the gradient.
    """
    check_choice("multi_positive_cross_entropy", "mode", mode, MULTI_POSITIVE_MODES)
    positive = positive_mask if ignore_mask is None else positive_mask & ~ignore_mask
    valid = positive.any(dim=1)
    if not bool(valid.all()):
        logits, positive = logits[valid], positive[valid]
        ignore_mask = None if ignore_mask is None else ignore_mask[valid]
    n_pos = positive.sum(dim=1).to(logits.dtype)
    if mode != "exclusive":
        candidates = logits if ignore_mask is None else logits.masked_fill(ignore_mask, float("-inf"))
        lse_all = torch.logsumexp(candidates, dim=1)

    if mode == "mean":
        target = torch.where(positive, logits, torch.zeros((), dtype=logits.dtype)).sum(1) / n_pos
        if label_smoothing:
            kept = logits if ignore_mask is None else logits.masked_fill(ignore_mask, 0.0)
            n_kept = logits.shape[1] if ignore_mask is None else (~ignore_mask).sum(1).to(logits.dtype)
            target = (1 - label_smoothing) * target + label_smoothing * kept.sum(1) / n_kept
        return lse_all - target, valid

    if mode == "lse":
        lse_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
        loss = lse_all - lse_pos
        return (loss + torch.log(n_pos) if count_normalize else loss), valid

    negative = ~positive if ignore_mask is None else ~positive & ~ignore_mask
    has_negative = negative.any(dim=1, keepdim=True)
    # Rows without any negative get a dummy finite row so the LSE backward stays NaN-free.
    neg_logits = torch.where(has_negative, logits.masked_fill(~negative, float("-inf")), 0.0)
    lse_neg = torch.logsumexp(neg_logits, dim=1, keepdim=True)
    lse_neg = torch.where(has_negative, lse_neg, float("-inf"))
    per_pair = softplus(lse_neg - logits)  # = LSE({l_ip} u negatives) - l_ip
    loss = torch.where(positive, per_pair, torch.zeros((), dtype=logits.dtype)).sum(1) / n_pos
    return loss, valid


def reduce_anchor_losses(
    fn: str, loss: torch.Tensor, valid: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Reduce per-anchor losses of the valid anchors; raise if no anchor is valid.

    ``reduction="none"`` returns one value per anchor (R,) with NaN at anchors that had no
    positive, so that an accidental sum is loud rather than silently low.
    """
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if loss.numel() == 0:
        raise NoPositivePairsError(
            f"{fn}: no anchor in this batch has a positive, so the loss is undefined. "
            f"Check the labels / positive_mask (e.g. use a class-balanced sampler so each class "
            f"appears at least twice) rather than training on a zero loss."
        )
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    full = loss.new_full(valid.shape, float("nan"))
    return full.masked_scatter(valid, loss)
