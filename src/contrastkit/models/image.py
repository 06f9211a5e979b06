"""Built-in image towers: a small CNN and a small ViT, trainable on a CPU in minutes.

Both take a float batch (B, 3, H, W) (normalised with mean/std 0.5 by the data layer) and return
(B, output_dim) features, not normalised.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.errors import InputError, check_choice, check_int, check_range
from contrastkit.losses.scale import mark_no_weight_decay
from contrastkit.models._blocks import TransformerStack, make_norm, output_head
from contrastkit.models._inputs import check_dense, check_optional_dim


def _conv_block(fn: str, c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """Stride-2 conv -> norm -> GELU -> conv -> norm -> GELU: halves H and W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        make_norm(fn, norm, c_out, dims=2),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        make_norm(fn, norm, c_out, dims=2),
        nn.GELU(),
    )


class ImageCNN(nn.Module):
    """A plain CNN: a stem, ``depth`` stride-2 blocks doubling the width, global average pooling.

    Channels go width, 2*width, ..., width * 2**(depth-1); H and W are halved by each block (an
    input of at least 2**depth pixels a side keeps every block meaningful).

    Args:
        width: channels of the stem and the first block.
        depth: number of stride-2 blocks.
        output_dim: size of the final Linear; None keeps the pooled features
            (output_dim = width * 2**(depth-1)).
        norm: "group" (GroupNorm, the default) or "batch". BatchNorm mixes the statistics of a
            batch into every embedding: a contrastive model can exploit that as a shortcut, and a
            GradCache / chunked forward no longer equals the full-batch forward. Use it only with
            plain full-batch training.
        in_channels: input channels (3 for RGB).

    Shapes: input (B, in_channels, H, W) float -> output (B, output_dim).
    """

    def __init__(
        self,
        width: int = 32,
        depth: int = 4,
        output_dim: int | None = 256,
        norm: str = "group",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        fn = "ImageCNN"
        width = check_int(fn, "width", width, 1)
        depth = check_int(fn, "depth", depth, 1)
        self.in_channels = check_int(fn, "in_channels", in_channels, 1)
        check_optional_dim(fn, "output_dim", output_dim)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            make_norm(fn, norm, width, dims=2),
            nn.GELU(),
        )
        channels = [width * 2**i for i in range(depth)]
        self.blocks = nn.Sequential(
            *(
                _conv_block(fn, c_in, c_out, norm)
                for c_in, c_out in zip([width] + channels[:-1], channels, strict=True)
            )
        )
        self.head, self.output_dim = output_head(channels[-1], output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, output_dim)."""
        x = check_dense("ImageCNN", "images", images, "(B, C, H, W)", self.in_channels)
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


class ImageViT(nn.Module):
    """A small Vision Transformer: patch embedding, learned positions, pre-norm encoder, pooling.

    Args:
        image_size: side of the (square) input images; inputs must match it.
        patch_size: side of a patch; must divide image_size.
        dim, depth, heads: width, layers and attention heads of the encoder (dim % heads == 0).
        output_dim: size of a final Linear; None keeps ``dim``.
        pooling: "cls" (a learned class token) or "mean" (mean over the patch tokens).
        mlp_ratio, dropout: of the encoder layers.
        in_channels: input channels (3 for RGB).

    Shapes: input (B, in_channels, image_size, image_size) float -> output (B, output_dim).
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        dim: int = 192,
        depth: int = 4,
        heads: int = 3,
        output_dim: int | None = None,
        pooling: str = "cls",
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        fn = "ImageViT"
        self.image_size = check_int(fn, "image_size", image_size, 1)
        self.patch_size = check_int(fn, "patch_size", patch_size, 1)
        self.in_channels = check_int(fn, "in_channels", in_channels, 1)
        if image_size % patch_size:
            raise InputError(f"{fn}: 'patch_size' ({patch_size}) must divide 'image_size' ({image_size}).")
        self.pooling = check_choice(fn, "pooling", pooling, ("cls", "mean"))
        check_optional_dim(fn, "output_dim", output_dim)
        check_range(fn, "dropout", dropout, 0.0, 1.0, high_open=True)
        self.encoder = TransformerStack(fn, dim, depth, heads, mlp_ratio, dropout)
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = mark_no_weight_decay(nn.Parameter(torch.zeros(1, 1, dim)))
        self.pos_embed = mark_no_weight_decay(nn.Parameter(torch.zeros(1, n_patches + 1, dim)))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.head, self.output_dim = output_head(dim, output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, image_size, image_size) -> (B, output_dim)."""
        fn = "ImageViT"
        x = check_dense(fn, "images", images, "(B, C, H, W)", self.in_channels)
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise InputError(
                f"{fn}: images must be {self.image_size}x{self.image_size} (the tower's image_size); got "
                f"shape {tuple(x.shape)}. Resize them in the data pipeline or build the tower with "
                f"image_size={x.shape[2]}."
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.encoder(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        pooled = h[:, 0] if self.pooling == "cls" else h[:, 1:].mean(dim=1)
        return self.head(pooled)
