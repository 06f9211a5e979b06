"""Masked, multi-positive cross-entropy: the plain (materialised) core of every softmax loss.

Given logits l (R, C), a positive mask P and an ignore mask I, anchor i scores its
positives P_i = P[i] & ~I[i] against the candidates A_i = ~I[i]. An anchor is *valid* when it
has at least one positive and at least one negative (a candidate that is not a positive):
anything else has nothing to contrast, so it is left out of the reduction, never counted as a
zero loss.
"""

from __future__ import annotations

import torch

from contrastkit.errors import InputError, NoPositivePairsError, check_choice, check_range
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
        marking the anchors that have a positive and a negative. Invalid rows are never
        evaluated, so they cannot put NaN into the gradient.
    """
    fn = "multi_positive_cross_entropy"
    check_choice(fn, "mode", mode, MULTI_POSITIVE_MODES)
    label_smoothing = check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
    if label_smoothing and mode != "mean":
        raise InputError(f"{fn}: 'label_smoothing' applies to mode='mean' only; got mode={mode!r}.")
    if count_normalize and mode != "lse":
        raise InputError(f"{fn}: 'count_normalize' applies to mode='lse' only; got mode={mode!r}.")
    positive = positive_mask if ignore_mask is None else positive_mask & ~ignore_mask
    negative = ~positive_mask if ignore_mask is None else ~positive_mask & ~ignore_mask
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not bool(valid.all()):
        logits, positive, negative = logits[valid], positive[valid], negative[valid]
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

    lse_neg = torch.logsumexp(logits.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)
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
            f"{fn}: no anchor in this batch has both a positive and a negative, so the loss is "
            f"undefined. Check the labels / masks (a class-balanced sampler gives each class at "
            f"least two samples and several classes per batch) rather than training on a zero loss."
        )
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    full = loss.new_full(valid.shape, float("nan"))
    return full.masked_scatter(valid, loss)
