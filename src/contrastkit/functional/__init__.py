"""Pure tensor math for contrastive losses: no nn.Module, no I/O."""

from contrastkit.functional.contrast import (
    MULTI_POSITIVE_MODES,
    REDUCTIONS,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
)
from contrastkit.functional.numerics import compute_dtype, softplus
from contrastkit.functional.similarity import cosine_logits, scaled_logits, stack_views

__all__ = [
    "MULTI_POSITIVE_MODES",
    "REDUCTIONS",
    "compute_dtype",
    "cosine_logits",
    "multi_positive_cross_entropy",
    "reduce_anchor_losses",
    "scaled_logits",
    "softplus",
    "stack_views",
]
