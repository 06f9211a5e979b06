"""Supervised contrastive loss (SupCon, L_out form)."""

from __future__ import annotations

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_labels,
    check_mask,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import (
    choose_tiling,
    compute_dtype,
    group_sums,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
    scaled_logits,
    stack_views,
    tiled_logsumexp,
)


def supcon(
    z: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 0.1,
    *,
    base_temperature: float | None = None,
    positive_mask: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """SupCon, L_out form, over one or several views per sample.

    The V views are stacked view-major into n = V*N anchors, l_aj = <z_a, z_j>/tau, and

        L_a = -(tau / tau_b) (1/|P(a)|) sum_{p in P(a)} [ l_ap - LSE_{j != a} l_aj ]

    with P(a) the other anchors of a's class (other views of a's own sample included) and
    tau_b = base_temperature. Anchors with no positive are left out of the mean; if no anchor
    has one, ``NoPositivePairsError`` is raised (never a silent 0).

    Args:
        z: (N, D) or (N, V, D) embeddings, used as given (normalise them first).
        labels: (N,) integer class ids, or None when ``positive_mask`` is given.
        temperature: tau > 0.
        base_temperature: tau_b > 0; None means tau_b = tau (no rescaling).
        positive_mask: (N, N) bool over samples, instead of labels (e.g. tracklets, subjects);
            other views of the same sample are always positives.
        ignore_mask: (N, N) bool over samples; True drops sample j's views from i's candidates.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` -> (V*N,) view-major, NaN where an
            anchor has no positive.
        chunk_size: ``None`` tiles automatically once the (V N, V N) logits outgrow
            ``PLAIN_LOGITS_BUDGET_BYTES``; an int >= 1 tiles with that many rows; 0 never tiles.
            The tiled path takes ``labels`` (positive terms from per-class sums, O(N D)); masks
            need the plain path.

    Reference: Khosla et al. 2020, "Supervised Contrastive Learning", arXiv 2004.11362.
    """
    fn = "supcon"
    check_same_device(fn, z=z, labels=labels, positive_mask=positive_mask, ignore_mask=ignore_mask)
    z = check_embeddings(fn, "z", z, shape="(N, D) or (N, V, D)", ndims=(2, 3))
    temperature = check_temperature(fn, "temperature", temperature)
    base = temperature if base_temperature is None else base_temperature
    base = check_temperature(fn, "base_temperature", base)
    n = z.shape[0]
    if (labels is None) == (positive_mask is None):
        raise InputError(f"{fn}: pass exactly one of 'labels' (N,) and 'positive_mask' (N, N).")
    if labels is not None:
        labels = check_labels(fn, "labels", labels, n)
        same_class = labels[:, None] == labels[None, :]
    else:
        same_class = check_mask(fn, "positive_mask", positive_mask, (n, n))
        same_class = same_class | torch.eye(n, dtype=torch.bool, device=z.device)
    if ignore_mask is not None:
        ignore_mask = check_mask(fn, "ignore_mask", ignore_mask, (n, n))

    stacked, views = stack_views(z)
    masked = positive_mask is not None or ignore_mask is not None
    unsupported = "positive_mask or ignore_mask" if masked else None
    chunk = choose_tiling(fn, chunk_size, views * n, views * n, compute_dtype(z), unsupported)
    if chunk:
        loss, valid = _tiled_supcon(stacked, labels.repeat(views), temperature, chunk)
        return reduce_anchor_losses(fn, (temperature / base) * loss, valid, reduction)
    self_pair = torch.eye(views * n, dtype=torch.bool, device=z.device)
    ignore = self_pair if ignore_mask is None else self_pair | ignore_mask.repeat(views, views)
    logits = scaled_logits(stacked, stacked, 1.0 / temperature)
    loss, valid = multi_positive_cross_entropy(logits, same_class.repeat(views, views), ignore)
    return reduce_anchor_losses(fn, (temperature / base) * loss, valid, reduction)


def _tiled_supcon(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon's per-anchor loss from tiled LSEs (self excluded) and per-class sums.

    For anchor a of class c with S_c the sum of class c's rows and n_c its size:
        sum_{p in P(a)} l_ap = (<z_a, S_c> - <z_a, z_a>) / tau,  |P(a)| = n_c - 1.
    z: (n, D) stacked views, labels: (n,). Returns (loss of the valid anchors, valid (n,)).
    """
    z = z.to(compute_dtype(z))
    lse, _ = tiled_logsumexp(z, z, 1.0 / temperature, chunk_size=chunk, skip_diagonal=True)
    sums, counts, group = group_sums(z, labels)
    n_positive = counts[group] - 1
    valid = (n_positive > 0) & (counts[group] < z.shape[0])
    positive_mean = ((z * sums[group]).sum(1) - (z * z).sum(1)) / (temperature * n_positive.clamp(min=1))
    return (lse - positive_mean)[valid], valid
