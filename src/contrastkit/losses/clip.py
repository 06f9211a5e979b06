"""The symmetric CLIP loss (OpenCLIP convention) and its module with a learnable scale."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.distributed import Layout, agreement, resolve_mode
from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_labels,
    check_mask,
    check_range,
    check_same_device,
    check_scalar,
    check_scale,
)
from contrastkit.functional import (
    choose_tiling,
    compute_dtype,
    group_sums,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
    resolve_chunk_size,
    scaled_logits,
    tiled_logsumexp,
)
from contrastkit.losses.scale import LogitScale


def clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    sample_ids: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    distributed: str | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over paired embeddings, as open_clip's ``ClipLoss``.

        l = scale * x y^T (+ bias)
        L = 1/2 [ CE_eps(l, arange(B)) + CE_eps(l^T, arange(B)) ]

    with PyTorch's label smoothing (target (1 - eps) delta_ij + eps / B).

    Args:
        x: (B, D) embeddings of one modality (e.g. images), used as given.
        y: (B, D) embeddings of the other modality, row i paired with x_i.
        scale: multiplicative logit scale s >= 0 (s = exp(t), temperature 1/s).
        bias: optional scalar added to every logit. It cancels in the softmax, so it gets a
            zero gradient; it is accepted for API symmetry with SigLIP and warned about.
        label_smoothing: eps in [0, 1].
        sample_ids: (B,) integer ids; rows with equal ids are positives of each other in both
            directions (several captions of one image in a batch), with a uniform target over
            the positives.
        ignore_mask: (B, B) bool; True at (i, j) drops y_j from x_i's candidates and x_i from
            y_j's (known duplicates, false negatives). It never removes a positive's own pair
            from the target, and smoothing spreads over the candidates that remain.
        chunk_size: ``None`` picks the plain path while the B x B logits fit
            ``PLAIN_LOGITS_BUDGET_BYTES`` and the tiled exact engine beyond; an int >= 1 tiles
            with that many rows (one matmul per tile gives both the row and the column
            log-sum-exp, O(B) memory, recomputed in backward); 0 never tiles. ``ignore_mask``
            needs the plain path.
        distributed: under ``torch.distributed``, ``"local"`` (this rank's rows against every
            rank's columns; mean over ranks = the loss) or ``"gather"`` (the whole loss on every
            rank); see ``contrastkit.distributed``. None: this process's batch only.

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Example:
        >>> x = F.normalize(torch.randn(8, 64), dim=1); y = F.normalize(torch.randn(8, 64), dim=1)
        >>> loss = clip_loss(x, y, scale=1 / 0.07)

    Reference: Radford et al. 2021, arXiv 2103.00020; open_clip ``ClipLoss``.
    """
    fn = "clip_loss"
    mode = resolve_mode(fn, distributed)
    with agreement(fn, mode) as agreed:
        check_same_device(
            fn, x=x, y=y, scale=scale, bias=bias, sample_ids=sample_ids, ignore_mask=ignore_mask
        )
        x = check_embeddings(fn, "x", x)
        y = check_embeddings(fn, "y", y, rows=x.shape[0], dim=x.shape[1], like="x")
        scale = check_scale(fn, "scale", scale)
        label_smoothing = check_range(fn, "label_smoothing", label_smoothing, 0.0, 1.0)
        if bias is not None:
            bias = check_scalar(fn, "bias", bias)
            if isinstance(bias, torch.Tensor) or bias != 0:
                warnings.warn(
                    "clip_loss: a scalar bias cancels in the softmax and receives zero gradient; "
                    "it is only meaningful for siglip_loss.",
                    UserWarning,
                    stacklevel=2,
                )
        if sample_ids is not None:
            sample_ids = check_labels(fn, "sample_ids", sample_ids, x.shape[0])
        if mode is not None and ignore_mask is not None:
            raise InputError(
                f"{fn}: 'ignore_mask' is a mask over one process's batch; it has no distributed form."
            )
        agreed.batch = x
    layout = agreed.layout
    if mode == "local":
        return _local_clip_loss(fn, layout, x, y, scale, bias, label_smoothing, sample_ids, chunk_size)
    if mode == "gather":
        x, y = layout.gather(x), layout.gather(y)
        sample_ids = None if sample_ids is None else layout.gather_values(sample_ids, local_first=False)
    return _global_clip_loss(fn, x, y, scale, bias, label_smoothing, sample_ids, ignore_mask, chunk_size)


