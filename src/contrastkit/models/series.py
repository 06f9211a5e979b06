"""Built-in time-series towers over (B, C, T) float batches: a 1-D CNN and a patch transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import InputError, check_choice, check_int, check_range
from contrastkit.losses.scale import mark_no_weight_decay
from contrastkit.models._blocks import TransformerStack, make_norm, output_head
from contrastkit.models._inputs import check_dense, check_optional_dim


class SeriesCNN(nn.Module):
    """A 1-D CNN: a stem conv, ``depth`` stride-2 blocks, global average pooling over time.

    Channels go width, 2*width, then 4*width for the remaining blocks; T is halved by each block.

    Args:
        in_channels: channels C of the series (e.g. 6 for a 3-axis accelerometer + gyroscope).
        width: channels of the stem and the first block.
        depth: number of stride-2 blocks.
        output_dim: size of a final Linear; None keeps the pooled features.
        norm: "group" (default) or "batch" (see ImageCNN about BatchNorm and contrastive batches).

    Shapes: input (B, in_channels, T) float -> output (B, output_dim).
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 64,
        depth: int = 4,
        output_dim: int | None = None,
        norm: str = "group",
    ) -> None:
        super().__init__()
        fn = "SeriesCNN"
        self.in_channels = check_int(fn, "in_channels", in_channels, 1)
        width = check_int(fn, "width", width, 1)
        depth = check_int(fn, "depth", depth, 1)
        check_optional_dim(fn, "output_dim", output_dim)
        channels = [width * 2 ** min(i, 2) for i in range(depth)]
        layers: list[nn.Module] = [
            nn.Conv1d(in_channels, width, 7, padding=3, bias=False),
            make_norm(fn, norm, width, dims=1),
            nn.GELU(),
        ]
        for c_in, c_out in zip([width] + channels[:-1], channels, strict=True):
            layers += [
                nn.Conv1d(c_in, c_out, 5, stride=2, padding=2, bias=False),
                make_norm(fn, norm, c_out, dims=1),
                nn.GELU(),
            ]
        self.body = nn.Sequential(*layers)
        self.head, self.output_dim = output_head(channels[-1], output_dim)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, output_dim)."""
        x = check_dense("SeriesCNN", "series", series, "(B, C, T)", self.in_channels)
        return self.head(self.body(x).mean(dim=2))


class SeriesPatchTransformer(nn.Module):
    """PatchTST-style tower: non-overlapping time patches, learned positions, a pre-norm encoder.

    A series whose length T is not a multiple of ``patch_size`` is right-padded with zeros to the
    next multiple; it may hold at most ``max_patches`` patches.

    Args:
        in_channels: channels C of the series.
        patch_size: time steps per patch.
        dim, depth, heads: width, layers and attention heads (dim % heads == 0).
        max_patches: size of the positional table (T <= max_patches * patch_size).
        output_dim: size of a final Linear; None keeps ``dim``.
        pooling: "cls" (a learned class token) or "mean" (over the patch tokens).
        mlp_ratio, dropout: of the encoder layers.

    Shapes: input (B, in_channels, T) float -> output (B, output_dim); ``forward_with_tokens``
    also returns the per-patch tokens (B, N, token_dim), token_dim = dim, for token-level losses.
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: int = 8,
        dim: int = 128,
        depth: int = 3,
        heads: int = 4,
        max_patches: int = 256,
        output_dim: int | None = None,
        pooling: str = "cls",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        fn = "SeriesPatchTransformer"
        self.in_channels = check_int(fn, "in_channels", in_channels, 1)
        self.patch_size = check_int(fn, "patch_size", patch_size, 1)
        self.max_patches = check_int(fn, "max_patches", max_patches, 1)
        self.pooling = check_choice(fn, "pooling", pooling, ("cls", "mean"))
        check_optional_dim(fn, "output_dim", output_dim)
        check_range(fn, "dropout", dropout, 0.0, 1.0, high_open=True)
        self.encoder = TransformerStack(fn, dim, depth, heads, mlp_ratio, dropout)
        self.patch_embed = nn.Conv1d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = mark_no_weight_decay(nn.Parameter(torch.zeros(1, 1, dim)))
        self.pos_embed = mark_no_weight_decay(nn.Parameter(torch.zeros(1, max_patches + 1, dim)))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.head, self.output_dim = output_head(dim, output_dim)
        self.token_dim = dim

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, output_dim)."""
        return self.forward_with_tokens(series)[0]

    def forward_with_tokens(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T) -> the pooled output (B, output_dim) and the encoded patch tokens
        (B, N, token_dim), N = ceil(T / patch_size), token n covering steps [n p, (n + 1) p)."""
        fn = "SeriesPatchTransformer"
        x = check_dense(fn, "series", series, "(B, C, T)", self.in_channels)
        n = -(-x.shape[2] // self.patch_size)
        if n > self.max_patches:
            raise InputError(
                f"{fn}: a series of length {x.shape[2]} makes {n} patches of {self.patch_size}, more than "
                f"max_patches={self.max_patches}; crop the series or raise max_patches / patch_size."
            )
        x = F.pad(x, (0, n * self.patch_size - x.shape[2]))
        tokens = self.patch_embed(x).transpose(1, 2)  # (B, n, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.encoder(torch.cat([cls, tokens], dim=1) + self.pos_embed[:, : n + 1])
        pooled = h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)
        return self.head(pooled), h[:, 1:]
