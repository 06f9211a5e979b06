"""Regression + CLIP mixture (AVDE): predict target embeddings that also retrieve their pair."""

from __future__ import annotations

import math

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_range,
    check_same_device,
    check_scalar,
    check_scale,
)
from contrastkit.functional import compute_dtype
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.pairs import unit_pair


def regression_clip_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    logit_scale: float | torch.Tensor,
    alpha: float = 0.8,
    weight: float = 10.0,
    normalize: bool = False,
    exp_scale: bool = False,
) -> torch.Tensor:
    """L = w [alpha MSE(e, v) + (1 - alpha) L_CLIP(e, v)]  (METHODS 1.12, AVDE).

    MSE is the mean of (e - v)^2 over all B*D elements; L_CLIP is the symmetric CLIP loss
    (``clip_loss``) on the logits l = s e v^T.

    - Faithful mode (``normalize=False, exp_scale=False``, the AVDE release): e, v are the raw
      vectors and s = t, the raw parameter used without exp (t = ln(1/0.07) ~ 2.66 gives an
      effective temperature ~ 0.38 on raw dot products).
    - Clean mode (``normalize=True, exp_scale=True``): s = exp(t) on L2-normalised rows.
    - With ``normalize=True`` *both* terms see the normalised rows e/|e|, v/|v|, so the loss is
      invariant to the scale of either input and the MSE term is (1/B) sum_i (2 - 2 cos_i) / D.
      Normalise only the CLIP term by calling ``clip_loss`` yourself if the norms must be fit.

    Args:
        pred: (B, D) predicted embeddings e (B >= 2: the CLIP term needs negatives).
        target: (B, D) target embeddings v, row i paired with pred_i.
        logit_scale: t, a float or a one-element (learnable) tensor; the gradient reaches it.
            Must be >= 0 when ``exp_scale=False`` (it is then the scale itself).
        alpha: MSE share in [0, 1] (1: pure regression, 0: pure CLIP).
        weight: overall factor w >= 0.
        normalize: L2-normalise pred and target rows before both terms.
        exp_scale: s = exp(t) instead of s = t.

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Example:
        >>> pred, target = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss = regression_clip_loss(pred, target, logit_scale=math.log(1 / 0.07))

    Reference: AVDE, arXiv 2602.22555.
    """
    fn = "regression_clip_loss"
    check_same_device(fn, pred=pred, target=target, logit_scale=logit_scale)
    alpha = check_range(fn, "alpha", alpha, 0.0, 1.0)
    weight = check_range(fn, "weight", weight, 0.0, math.inf, high_open=True)
    normalize = check_flag(fn, "normalize", normalize)
    exp_scale = check_flag(fn, "exp_scale", exp_scale)
    if exp_scale:
        t = check_scalar(fn, "logit_scale", logit_scale)
        is_tensor = isinstance(t, torch.Tensor)
        t_value, dtype = (float(t.detach()), t.dtype) if is_tensor else (t, torch.float64)
        if t_value > math.log(torch.finfo(dtype).max):
            raise InputError(
                f"{fn}: argument 'logit_scale' t = {t_value} makes exp(t) overflow {dtype}. Clamp t "
                f"to [0, ln 100] after each optimizer step."
            )
        scale = torch.exp(t) if is_tensor else math.exp(t)
    else:
        scale = check_scale(fn, "logit_scale", logit_scale)
    if normalize:
        e, v = unit_pair(fn, pred, target, ("pred", "target"))
    else:
        e = check_embeddings(fn, "pred", pred)
        v = check_embeddings(fn, "target", target, rows=e.shape[0], dim=e.shape[1], like="pred")
        dtype = compute_dtype(e, v)
        e, v = e.to(dtype), v.to(dtype)
    check_has_negatives(fn, e.shape[0], f"the batch holds {e.shape[0]} pair")
    mse = (e - v).pow(2).mean()
    return weight * (alpha * mse + (1 - alpha) * clip_loss(e, v, scale))
