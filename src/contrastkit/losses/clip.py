"""The symmetric CLIP loss (OpenCLIP convention) and its module with a learnable scale."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import (
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
from contrastkit.functional import multi_positive_cross_entropy, reduce_anchor_losses, scaled_logits
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

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Example:
        >>> x = F.normalize(torch.randn(8, 64), dim=1); y = F.normalize(torch.randn(8, 64), dim=1)
        >>> loss = clip_loss(x, y, scale=1 / 0.07)

    Reference: Radford et al. 2021, arXiv 2103.00020; open_clip ``ClipLoss``.
    """
    fn = "clip_loss"
    check_same_device(fn, x=x, y=y, scale=scale, bias=bias, sample_ids=sample_ids, ignore_mask=ignore_mask)
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
    batch = x.shape[0]
    check_has_negatives(fn, batch, f"the batch holds {batch} pair")
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
        sample_ids = check_labels(fn, "sample_ids", sample_ids, batch)
        positive = sample_ids[:, None] == sample_ids[None, :]
    ignore_t = None
    if ignore_mask is not None:
        ignore_mask = check_mask(fn, "ignore_mask", ignore_mask, (batch, batch)) & ~positive
        ignore_t = ignore_mask.T
    rows = multi_positive_cross_entropy(logits, positive, ignore_mask, label_smoothing=label_smoothing)
    cols = multi_positive_cross_entropy(logits.T, positive.T, ignore_t, label_smoothing=label_smoothing)
    return 0.5 * (reduce_anchor_losses(fn, *rows) + reduce_anchor_losses(fn, *cols))


class CLIPLoss(nn.Module):
    """``clip_loss`` with a learnable, clamped logit scale s = exp(t).

    t starts at ln(1/init_temperature) and is clamped in place to [0, ln max_scale] at every
    forward; it carries ``no_weight_decay = True`` for optimiser builders.

    Args:
        init_temperature: initial temperature (0.07 as in CLIP).
        max_scale: largest allowed scale (100 as in CLIP).
        learn_scale: False keeps the scale fixed at 1/init_temperature.
        label_smoothing: eps passed to ``clip_loss``.

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
    ) -> None:
        super().__init__()
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
        )
