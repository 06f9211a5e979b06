"""The pairwise sigmoid loss (SigLIP) and its module with a learnable scale and bias."""

from __future__ import annotations

import math

import torch
from torch import nn

from contrastkit.distributed import RING_MODES, agreement, resolve_mode, ring_blocks
from contrastkit.errors import (
    check_embeddings,
    check_labels,
    check_range,
    check_same_device,
    check_scalar,
    check_scale,
)
from contrastkit.functional import (
    choose_tiling,
    compute_dtype,
    group_sums,
    resolve_chunk_size,
    scaled_logits,
    softplus,
    tiled_softplus_sum,
)
from contrastkit.losses.scale import LogitScale, mark_no_weight_decay


def siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor,
    *,
    sample_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    distributed: str | None = None,
) -> torch.Tensor:
    """Sigmoid loss over every pair of the batch.

        l_ij = scale * <x_i, y_j> + bias,  z_ij = +1 for positives, -1 otherwise
        L = -(1/B) sum_ij log sigmoid(z_ij l_ij) = (1/B) [ sum_ij softplus(l_ij) - sum_pos l_ij ]

    Divided by B, not B^2, as in the paper.

    Args:
        x: (B, D) embeddings of one modality, used as given.
        y: (B, D) embeddings of the other, row i paired with x_i.
        scale: multiplicative logit scale s >= 0 (init 10 in the paper).
        bias: scalar logit bias (init -10 in the paper), float or 0-d tensor.
        sample_ids: (B,) integer ids; equal ids are positives (default: the diagonal).
        chunk_size: ``None`` tiles automatically once the B x B logits outgrow
            ``PLAIN_LOGITS_BUDGET_BYTES``; an int >= 1 sums softplus over tiles of that many rows
            (recomputed in backward, O(B) memory); 0 never tiles and is bit-identical to the
            plain formula.
        distributed: under ``torch.distributed``, ``"local"`` (this rank's x against every
            rank's y), ``"ring"`` (the same, with the y blocks passed around the ring of ranks
            one neighbour at a time) or ``"gather"`` (the whole loss on every rank); see
            ``contrastkit.distributed``. None: this process's batch only.

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Reference: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", arXiv 2303.15343.
    """
    fn = "siglip_loss"
    mode = resolve_mode(fn, distributed, RING_MODES)
    with agreement(fn, mode) as agreed:
        check_same_device(fn, x=x, y=y, scale=scale, bias=bias, sample_ids=sample_ids)
        x = check_embeddings(fn, "x", x)
        y = check_embeddings(fn, "y", y, rows=x.shape[0], dim=x.shape[1], like="x")
        scale = check_scale(fn, "scale", scale)
        bias = check_scalar(fn, "bias", bias)
        if sample_ids is not None:
            sample_ids = check_labels(fn, "sample_ids", sample_ids, x.shape[0])
        agreed.batch = x
    layout = agreed.layout
    if mode is None:
        return _sigmoid_sum(fn, x, y, scale, bias, sample_ids, sample_ids, True, chunk_size) / x.shape[0]
    if mode == "gather":
        all_ids = None if sample_ids is None else layout.gather_values(sample_ids, local_first=False)
        total = _sigmoid_sum(
            fn, layout.gather(x), layout.gather(y), scale, bias, all_ids, all_ids, True, chunk_size
        )
        return total / layout.total
    if mode == "local":
        all_ids = None if sample_ids is None else layout.gather_values(sample_ids)
        total = _sigmoid_sum(
            fn, x, layout.gather_local_first(y), scale, bias, sample_ids, all_ids, True, chunk_size
        )
        return layout.share(fn, total, layout.total)
    all_ids = None if sample_ids is None else layout.gather_values(sample_ids, local_first=False)
    # one decision for all W blocks: every block's logits are kept for the backward pass
    chunk = choose_tiling(fn, chunk_size, layout.rows, layout.total, compute_dtype(x, y))
    total = 0.0
    for owner, block in ring_blocks(y, layout):
        block_ids = None if all_ids is None else all_ids[layout.rows_of(owner)]
        own = owner == layout.rank
        total = total + _sigmoid_sum(fn, x, block, scale, bias, sample_ids, block_ids, own, chunk)
    return layout.share(fn, total, layout.total)


