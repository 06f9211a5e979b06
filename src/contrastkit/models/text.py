"""The built-in text tower: a small pre-norm transformer over token ids."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from contrastkit.errors import check_choice, check_int, check_range
from contrastkit.losses.scale import mark_no_weight_decay
from contrastkit.models._blocks import TransformerStack, output_head
from contrastkit.models._inputs import check_optional_dim, check_text_batch


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (B, L, D) over the positions where mask (B, L) is true -> (B, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def last_real_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, D) at the last position where mask (B, L) is true -> (B, D)."""
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TextTransformer(nn.Module):
    """Token + learned positional embedding, a pre-norm transformer with a padding mask, pooling.

    Padding positions are masked out of attention and pooling, so extra pad tokens at the end of a
    row do not change its output.

    Args:
        vocab_size: size of the token table (the tokenizer's ``vocab_size``); pad id is 0.
        max_length: longest accepted sequence (the tokenizer's ``max_length``).
        dim, depth, heads: width, layers and attention heads (dim % heads == 0).
        pooling: "eos" (the last real token, as CLIP) or "mean" (masked mean over real tokens).
        output_dim: size of a final Linear; None keeps ``dim``.
        mlp_ratio, dropout: of the encoder layers.

    Shapes: input {"input_ids": int (B, L), "attention_mask": int (B, L)} with L <= max_length
    -> output (B, output_dim) float.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int = 64,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        pooling: str = "eos",
        output_dim: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        fn = "TextTransformer"
        self.vocab_size = check_int(fn, "vocab_size", vocab_size, 1)
        self.max_length = check_int(fn, "max_length", max_length, 1)
        self.pooling = check_choice(fn, "pooling", pooling, ("eos", "mean"))
        check_optional_dim(fn, "output_dim", output_dim)
        check_range(fn, "dropout", dropout, 0.0, 1.0, high_open=True)
        self.encoder = TransformerStack(fn, dim, depth, heads, mlp_ratio, dropout)
        self.token_embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos_embed = mark_no_weight_decay(nn.Parameter(torch.zeros(1, max_length, dim)))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        with torch.no_grad():
            self.token_embed.weight[0].zero_()
        nn.init.normal_(self.pos_embed, std=0.01)
        self.head, self.output_dim = output_head(dim, output_dim)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{"input_ids", "attention_mask"} (B, L) -> (B, output_dim)."""
        ids, mask = check_text_batch(
            "TextTransformer", batch, vocab_size=self.vocab_size, max_length=self.max_length
        )
        x = self.token_embed(ids) + self.pos_embed[:, : ids.shape[1]]
        h = self.encoder(x, pad_mask=~mask)
        pooled = last_real_token(h, mask) if self.pooling == "eos" else masked_mean(h, mask)
        return self.head(pooled)
