"""The learnable logit scale shared by the stateful losses (CLIPLoss, SigLIPLoss)."""

from __future__ import annotations

import math

import torch
from torch import nn

from contrastkit.errors import InputError


def mark_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag a parameter so that optimiser builders put it in the no-weight-decay group.

    Builders test ``getattr(p, "no_weight_decay", False)``.
    """
    param.no_weight_decay = True  # type: ignore[attr-defined]
    return param


class LogitScale(nn.Module):
    """s = exp(t), with t clamped in place to [ln min_scale, ln max_scale] at every forward.

    The clamp acts on the stored parameter (as open_clip clamps after each step), so the
    gradient still flows and the scale can come back from the bound. ``learnable=False``
    keeps t as a buffer: a fixed scale.

    Args:
        init_scale: initial multiplicative scale s (e.g. 1/0.07 for CLIP, 10 for SigLIP).
        max_scale: upper clamp (CLIP: 100).
        min_scale: lower clamp (1, i.e. t >= 0).
        learnable: whether t is a trained parameter.
    """

    def __init__(
        self,
        init_scale: float,
        max_scale: float = 100.0,
        min_scale: float = 1.0,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if not (0 < min_scale <= max_scale) or not math.isfinite(max_scale):
            raise InputError(
                f"LogitScale: need 0 < min_scale <= max_scale < inf; got min_scale={min_scale}, "
                f"max_scale={max_scale}."
            )
        if not (math.isfinite(init_scale) and min_scale <= init_scale <= max_scale):
            raise InputError(
                f"LogitScale: the initial scale {init_scale} (1/temperature) must lie in "
                f"[{min_scale}, {max_scale}]; raise max_scale or pick another init."
            )
        self.log_min = math.log(min_scale)
        self.log_max = math.log(max_scale)
        log_scale = torch.tensor(math.log(init_scale))
        if learnable:
            self.log_scale = mark_no_weight_decay(nn.Parameter(log_scale))
        else:
            self.register_buffer("log_scale", log_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp t in place to [ln min_scale, ln max_scale]."""
        self.log_scale.clamp_(self.log_min, self.log_max)

    @property
    def value(self) -> float:
        """The scale s the next forward will use (clamped), as a float, for logging."""
        return float(self.log_scale.detach().clamp(self.log_min, self.log_max).exp())

    def forward(self) -> torch.Tensor:
        """The clamped scale s = exp(t), a 0-d tensor."""
        self.clamp_()
        return self.log_scale.exp()

    def extra_repr(self) -> str:
        return f"scale={self.value:.4g}, max_scale={math.exp(self.log_max):.4g}"
