"""Numerical primitives: the loss compute dtype and an exact softplus."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype logits are computed in: float64 if any input is float64, else float32.

    Half-precision inputs (bf16/fp16) are upcast so that logits and log-sum-exps keep fp32
    accuracy; the gradient flows back to the inputs in their own dtype.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), exact over the whole range.

    ``F.softplus`` returns x itself above its threshold (20), an absolute error of e^-20
    (2e-9) that float64 references see; ``logaddexp(x, 0)`` is exact, cannot overflow and
    has the gradient sigmoid(x) everywhere (0.5 at x = 0).
    """
    return torch.logaddexp(x, x.new_zeros(()))
