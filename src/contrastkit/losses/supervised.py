"""Supervised contrastive loss (SupCon, L_out form)."""

from __future__ import annotations

import torch

from contrastkit.distributed import Layout, agreement, resolve_mode
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
    distributed: str | None = None,
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
        distributed: under ``torch.distributed``, ``"local"`` (this rank's anchors against every
            rank's views) or ``"gather"`` (the whole loss on every rank); labels only. With
            ``"local"``, ``"mean"`` / ``"sum"`` return this rank's share (mean over ranks = the
            loss) and ``"none"`` this rank's anchors.

    Reference: Khosla et al. 2020, "Supervised Contrastive Learning", arXiv 2004.11362.
    """
    fn = "supcon"
    mode = resolve_mode(fn, distributed)
    with agreement(fn, mode) as agreed:
        check_same_device(fn, z=z, labels=labels, positive_mask=positive_mask, ignore_mask=ignore_mask)
        z = check_embeddings(fn, "z", z, shape="(N, D) or (N, V, D)", ndims=(2, 3))
        temperature = check_temperature(fn, "temperature", temperature)
        base = temperature if base_temperature is None else base_temperature
        base = check_temperature(fn, "base_temperature", base)
        n = z.shape[0]
        if (labels is None) == (positive_mask is None):
            raise InputError(f"{fn}: pass exactly one of 'labels' (N,) and 'positive_mask' (N, N).")
        if mode is not None and (labels is None or ignore_mask is not None):
            raise InputError(
                f"{fn}: 'positive_mask' and 'ignore_mask' are masks over one process's batch; they have "
                f"no distributed form. Pass labels."
            )
        if labels is not None:
            labels = check_labels(fn, "labels", labels, n)
        else:
            positive_mask = check_mask(fn, "positive_mask", positive_mask, (n, n))
        if ignore_mask is not None:
            ignore_mask = check_mask(fn, "ignore_mask", ignore_mask, (n, n))
        agreed.batch = z
    layout = agreed.layout or Layout.single(n)
    if mode == "gather":
        z, labels = layout.gather(z), layout.gather_values(labels, local_first=False)
        layout = Layout.single(z.shape[0])
    stacked, views = stack_views(z)
    if positive_mask is None and ignore_mask is None:
        view_layout = layout.per_row(views)
        candidates = view_layout.gather_local_first(stacked)
        candidate_labels = view_layout.gather_values(labels.repeat(views))
        loss, valid = _anchor_supcon(
            fn, stacked.shape[0], candidates, candidate_labels, temperature, chunk_size
        )
        return layout.reduce(fn, (temperature / base) * loss, valid, reduction)
    # masks need the plain path; an explicit tile size with them is an error that says so
    choose_tiling(fn, chunk_size, views * n, views * n, compute_dtype(z), "positive_mask or ignore_mask")
    if labels is not None:
        same_class = labels[:, None] == labels[None, :]
    else:
        same_class = positive_mask | torch.eye(n, dtype=torch.bool, device=z.device)
    self_pair = torch.eye(views * n, dtype=torch.bool, device=z.device)
    ignore = self_pair if ignore_mask is None else self_pair | ignore_mask.repeat(views, views)
    logits = scaled_logits(stacked, stacked, 1.0 / temperature)
    loss, valid = multi_positive_cross_entropy(logits, same_class.repeat(views, views), ignore)
    return reduce_anchor_losses(fn, (temperature / base) * loss, valid, reduction)


def _anchor_supcon(fn, anchors, z, labels, temperature, chunk_size):
    """Per-anchor SupCon of the first ``anchors`` rows of z (M, D) against all of z, self left out.

    labels: (M,). Plain or tiled as ``chunk_size``. Returns (loss of the valid anchors, valid
    (anchors,)); an anchor is valid with a positive and a negative.
    """
    chunk = choose_tiling(fn, chunk_size, anchors, z.shape[0], compute_dtype(z))
    if chunk:
        return _tiled_supcon(z, labels, anchors, temperature, chunk)
    positive = labels[:anchors, None] == labels[None, :]
    self_pair = torch.eye(anchors, z.shape[0], dtype=torch.bool, device=z.device)
    logits = scaled_logits(z[:anchors], z, 1.0 / temperature)
    return multi_positive_cross_entropy(logits, positive, self_pair)


def _tiled_supcon(
    z: torch.Tensor, labels: torch.Tensor, anchors: int, temperature: float, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon's per-anchor loss from tiled LSEs (self excluded) and per-class sums.

    For anchor a of class c with S_c the sum of class c's rows and n_c its size:
        sum_{p in P(a)} l_ap = (<z_a, S_c> - <z_a, z_a>) / tau,  |P(a)| = n_c - 1.
    z: (M, D) stacked views, labels: (M,), the anchors its first rows. Returns (loss of the valid
    anchors, valid (anchors,)).
    """
    z = z.to(compute_dtype(z))
    a = z[:anchors]
    lse, _ = tiled_logsumexp(a, z, 1.0 / temperature, chunk_size=chunk, skip_diagonal=True)
    sums, counts, group = group_sums(z, labels)
    mine = group[:anchors]
    n_positive = counts[mine] - 1
    valid = (n_positive > 0) & (counts[mine] < z.shape[0])
    positive_mean = ((a * sums[mine]).sum(1) - (a * a).sum(1)) / (temperature * n_positive.clamp(min=1))
    return (lse - positive_mean)[valid], valid
