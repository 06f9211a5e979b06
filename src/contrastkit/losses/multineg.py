"""InfoNCE with an explicit list of negatives per anchor, and TDoc's split-embedding similarity.

TDoc (arXiv 2602.17322; METHODS 3.7) scores whether two document text crops share visual style.
Each anchor a has one positive p and K negatives n_k (256 in the paper, up to 20 of them
self-augmented copies of the anchor); the similarity s may be any function of (anchor, candidate),
by default the dot product, or the split-embedding similarity below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_mask,
    check_nonzero_rows,
    check_same_device,
    check_temperature,
    check_tensor,
)
from contrastkit.functional import (
    REDUCTIONS,
    compute_dtype,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
)

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def multi_negative_info_nce(
    a: torch.Tensor,
    p: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    similarity: Similarity | None = None,
    reduction: str = "mean",
    *,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of each anchor's positive against its own list of negatives.

        l_i = -log( e^{s(a_i,p_i)/tau} / (e^{s(a_i,p_i)/tau} + sum_k e^{s(a_i,n_ik)/tau}) )

    Only anchor i's own candidates enter its denominator (no in-batch negatives). The loss is
    summed over anchors and divided by the anchor count (``reduction="mean"``).

    Args:
        a: (B, D) anchors, used as given (normalise them, or let ``similarity`` do it).
        p: (B, D) positives, p_i for a_i.
        negatives: (B, K, D) per anchor, or (K, D) shared by every anchor.
        temperature: tau > 0 (TDoc: 0.1).
        similarity: s(a (B, D), c (B, C, D)) -> (B, C); it is called once with the candidates
            c = [p_i ; n_i1 .. n_iK] (C = 1 + K, the positive in column 0), in the compute dtype
            (float32 for half inputs, float64 stays float64). None: the dot product <a_i, c_ij>.
            For TDoc pass ``functools.partial(split_embedding_similarity, blank=flags)`` with
            flags broadcastable to (B, 1 + K).
        reduction: ``"mean"`` over the anchors with a negative, ``"sum"``, or ``"none"`` -> (B,),
            NaN at anchors whose negatives are all masked out.
        negative_mask: (B, K) bool, True = n_ik is a real negative of anchor i; for a variable
            number of negatives per anchor (pad the rest). Default: all are.

    Raises:
        InputError: bad shapes, NaN/inf, an empty batch, a bad temperature or reduction, a
            similarity returning the wrong shape or non-finite values.
        NoPositivePairsError: every anchor's negatives are masked out.

    Example:
        >>> a, p = F.normalize(torch.randn(2, 4, 192), dim=-1)
        >>> n = F.normalize(torch.randn(4, 256, 192), dim=-1)
        >>> loss = multi_negative_info_nce(a, p, n, temperature=0.1)

    Reference: TDoc, arXiv 2602.17322 (loss form of van den Oord et al., arXiv 1807.03748).
    """
    fn = "multi_negative_info_nce"
    check_same_device(fn, a=a, p=p, negatives=negatives, negative_mask=negative_mask)
    a = check_embeddings(fn, "a", a)
    batch, dim = a.shape
    p = check_embeddings(fn, "p", p, rows=batch, dim=dim, like="a")
    negatives = check_embeddings(
        fn, "negatives", negatives, shape="(B, K, D) or (K, D)", ndims=(2, 3), dim=dim, like="a"
    )
    if negatives.dim() == 3 and negatives.shape[0] != batch:
        raise InputError(
            f"{fn}: per-anchor 'negatives' must have shape (B={batch}, K, D); got "
            f"{tuple(negatives.shape)}. Pass (K, D) to share the negatives across anchors."
        )
    temperature = check_temperature(fn, "temperature", temperature)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    if similarity is not None and not callable(similarity):
        raise InputError(
            f"{fn}: argument 'similarity' must be a callable s(a (B, D), c (B, C, D)) -> (B, C) or "
            f"None; got {type(similarity).__name__}."
        )
    n_negatives = negatives.shape[-2]
    if negative_mask is not None:
        negative_mask = check_mask(fn, "negative_mask", negative_mask, (batch, n_negatives))

    dtype = compute_dtype(a, p, negatives)
    if negatives.dim() == 2:
        negatives = negatives.expand(batch, -1, -1)
    candidates = torch.cat([p[:, None, :], negatives], dim=1).to(dtype)
    anchors = a.to(dtype)
    if similarity is None:
        scores = torch.einsum("bd,bcd->bc", anchors, candidates)
    else:
        scores = similarity(anchors, candidates)
        scores = _check_scores(fn, scores, (batch, 1 + n_negatives)).to(dtype)

    positive = torch.zeros(batch, 1 + n_negatives, dtype=torch.bool, device=a.device)
    positive[:, 0] = True
    ignore = None if negative_mask is None else F.pad(~negative_mask, (1, 0), value=False)
    loss, valid = multi_positive_cross_entropy(scores / temperature, positive, ignore)
    return reduce_anchor_losses(fn, loss, valid, reduction)


