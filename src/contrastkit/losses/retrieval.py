"""Retrieval losses: multiple-negatives ranking (MNRL, with GISTEmbed masking) and MarginMSE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from contrastkit.distributed import Layout, agreement, resolve_mode
from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_finite,
    check_flag,
    check_has_negatives,
    check_nonzero_rows,
    check_range,
    check_same_device,
    check_scale,
    check_tensor,
)
from contrastkit.functional import choose_tiling, compute_dtype, cosine_logits
from contrastkit.losses.infonce import tiled_diagonal_info_nce


def mnrl(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    scale: float | torch.Tensor = 20.0,
    guide: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    margin: float = 0.0,
    margin_strategy: str = "absolute",
    symmetric: bool = False,
    chunk_size: int | None = None,
    distributed: str | None = None,
) -> torch.Tensor:
    """Multiple-negatives ranking loss with optional mined negatives and GISTEmbed masking.

    Each anchor a_i scores the columns [p_1..p_B | n_{.,1} | ... | n_{.,M}] (every positive of
    the batch, then one block per mined-negative slot, as sentence-transformers lays them out)
    with l_ij = scale * cos(a_i, c_j), and L = mean_i CE(l_i, i). All-zero rows raise: their
    cosine is undefined.

    ``symmetric=True`` adds the document->query direction to the same partition (one softmax,
    sentence-transformers' ``directions=("query_to_doc", "doc_to_query")``, ``partition_mode="joint"``):
    row i also holds the columns l'_ij = scale * cos(p_i, a_j) over every anchor, so

        L = mean_i [ log( sum_j exp l_ij + sum_j exp l'_ij ) - l_ii ].

    With ``guide = (g_a, g_p, g_n)`` (a frozen guide model's embeddings of the same texts),
    the GISTEmbed loss adds the anchor-anchor and positive-positive blocks and removes every
    candidate the guide rates closer than the true pair (minus the margin):

        masked where g_ij > g_ii - m            (``margin_strategy="absolute"``)
                  or g_ij > g_ii - |g_ii| m     (``"relative"``)

    never masking the true positive; self-similarities in the a-a and p-p blocks are always
    masked.

    Args:
        anchors: (B, D) query embeddings.
        positives: (B, D) their positives.
        negatives: (B, D) or (B, M, D) mined hard negatives of each anchor; every anchor sees all.
        scale: multiplicative scale on cosine similarities (20 as in sentence-transformers;
            GISTEmbed's temperature 0.01 is scale 100).
        guide: (g_a (B, G), g_p (B, G), g_n (B, G) / (B, M, G) or None) guide embeddings.
        margin: m >= 0.
        margin_strategy: ``"absolute"`` or ``"relative"``.
        symmetric: add the document->query columns (not with ``guide``, whose anchor-anchor and
            positive-positive blocks are its own symmetric terms).
        chunk_size: tiling as in ``info_nce`` (None: automatic; 0: never). GISTEmbed masking
            needs the plain path.
        distributed: under ``torch.distributed``, ``"local"`` (this rank's anchors against
            every rank's positives and negatives, and for GISTEmbed every rank's anchors and
            positives) or ``"gather"`` (the whole loss on every rank); see
            ``contrastkit.distributed``. None: this process's batch only.

    References: Henderson et al. 2017, arXiv 1705.00652; Solatorio 2024, "GISTEmbed",
    arXiv 2402.16829.
    """
    fn = "mnrl"
    mode = resolve_mode(fn, distributed)
    with agreement(fn, mode) as agreed:
        if guide is not None and (not isinstance(guide, (tuple, list)) or len(guide) != 3):
            raise InputError(f"{fn}: 'guide' must be a tuple (g_anchors, g_positives, g_negatives or None).")
        guides = {f"guide[{i}]": g for i, g in enumerate(guide or ())}
        check_same_device(
            fn, anchors=anchors, positives=positives, negatives=negatives, scale=scale, **guides
        )
        anchors = check_embeddings(fn, "anchors", anchors)
        batch, dim = anchors.shape
        positives = check_embeddings(fn, "positives", positives, rows=batch, dim=dim, like="anchors")
        scale = check_scale(fn, "scale", scale)
        check_choice(fn, "margin_strategy", margin_strategy, ("absolute", "relative"))
        margin = check_range(fn, "margin", margin, 0.0, math.inf)
        check_flag(fn, "symmetric", symmetric)
        if symmetric and guide is not None:
            raise InputError(
                f"{fn}: 'symmetric' cannot be combined with 'guide' (GISTEmbed adds its own anchor-anchor "
                f"and positive-positive blocks); pass symmetric=False or guide=None."
            )
        check_nonzero_rows(fn, "anchors", anchors)
        check_nonzero_rows(fn, "positives", positives)
        if negatives is not None:
            negatives = _negative_slots(fn, "negatives", negatives, batch, dim)
            check_nonzero_rows(fn, "negatives", negatives.reshape(-1, dim))
        if guide is not None:
            guide = _check_guide(fn, guide, negatives, batch)
        agreed.batch = anchors
    layout = agreed.layout or Layout.single(batch)
    if mode == "gather":
        anchors, positives = layout.gather(anchors), layout.gather(positives)
        negatives = None if negatives is None else layout.gather(negatives)
        if guide is not None:
            guide = tuple(None if g is None else layout.gather_values(g, local_first=False) for g in guide)
        layout = Layout.single(anchors.shape[0])
    columns = layout.gather_local_first(positives)
    if negatives is not None:
        columns = torch.cat([columns, _blocks(layout.gather(negatives))])
    check_has_negatives(fn, columns.shape[0], f"there are {columns.shape[0]} candidate(s)")
    if guide is None:
        rows = _mnrl_rows(fn, anchors, columns, scale, chunk_size)
        if symmetric:
            # both rows share the target logit l_ii, so the joint partition's loss is the
            # log-sum-exp of the two one-direction losses (exact on the plain and tiled paths)
            backward = _mnrl_rows(fn, positives, layout.gather_local_first(anchors), scale, chunk_size)
            rows = torch.logaddexp(rows, backward)
        total = rows.sum()
    else:
        total = _gist_sum(
            fn, layout, anchors, positives, columns, scale, guide, margin, margin_strategy, chunk_size
        )
    return layout.share(fn, total, layout.total)


def _negative_slots(fn: str, name: str, negatives: torch.Tensor, batch: int, dim: int | None) -> torch.Tensor:
    """(B, D) or (B, M, D) mined negatives, checked -> (B, M, D)."""
    negatives = check_embeddings(
        fn, name, negatives, shape="(B, D) or (B, M, D)", ndims=(2, 3), rows=batch, dim=dim
    )
    return negatives[:, None] if negatives.dim() == 2 else negatives


def _blocks(negatives: torch.Tensor) -> torch.Tensor:
    """(B, M, D) -> (M * B, D) in block order [n_.1 | ... | n_.M], as sentence-transformers lays them out."""
    return negatives.transpose(0, 1).reshape(-1, negatives.shape[-1])


def _check_guide(fn, guide, negatives, batch):
    """The guide embeddings (g_a (B, G), g_p (B, G), g_n (B, M, G) or None), checked."""
    g_a, g_p, g_n = guide
    g_a = check_embeddings(fn, "guide[0]", g_a, rows=batch)
    g_p = check_embeddings(fn, "guide[1]", g_p, rows=batch, dim=g_a.shape[1], like="guide[0]")
    if (g_n is None) != (negatives is None):
        raise InputError(f"{fn}: give guide negatives exactly when 'negatives' is given.")
    if g_n is not None:
        g_n = _negative_slots(fn, "guide[2]", g_n, batch, g_a.shape[1])
        if g_n.shape[1] != negatives.shape[1]:
            raise InputError(f"{fn}: guide[2] must hold as many negatives as 'negatives'.")
    return g_a, g_p, g_n


def _mnrl_rows(fn, anchors, columns, scale, chunk_size):
    """(B,) CE(scale cos(a_i, columns), i): columns' first B rows are the anchors' positives."""
    batch = anchors.shape[0]
    dtype = compute_dtype(anchors, columns)
    chunk = choose_tiling(fn, chunk_size, batch, columns.shape[0], dtype)
    if chunk:
        unit_anchors = F.normalize(anchors.to(dtype), dim=1)
        unit_columns = F.normalize(columns.to(dtype), dim=1)
        return tiled_diagonal_info_nce(unit_anchors, unit_columns, scale, chunk)
    logits = cosine_logits(anchors, columns, scale)
    return F.cross_entropy(logits, torch.arange(batch, device=anchors.device), reduction="none")


def _gist_sum(fn, layout, anchors, positives, columns, scale, guide, margin, margin_strategy, chunk_size):
    """GISTEmbed's summed loss of this rank's anchors: the [positives | negatives], anchor-anchor
    and positive-positive blocks over every rank's rows, less what the guide rates closer than
    the true pair (the guide embeddings are gathered without gradient)."""
    choose_tiling(
        fn,
        chunk_size,
        anchors.shape[0],
        columns.shape[0],
        compute_dtype(anchors),
        "GISTEmbed 'guide' masking",
    )
    g_a, g_p, g_n = guide
    g_columns = layout.gather_values(g_p)
    if g_n is not None:
        g_columns = torch.cat([g_columns, _blocks(layout.gather_values(g_n, local_first=False))])
    guide_sim = cosine_logits(g_a, g_columns)
    guide_positive = guide_sim.diagonal()[:, None]
    slack = margin if margin_strategy == "absolute" else guide_positive.abs() * margin
    threshold = guide_positive - slack
    rows, total = anchors.shape[0], layout.total
    self_pair = torch.eye(rows, total, dtype=torch.bool, device=anchors.device)
    false_negative = guide_sim > threshold
    false_negative[:, :total] &= ~self_pair
    all_anchors, all_positives = layout.gather_local_first(anchors), layout.gather_local_first(positives)
    g_all_anchors = layout.gather_values(g_a)
    anchor_anchor = cosine_logits(anchors, all_anchors, scale)
    positive_positive = cosine_logits(positives, all_positives, scale)
    masked = torch.cat(
        [
            cosine_logits(anchors, columns, scale).masked_fill(false_negative, float("-inf")),
            anchor_anchor.masked_fill(
                (cosine_logits(g_a, g_all_anchors) > threshold) | self_pair, float("-inf")
            ),
            positive_positive.masked_fill(
                (cosine_logits(g_p, layout.gather_values(g_p)) > threshold) | self_pair, float("-inf")
            ),
        ],
        dim=1,
    )
    return F.cross_entropy(masked, torch.arange(rows, device=anchors.device), reduction="sum")


def margin_mse(
    s_pos: torch.Tensor, s_neg: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor
) -> torch.Tensor:
    """MarginMSE: match the student's score margins to the teacher's.

        L = mean [ (s_pos - s_neg) - (t_pos - t_neg) ]^2

    averaged over queries and, with several negatives per query, over the negatives.
    Student scores should be dot products of unnormalised embeddings (a cosine cannot express
    margins above 2).

    Args:
        s_pos: (B,) student scores of (query, positive).
        s_neg: (B,) or (B, M) student scores of (query, negative).
        t_pos: (B,) teacher scores, same shape as s_pos.
        t_neg: teacher scores, same shape as s_neg.

    Reference: Hofstatter et al. 2020, arXiv 2010.02666.
    """
    fn = "margin_mse"
    named = {"s_pos": s_pos, "s_neg": s_neg, "t_pos": t_pos, "t_neg": t_neg}
    check_same_device(fn, **named)
    for name, value in named.items():
        check_tensor(fn, name, value)
        check_finite(fn, name, value)
    if s_pos.dim() != 1 or s_pos.shape[0] == 0:
        raise InputError(f"{fn}: 's_pos' must have shape (B,) with B >= 1; got {tuple(s_pos.shape)}.")
    if s_neg.dim() not in (1, 2) or s_neg.shape[0] != s_pos.shape[0] or s_neg.numel() == 0:
        raise InputError(
            f"{fn}: 's_neg' must have shape (B,) or (B, M) with B={s_pos.shape[0]}; got {tuple(s_neg.shape)}."
        )
    for student, teacher in (("s_pos", "t_pos"), ("s_neg", "t_neg")):
        if named[teacher].shape != named[student].shape:
            raise InputError(
                f"{fn}: '{teacher}' must have the shape of '{student}' {tuple(named[student].shape)}; "
                f"got {tuple(named[teacher].shape)}."
            )
    dtype = compute_dtype(*named.values())
    s_pos, s_neg, t_pos, t_neg = (t.to(dtype) for t in named.values())
    if s_neg.dim() == 2:
        s_pos, t_pos = s_pos[:, None], t_pos[:, None]
    return ((s_pos - s_neg) - (t_pos - t_neg)).pow(2).mean()