def _global_clip_loss(fn, x, y, scale, bias, label_smoothing, sample_ids, ignore_mask, chunk_size):
    """``clip_loss`` over the whole (validated) batch on this process."""
    batch = x.shape[0]
    check_has_negatives(fn, batch, f"the batch holds {batch} pair")
    unsupported = None if ignore_mask is None else "a (B, B) 'ignore_mask'"
    chunk = choose_tiling(fn, chunk_size, batch, batch, compute_dtype(x, y), unsupported)
    if chunk:
        return _tiled_clip_loss(fn, x, y, scale, bias, label_smoothing, sample_ids, chunk)
    logits = scaled_logits(x, y, scale, bias)
    if sample_ids is None and ignore_mask is None:
        targets = torch.arange(batch, device=x.device)
        return 0.5 * (
            F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.T, targets, label_smoothing=label_smoothing)
        )
    if sample_ids is None:
        positive = torch.eye(batch, dtype=torch.bool, device=x.device)
    else:
        positive = sample_ids[:, None] == sample_ids[None, :]
    ignore_t = None
    if ignore_mask is not None:
        ignore_mask = check_mask(fn, "ignore_mask", ignore_mask, (batch, batch)) & ~positive
        ignore_t = ignore_mask.T
    rows = multi_positive_cross_entropy(logits, positive, ignore_mask, label_smoothing=label_smoothing)
    cols = multi_positive_cross_entropy(logits.T, positive.T, ignore_t, label_smoothing=label_smoothing)
    return 0.5 * (reduce_anchor_losses(fn, *rows) + reduce_anchor_losses(fn, *cols))


def _local_clip_loss(fn, layout, x, y, scale, bias, label_smoothing, sample_ids, chunk_size):
    """This rank's share of ``clip_loss`` from one B_r x B block, its images against every text.

    The block gives the row LSEs of its images and partial column LSEs of every text; a
    log-sum-exp all-reduce (O(B)) completes the columns, so each rank does 1/W of the work (not
    two B_r x B blocks, one per direction).
    """
    check_has_negatives(fn, layout.total, f"the global batch holds {layout.total} pair")
    all_y = layout.gather(y)
    all_x = layout.gather(x) if sample_ids is not None or label_smoothing else None
    all_ids = None if sample_ids is None else layout.gather_values(sample_ids, local_first=False)
    dtype = compute_dtype(x, y)
    chunk = choose_tiling(fn, chunk_size, layout.rows, layout.total, dtype)
    if chunk:
        r, c = tiled_logsumexp(x.to(dtype), all_y.to(dtype), scale, bias, chunk_size=chunk, cols=True)
    else:
        logits = scaled_logits(x, all_y, scale, bias)
        r, c = torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)
    c = layout.logsumexp_over_ranks(c)
    return _clip_from_lse(fn, layout, r, c, x, all_x, all_y, scale, bias, label_smoothing, all_ids)


def _tiled_clip_loss(fn, x, y, scale, bias, label_smoothing, sample_ids, chunk):
    """``clip_loss`` from tiled row and column LSEs; the targets are O(B D) (group sums)."""
    dtype = compute_dtype(x, y)
    x, y = x.to(dtype), y.to(dtype)
    r, c = tiled_logsumexp(x, y, scale, bias, chunk_size=chunk, cols=True)
    return _clip_from_lse(
        fn, Layout.single(x.shape[0]), r, c, x, x, y, scale, bias, label_smoothing, sample_ids
    )


