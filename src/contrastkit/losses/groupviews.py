"""C3 group recommendation: member-subsampled group views (NT-Xent) and the Mixed ranking loss.

C3 encodes a group as the tokens [members; positive item] with a shared Transformer and masked
mean pooling. Its group loss is

    L = Mixed(p+, p-) + beta * NTX(two member-subsampled views of each group),

beta = 0.025 (0.1 on one of the paper's data sets), with user and group passes alternating
(the user pass uses Mixed alone). Member lists are padded (B, M) long tensors whose padding
is -1, always after a group's members; a group's size n is its count of ids >= 0.

Reference: Kim et al. 2025, "Consensus-aware Contrastive Learning for Group Recommendation",
arXiv 2504.13703 (release: github.com/soso-young/C3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_generator,
    check_has_negatives,
    check_int,
    check_labels,
    check_nonzero_rows,
    check_range,
    check_same_device,
    check_temperature,
    check_tensor,
    is_integer_tensor,
)
from contrastkit.functional import compute_dtype, softplus
from contrastkit.losses.selfsup import nt_xent

PAD = -1
"""The padding id of a member list."""

GroupEncoder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sample_group_views(
    members: torch.Tensor,
    keep: float = 0.2,
    size_threshold: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two member-subsampled views of each group (C3's augmentation).

    A group of n > ``size_threshold`` members keeps, in each view independently, a uniformly
    random subset of k = max(1, floor(keep * n)) members drawn without replacement; a smaller
    group keeps its full list in both views. Kept members stay in their original order.

    Args:
        members: (B, M) long member ids, padded with -1 after each group's members; every
            group has at least one member.
        keep: the kept share in (0, 1] (the release's ``1 - mask_ratio`` = 0.2).
        size_threshold: int >= 0; groups of at most this many members are not subsampled.
        generator: the ``torch.Generator`` of the draws (None: the global one).

    Returns:
        (first, second): two (B, M') long tensors padded with -1, M' the largest kept count.

    Reference: Kim et al. 2025, arXiv 2504.13703 (release: ``compute_contrastive_loss``).
    """
    fn = "sample_group_views"
    lengths = _check_members(fn, members)
    keep, size_threshold = _check_view_options(fn, keep, size_threshold, generator)
    return _draw_views(members, lengths, keep, size_threshold, generator)


def group_view_nt_xent(
    encode_fn: GroupEncoder,
    members: torch.Tensor,
    item: torch.Tensor,
    keep: float = 0.2,
    size_threshold: int = 5,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    faithful_mask: bool = False,
) -> torch.Tensor:
    """NT-Xent between two member-subsampled views of each group (C3's contrastive term).

    The views come from ``sample_group_views``; each is encoded with the item as
    z = encode_fn(member_ids, member_mask, item), and the 2B views go through NT-Xent
    (METHODS 1.4, cosine similarity):

        L = 1/(2B) sum_a [ LSE_{b != a} <Z_a, Z_b>/tau - <Z_a, Z_{a +- B}>/tau ],  Z = [z1; z2] unit

    Args:
        encode_fn: the caller's shared group encoder, called once per view with member_ids
            (B, M') long (padding -1; embed it as a zero row), member_mask (B, M') bool (True =
            attend to this token) and item (B,); returns (B, D) pooled embeddings.
        members: (B, M) long member ids padded with -1 (see ``sample_group_views``); B >= 2.
        item: (B,) the positive item of each group, encoded in both views.
        keep, size_threshold, generator: as in ``sample_group_views`` (C3: 0.2 and 5).
        temperature: tau > 0 (C3: 1.0).
        faithful_mask: False (default) masks exactly the padding. True reproduces the release:
            the mask covers the group's original n slots, so a subsampled view has n - k
            zero-embedded padding rows left unmasked (and ids padded to width max n).

    Returns:
        The scalar loss; C3 adds beta * this to its Mixed loss (``mixed_recommendation_loss``).

    Reference: Kim et al. 2025, arXiv 2504.13703; NT-Xent: Chen et al. 2020, arXiv 2002.05709.
    """
    fn = "group_view_nt_xent"
    if not callable(encode_fn):
        raise InputError(
            f"{fn}: argument 'encode_fn' must be callable (member_ids, member_mask, item) -> (B, D); "
            f"got {type(encode_fn).__name__}."
        )
    lengths = _check_members(fn, members)
    n_groups = members.shape[0]
    item = check_labels(fn, "item", item, n_groups)
    check_same_device(fn, members=members, item=item)
    keep, size_threshold = _check_view_options(fn, keep, size_threshold, generator)
    temperature = check_temperature(fn, "temperature", temperature)
    faithful_mask = check_flag(fn, "faithful_mask", faithful_mask)
    check_has_negatives(fn, 2 * n_groups - 1, f"B={n_groups} gives each view only its partner")
    encoded = []
    for view, ids in enumerate(_draw_views(members, lengths, keep, size_threshold, generator), 1):
        ids, mask = _view_mask(ids, lengths, faithful_mask)
        z = encode_fn(ids, mask, item)
        name = f"encode_fn output (view {view})"
        encoded.append(check_embeddings(fn, name, z, rows=n_groups))
        check_nonzero_rows(fn, name, z)
    return nt_xent(encoded[0], encoded[1], temperature)