def _sigmoid_sum(fn, x, y, scale, bias, x_ids, y_ids, diagonal, chunk_size):
    """sum_ij softplus(l_ij) - sum_{positive ij} l_ij over x (B, D) against y (M, D).

    Positives: equal ids when ids are given, else the diagonal l_ii when ``diagonal`` (y's first
    B rows are x's pairs), else none (another rank's block).
    """
    rows, cols = x.shape[0], y.shape[0]
    dtype = compute_dtype(x, y)
    chunk = choose_tiling(fn, chunk_size, rows, cols, dtype)
    if chunk:
        x, y = x.to(dtype), y.to(dtype)
        if x_ids is not None:
            # per-id sums of x and of y over the ids of both: sum_pos l = s sum_g <X_g, Y_g> + b sum_g n_g m_g
            _, group = torch.unique(torch.cat([x_ids, y_ids]), return_inverse=True)
            x_sums, x_counts, _ = group_sums(x, group[:rows], groups=int(group.max()) + 1)
            y_sums, y_counts, _ = group_sums(y, group[rows:], groups=int(group.max()) + 1)
            positive_sum = scale * (x_sums * y_sums).sum() + (x_counts * y_counts).sum() * bias
        elif diagonal:
            positive_sum = scale * (x * y[:rows]).sum() + rows * bias
        else:
            positive_sum = 0.0
        return tiled_softplus_sum(x, y, scale, bias, chunk_size=chunk) - positive_sum
    logits = scaled_logits(x, y, scale, bias)
    if x_ids is not None:
        positive_sum = torch.where(x_ids[:, None] == y_ids[None, :], logits, 0.0).sum()
    elif diagonal:
        positive_sum = logits.diagonal().sum()
    else:
        positive_sum = 0.0
    return softplus(logits).sum() - positive_sum


class SigLIPLoss(nn.Module):
    """``siglip_loss`` with a learnable scale s = exp(t) and bias b.

    t starts at ln(init_scale) and is clamped in place to [0, ln max_scale] at every forward;
    t and b carry ``no_weight_decay = True``.

    Args:
        init_scale: initial scale (10 as in SigLIP).
        init_bias: initial bias (-10 as in SigLIP): it offsets the B^2 - B negatives so the
            loss starts near its optimum for an untrained model.
        max_scale: largest allowed scale.
        chunk_size: passed to ``siglip_loss`` (None: automatic tiling).
    """

    def __init__(
        self,
        init_scale: float = 10.0,
        init_bias: float = -10.0,
        max_scale: float = 100.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if chunk_size is not None:
            resolve_chunk_size("SigLIPLoss", chunk_size, 1, 1, torch.float32)
        self.chunk_size = chunk_size
        max_scale = check_range("SigLIPLoss", "max_scale", max_scale, 1.0, math.inf, high_open=True)
        init_scale = check_range("SigLIPLoss", "init_scale", init_scale, 1.0, max_scale)
        self.logit_scale = LogitScale(init_scale, max_scale)
        bias = check_scalar("SigLIPLoss", "init_bias", init_bias)
        self.bias = mark_no_weight_decay(nn.Parameter(torch.tensor(float(bias))))

    @property
    def scale(self) -> float:
        """The current multiplicative scale s, for logging."""
        return self.logit_scale.value

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, *, sample_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x, y: (B, D) paired embeddings -> scalar loss."""
        return siglip_loss(
            x, y, self.logit_scale(), self.bias, sample_ids=sample_ids, chunk_size=self.chunk_size
        )
