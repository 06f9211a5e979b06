"""Projection heads: the map from a tower's features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.errors import InputError, check_choice, check_int, check_range
from contrastkit.models._inputs import check_optional_dim

HEAD_KINDS = ("linear", "mlp", "none")


class ProjectionHead(nn.Module):
    """Project (B, in_dim) features to (B, out_dim).

    Kinds:
        "linear": Dropout(p) -> Linear(in_dim, out_dim) (CLIP).
        "mlp":    Linear(in_dim, hidden) -> GELU -> Dropout(p) -> Linear(hidden, out_dim) (SimCLR);
                  hidden defaults to in_dim.
        "none":   the identity; needs in_dim == out_dim (e.g. a fully locked pretrained tower).

    Shapes: input (B, in_dim) -> output (B, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kind: str = "linear",
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        fn = "ProjectionHead"
        self.in_dim = check_int(fn, "in_dim", in_dim, 1)
        self.out_dim = check_int(fn, "out_dim", out_dim, 1)
        self.kind = check_choice(fn, "kind", kind, HEAD_KINDS)
        check_optional_dim(fn, "hidden", hidden)
        dropout = check_range(fn, "dropout", dropout, 0.0, 1.0, high_open=True)
        if hidden is not None and kind != "mlp":
            raise InputError(
                f"{fn}: 'hidden' applies to kind='mlp' only; got kind={kind!r}, hidden={hidden}."
            )
        if kind == "none":
            if in_dim != out_dim:
                raise InputError(
                    f"{fn}: kind='none' (identity) needs in_dim == out_dim; got {in_dim} -> {out_dim}. "
                    f"Use kind='linear' or set embed_dim to {in_dim}."
                )
            self.net: nn.Module = nn.Identity()
        elif kind == "linear":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
        else:
            hidden = hidden or in_dim
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, in_dim={self.in_dim}, out_dim={self.out_dim}"