def _clip_from_lse(fn, layout, r, c, x, all_x, all_y, scale, bias, label_smoothing, all_ids):
    """The CLIP loss (this rank's share) from the log-sum-exps, with O(B D) targets.

    r: (B_r,) row LSEs of this rank's images x (B_r, D); c: (B,) column LSEs of every text, in
    rank order; all_x (or None without ids and smoothing), all_y: (B, D) in rank order; all_ids:
    (B,) or None. With ids, a row's target is the mean logit of its positives (group sums).
    """
    own = layout.rows_of(layout.rank)
    y, c = all_y[own].to(r.dtype), c[own]
    all_y = all_y.to(r.dtype)
    x = x.to(r.dtype)
    offset = 0.0 if bias is None else bias
    valid = None
    if all_ids is None:
        row_target = col_target = scale * (x * y).sum(1) + offset
    else:
        y_sums, counts, group = group_sums(all_y, all_ids)
        x_sums, _, _ = group_sums(all_x.to(r.dtype), all_ids)
        mine = group[own]
        n_positive = counts[mine]
        row_target = scale * (x * y_sums[mine]).sum(1) / n_positive + offset
        col_target = scale * (y * x_sums[mine]).sum(1) / n_positive + offset
        valid = n_positive < layout.total
    if label_smoothing:
        eps = label_smoothing
        row_target = (1 - eps) * row_target + eps * (scale * (x @ all_y.mean(0)) + offset)
        col_target = (1 - eps) * col_target + eps * (scale * (y @ all_x.to(r.dtype).mean(0)) + offset)
    rows, cols = r - row_target, c - col_target
    if valid is None:
        return 0.5 * (layout.share(fn, rows.sum(), layout.total) + layout.share(fn, cols.sum(), layout.total))
    return 0.5 * (layout.reduce(fn, rows[valid], valid) + layout.reduce(fn, cols[valid], valid))


class CLIPLoss(nn.Module):
    """``clip_loss`` with a learnable, clamped logit scale s = exp(t).

    t starts at ln(1/init_temperature) and is clamped in place to [0, ln max_scale] at every
    forward; it carries ``no_weight_decay = True`` for optimiser builders.

    Args:
        init_temperature: initial temperature (0.07 as in CLIP).
        max_scale: largest allowed scale (100 as in CLIP).
        learn_scale: False keeps the scale fixed at 1/init_temperature.
        label_smoothing: eps passed to ``clip_loss``.
        chunk_size: passed to ``clip_loss`` (None: automatic tiling).

    Example:
        >>> criterion = CLIPLoss()
        >>> loss = criterion(image_emb, text_emb)          # doctest: +SKIP
        >>> criterion.scale                                 # current s, a float  # doctest: +SKIP
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
        learn_scale: bool = True,
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if chunk_size is not None:
            resolve_chunk_size("CLIPLoss", chunk_size, 1, 1, torch.float32)
        self.chunk_size = chunk_size
        max_scale = check_range("CLIPLoss", "max_scale", max_scale, 1.0, math.inf, high_open=True)
        init_temperature = check_range("CLIPLoss", "init_temperature", init_temperature, 1.0 / max_scale, 1.0)
        learn_scale = check_flag("CLIPLoss", "learn_scale", learn_scale)
        self.logit_scale = LogitScale(1.0 / init_temperature, max_scale, learnable=learn_scale)
        self.label_smoothing = check_range("CLIPLoss", "label_smoothing", label_smoothing, 0.0, 1.0)

    @property
    def scale(self) -> float:
        """The current multiplicative scale s, for logging."""
        return self.logit_scale.value

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        sample_ids: torch.Tensor | None = None,
        ignore_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, y: (B, D) paired embeddings -> scalar loss (``sample_ids``, ``ignore_mask``: see clip_loss)."""
        return clip_loss(
            x,
            y,
            self.logit_scale(),
            label_smoothing=self.label_smoothing,
            sample_ids=sample_ids,
            ignore_mask=ignore_mask,
            chunk_size=self.chunk_size,
        )