def mixed_recommendation_loss(
    pos_scores: torch.Tensor, neg_scores: torch.Tensor, alpha: float = 0.5, margin: float = 1.0
) -> torch.Tensor:
    """C3's Mixed loss of paired positive and negative scores, with p = sigmoid(score):

        L = mean_i { alpha [ -log p+_i + (exp(p-_i) - 1) ] + (1 - alpha) max(0, m - (p+_i - p-_i)) }

    -log p+ is computed as softplus(-s+) (exact; the release adds 1e-10 inside the log). As
    p+ - p- < 1, the hinge with m = 1 is never inactive. C3's group loss is
    L + beta * ``group_view_nt_xent`` (beta = 0.025; 0.1 on one data set).

    Args:
        pos_scores: (B,) raw scores (logits) of the positive items.
        neg_scores: (B,) raw scores of one sampled negative item per row.
        alpha: weight in [0, 1] of the likelihood part (C3: 0.5).
        margin: the hinge margin m >= 0 (C3: 1.0).

    Reference: Kim et al. 2025, arXiv 2504.13703 (release ``MixedLoss``).
    """
    fn = "mixed_recommendation_loss"
    check_same_device(fn, pos_scores=pos_scores, neg_scores=neg_scores)
    pos = check_embeddings(fn, "pos_scores", pos_scores, shape="(B,)", ndims=(1,))
    neg = check_embeddings(
        fn, "neg_scores", neg_scores, shape="(B,)", ndims=(1,), rows=pos.shape[0], like="pos_scores"
    )
    alpha = check_range(fn, "alpha", alpha, 0.0, 1.0)
    margin = check_range(fn, "margin", margin, 0.0, math.inf, high_open=True)
    dtype = compute_dtype(pos, neg)
    pos, neg = pos.to(dtype), neg.to(dtype)
    p_pos, p_neg = torch.sigmoid(pos), torch.sigmoid(neg)
    likelihood = softplus(-pos) + torch.expm1(p_neg)
    hinge = torch.relu(margin - (p_pos - p_neg))
    return (alpha * likelihood + (1 - alpha) * hinge).mean()


def _check_members(fn: str, members: object) -> torch.Tensor:
    """Check a (B, M) member-id tensor padded with -1 after the members; return lengths (B,)."""
    members = check_tensor(fn, "members", members, floating=False)
    if not is_integer_tensor(members):
        raise InputError(
            f"{fn}: argument 'members' must be an integer (long) tensor of user ids; got {members.dtype}."
        )
    if members.dim() != 2 or members.shape[0] == 0 or members.shape[1] == 0:
        raise InputError(
            f"{fn}: argument 'members' must have shape (B, M) with B, M >= 1 (ids padded with -1); "
            f"got shape {tuple(members.shape)}."
        )
    if bool((members < PAD).any()):
        raise InputError(
            f"{fn}: argument 'members' holds ids below -1; use ids >= 0 and -1 for padding only."
        )
    present = members != PAD
    if not bool(present[:, 0].all()):
        rows = (~present[:, 0]).nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: argument 'members' has groups without members (rows {rows}); drop empty groups."
        )
    if bool((present[:, 1:] & ~present[:, :-1]).any()):
        raise InputError(
            f"{fn}: argument 'members' has padding (-1) before a member id; put each group's "
            f"members first, then the padding."
        )
    return present.sum(dim=1)


def _check_view_options(
    fn: str, keep: object, size_threshold: object, generator: object
) -> tuple[float, int]:
    keep = check_range(fn, "keep", keep, 0.0, 1.0)
    if keep == 0:
        raise InputError(f"{fn}: argument 'keep' must be in (0, 1]; got 0 (a view needs a member).")
    size_threshold = check_int(fn, "size_threshold", size_threshold, 0)
    check_generator(fn, generator)
    return keep, size_threshold


def _draw_views(
    members: torch.Tensor,
    lengths: torch.Tensor,
    keep: float,
    size_threshold: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent draws of ``_subsample`` (the generator advances between them)."""
    subsampled = (keep * lengths.to(torch.float64)).floor().long().clamp(min=1)
    counts = torch.where(lengths > size_threshold, subsampled, lengths)
    return _subsample(members, counts, generator), _subsample(members, counts, generator)


def _subsample(
    members: torch.Tensor, counts: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """counts[i] members of row i drawn without replacement, kept in order, padded with -1 to
    width max(counts)."""
    device = members.device if generator is None else generator.device
    keys = torch.rand(members.shape, generator=generator, device=device).to(members.device)
    keys = keys.masked_fill(members == PAD, 2.0)  # padding ranks after every member
    rank = keys.argsort(dim=1).argsort(dim=1)
    chosen = rank < counts[:, None]
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)  # chosen first, in order
    view = members.gather(1, order).masked_fill(~chosen.gather(1, order), PAD)
    return view[:, : int(counts.max())]


def _view_mask(ids: torch.Tensor, lengths: torch.Tensor, faithful: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, member_mask) for the encoder. Faithful: ids padded to width max(lengths) and the
    mask True on the group's first n slots, whatever the view kept (the release's mask)."""
    if not faithful:
        return ids, ids != PAD
    width = int(lengths.max())
    ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=PAD)
    slots = torch.arange(width, device=ids.device)
    return ids, slots[None, :] < lengths[:, None]
