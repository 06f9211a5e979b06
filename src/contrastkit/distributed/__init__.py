"""Exact contrastive losses across processes: gathers with gradient, the ring, and the bookkeeping.

A contrastive loss couples every pair of the *global* batch, so under ``torch.distributed`` each
rank needs the other ranks' embeddings, and the gradient of every embedding must come back to the
rank that owns it. contrastkit's losses take ``distributed=`` (see METHODS.md section 2.4):

``"gather"``
    Every rank gathers all embeddings with gradient and computes the whole global loss L (the same
    value on every rank). The gather's backward sums each rank's gradient onto the owner of the
    rows, so under DDP's averaging every parameter gets exactly dL/dtheta. Memory: the full
    B x B loss on every rank.
``"local"``
    Rank r scores only its own anchors against all gathered candidates and returns
    L_r = W * S_r / n, with S_r the sum of its anchors' losses and n the global number of anchors,
    so that mean_r L_r = L. DDP's averaging again gives dL/dtheta exactly, the scale and bias
    included, for any split of the batch (uneven ones too). Memory: B_r x B per rank.
``"ring"`` (``siglip_loss``)
    Like ``"local"``, but the other ranks' text blocks travel around the ring one neighbour at a
    time (W - 1 point-to-point exchanges, each an autograd Function), so no rank holds all of them
    at once in one collective.

Without an initialised process group, or with one process, every mode is the plain loss.

Errors stay collective: a loss validates its local inputs inside ``agreement()``, whose exit is
the first collective of the call; a rank whose inputs are bad (NaN, a wrong shape) tells the
others there, and every rank raises (the bad one its own error, the others a ``DistributedError``
naming it), instead of leaving them blocked in a gather.
"""

from contrastkit.distributed.agreement import DistributedError, agree_on_step, agreement
from contrastkit.distributed.group import (
    agree_on_value,
    all_reduce_mean,
    distributed_run,
    gather_objects,
    get_rank,
    get_world_size,
    init_from_env,
    is_active,
    job_value,
    launched_by_torchrun,
)
from contrastkit.distributed.layout import MODES, RING_MODES, Layout, resolve_mode, ring_blocks

__all__ = [
    "MODES",
    "RING_MODES",
    "DistributedError",
    "Layout",
    "agree_on_step",
    "agree_on_value",
    "agreement",
    "all_reduce_mean",
    "distributed_run",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_active",
    "job_value",
    "launched_by_torchrun",
    "resolve_mode",
    "ring_blocks",
]
