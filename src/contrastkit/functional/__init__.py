"""Pure tensor math for contrastive losses: no nn.Module, no I/O."""

from contrastkit.functional.contrast import (
    MULTI_POSITIVE_MODES,
    REDUCTIONS,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
)
from contrastkit.functional.groups import group_sums
from contrastkit.functional.numerics import compute_dtype, softplus
from contrastkit.functional.similarity import cosine_logits, scaled_logits, stack_views
from contrastkit.functional.sinkhorn import log_sinkhorn, sinkhorn
from contrastkit.functional.tiled import (
    PLAIN_LOGITS_BUDGET_BYTES,
    choose_tiling,
    resolve_chunk_size,
    tiled_logsumexp,
    tiled_softplus_sum,
)

__all__ = [
    "MULTI_POSITIVE_MODES",
    "PLAIN_LOGITS_BUDGET_BYTES",
    "REDUCTIONS",
    "choose_tiling",
    "compute_dtype",
    "cosine_logits",
    "group_sums",
    "log_sinkhorn",
    "multi_positive_cross_entropy",
    "reduce_anchor_losses",
    "resolve_chunk_size",
    "scaled_logits",
    "sinkhorn",
    "softplus",
    "stack_views",
    "tiled_logsumexp",
    "tiled_softplus_sum",
]