def _check_scores(fn: str, scores: object, shape: tuple[int, int]) -> torch.Tensor:
    scores = check_tensor(fn, "similarity(...)", scores)
    if tuple(scores.shape) != shape:
        raise InputError(
            f"{fn}: 'similarity' must return (B, 1 + K) = {shape} scores for a (B, D) and the "
            f"candidates (B, 1 + K, D); got shape {tuple(scores.shape)}."
        )
    if not bool(torch.isfinite(scores).all()):
        raise InputError(f"{fn}: 'similarity' returned NaN/inf scores; check the similarity function.")
    return scores


def split_embedding_similarity(a: torch.Tensor, c: torch.Tensor, blank: torch.Tensor | bool) -> torch.Tensor:
    """TDoc's crop similarity over an embedding split into background and foreground halves.

    With a = [a^0 | a^1] (first D/2: background, second D/2: foreground), each half separately
    L2-normalised (eps 1e-12), and beta = 1 where the pair involves a blank (background-only)
    crop, else 0:

        s(a, c) = 1/2 (1 + beta) <a^0, c^0> + 1/2 (1 - beta) <a^1, c^1>

    so blank pairs are scored on the background half only and text pairs average both halves.

    Args:
        a: (B, D) anchor embeddings, D even.
        c: (B, C, D) candidates per anchor (-> (B, C) scores), or (B, D) one candidate per anchor
            (-> (B,) scores, e.g. to accept a pair at use time when s >= 0.78).
        blank: bool tensor broadcastable to the score shape (e.g. (B, 1) "the anchor is blank",
            (B, C) per pair, or anchor_blank[:, None] | candidate_blank), or a Python bool for all.

    Returns:
        The scores, in the dtype of a and c (float32 for half inputs).

    Raises:
        InputError: odd D, shape mismatch, NaN/inf, an all-zero half (its cosine is undefined),
            a blank that is not bool or does not broadcast.

    Reference: TDoc, arXiv 2602.17322.
    """
    fn = "split_embedding_similarity"
    check_same_device(fn, a=a, c=c, blank=blank)
    a = check_embeddings(fn, "a", a)
    batch, dim = a.shape
    c = check_embeddings(fn, "c", c, shape="(B, C, D) or (B, D)", ndims=(2, 3), rows=batch, dim=dim, like="a")
    if dim % 2:
        raise InputError(
            f"{fn}: the embedding size D must be even (halves: background, foreground); got D={dim}. "
            f"Use an encoder with an even output size (TDoc: 192)."
        )
    score_shape = tuple(c.shape[:-1])
    beta = _beta(fn, blank, score_shape, a.device)
    dtype = compute_dtype(a, c)
    half = dim // 2
    a_halves = a.to(dtype).split(half, dim=-1)
    c_halves = c.to(dtype).split(half, dim=-1)
    for name, halves in (("a", a_halves), ("c", c_halves)):
        for part, h in zip(("background", "foreground"), halves, strict=True):
            check_nonzero_rows(fn, f"{name} ({part} half)", h.reshape(-1, half))
    a0, a1 = (F.normalize(h, dim=-1, eps=1e-12) for h in a_halves)
    c0, c1 = (F.normalize(h, dim=-1, eps=1e-12) for h in c_halves)
    if c.dim() == 3:
        a0, a1 = a0[:, None, :], a1[:, None, :]
    background = (a0 * c0).sum(-1)
    foreground = (a1 * c1).sum(-1)
    beta = beta.to(dtype)
    return 0.5 * (1 + beta) * background + 0.5 * (1 - beta) * foreground


def _beta(fn: str, blank: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The blank flags as a bool tensor of the score shape."""
    if isinstance(blank, bool):
        return torch.full(shape, blank, dtype=torch.bool, device=device)
    blank = check_tensor(fn, "blank", blank, floating=False)
    if blank.dtype != torch.bool:
        raise InputError(
            f"{fn}: argument 'blank' must be a bool tensor (True = the pair involves a blank crop); "
            f"got dtype {blank.dtype}."
        )
    try:
        broadcast = torch.broadcast_shapes(tuple(blank.shape), shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise InputError(
            f"{fn}: argument 'blank' of shape {tuple(blank.shape)} must broadcast to the score "
            f"shape {shape} (e.g. (B, 1) per anchor or (B, C) per pair)."
        )
    return blank.expand(shape)
