"""Private building blocks: the pre-norm transformer stack and the norm layers of the CNN towers."""

from __future__ import annotations

import math

import torch
from torch import nn

from contrastkit.errors import check_choice, check_int, check_range
from contrastkit.models._inputs import check_heads

NORMS = ("group", "batch")


def make_norm(fn: str, kind: str, channels: int, *, dims: int) -> nn.Module:
    """GroupNorm (per-sample statistics) or BatchNorm{1,2}d over ``channels``.

    GroupNorm uses gcd(channels, 8) groups from 16 channels up and one group below (so that a
    group never normalises a single channel over a 1x1 map to zero).
    """
    check_choice(fn, "norm", kind, NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    groups = math.gcd(channels, 8) if channels >= 16 else 1
    return nn.GroupNorm(groups, channels)


class TransformerStack(nn.Module):
    """``depth`` pre-norm encoder layers (independently initialised) and a final LayerNorm.

    Input (B, N, dim) and an optional key padding mask (B, N), True at positions to ignore;
    output (B, N, dim).
    """

    def __init__(self, fn: str, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        dim = check_int(fn, "dim", dim, 1)
        check_int(fn, "depth", depth, 1)
        check_int(fn, "heads", heads, 1)
        check_heads(fn, dim, heads)
        check_range(fn, "dropout", dropout, 0.0, 1.0, high_open=True)
        check_range(fn, "mlp_ratio", mlp_ratio, 0.25, 64.0)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                heads,
                dim_feedforward=max(1, round(dim * mlp_ratio)),
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad_mask)
        return self.norm(x)


def output_head(in_dim: int, output_dim: int | None) -> tuple[nn.Module, int]:
    """A Linear to ``output_dim``, or Identity when it is None; returns (module, final size)."""
    if output_dim is None:
        return nn.Identity(), in_dim
    return nn.Linear(in_dim, output_dim), output_dim
