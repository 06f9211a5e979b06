"""Gradient reversal for domain-adversarial training (DANN), and its usual lambda schedule.

A domain (site) classifier placed behind ``grad_reverse`` is trained normally, while the encoder
below it receives the negated, lambda-scaled gradient and so learns features the classifier
cannot use. Reference: Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by
Backpropagation", arXiv 1409.7495; used by CRCC (arXiv 2602.19138, METHODS.md 3.17).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from contrastkit.errors import InputError, check_finite, check_range, check_scalar, check_tensor


class _GradReverse(torch.autograd.Function):
    """y = x forward; dL/dx = -lambda * dL/dy backward (lambda gets no gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad_output, None


def _check_lambda(fn: str, lambd: object) -> float:
    hint = " It scales the reversed gradient (0 blocks it; the DANN schedule rises from 0 to 1)."
    value = check_scalar(fn, "lambd", lambd, minimum=0.0, hint=hint)
    return float(value.detach()) if isinstance(value, torch.Tensor) else value


def grad_reverse(x: torch.Tensor, lambd: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Gradient reversal: forward y = x (any shape), backward dL/dx = -lambda * dL/dy.

    Args:
        x: a floating tensor of any shape (e.g. (B, D) features before a site classifier).
        lambd: lambda >= 0, a float or a one-element tensor (read once; it gets no gradient).

    Reference: Ganin & Lempitsky 2015, arXiv 1409.7495.
    """
    fn = "grad_reverse"
    x = check_tensor(fn, "x", x)
    check_finite(fn, "x", x)
    return _GradReverse.apply(x, _check_lambda(fn, lambd))


class GradientReversal(nn.Module):
    """``grad_reverse`` as a layer with a settable lambda (``layer.lambd = reversal_lambda(p)``).

    Example: ``site_head = nn.Sequential(GradientReversal(), nn.Linear(d, n_sites))``.
    """

    def __init__(self, lambd: float | torch.Tensor = 1.0) -> None:
        super().__init__()
        self.lambd = lambd

    @property
    def lambd(self) -> float:
        return self._lambd

    @lambd.setter
    def lambd(self, value: float | torch.Tensor) -> None:
        self._lambd = _check_lambda("GradientReversal", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self._lambd)

    def extra_repr(self) -> str:
        return f"lambd={self._lambd}"


def reversal_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule lambda_p = 2 / (1 + exp(-gamma p)) - 1, rising from 0 (p = 0) towards 1.

    Args:
        progress: p in [0, 1], the fraction of training done (step / total steps).
        gamma: gamma > 0, the steepness (10 in the paper).

    Reference: Ganin & Lempitsky 2015, arXiv 1409.7495, section 5.2.1.
    """
    fn = "reversal_lambda"
    progress = check_range(fn, "progress", progress, 0.0, 1.0)
    gamma = float(check_scalar(fn, "gamma", gamma, minimum=0.0))
    if gamma == 0:
        raise InputError(f"{fn}: argument 'gamma' must be > 0 (10 in the paper); got {gamma}.")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0
