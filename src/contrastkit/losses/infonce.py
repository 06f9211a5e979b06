"""InfoNCE (one direction) and its hard-negative reweighted form (HCL)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from contrastkit.distributed import agreement, resolve_mode
from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_mask,
    check_range,
    check_same_device,
    check_scale,
)
from contrastkit.functional import (
    MULTI_POSITIVE_MODES,
    REDUCTIONS,
    choose_tiling,
    compute_dtype,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
    scaled_logits,
    softplus,
    tiled_logsumexp,
)


def tiled_diagonal_info_nce(
    q: torch.Tensor,
    keys: torch.Tensor,
    scale: float | torch.Tensor,
    chunk: int,
    extra_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-query InfoNCE with key i the positive of query i, from tiled row LSEs.

        L_i = LSE_j (scale <q_i, keys_j>  u  extra_logits_i) - scale <q_i, keys_i>

    q: (B, D), keys: (M >= B, D) in the compute dtype; extra_logits: (B, K) per-query logits
    added to the candidates. Returns (B,).
    """
    r, _ = tiled_logsumexp(q, keys, scale, chunk_size=chunk)
    if extra_logits is not None:
        r = torch.logaddexp(r, torch.logsumexp(extra_logits, dim=1))
    return r - scale * (q * keys[: q.shape[0]]).sum(1)


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    positive_mask: torch.Tensor | None = None,
    extra_negatives: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_mask: torch.Tensor | None = None,
    multi_positive: str = "mean",
    chunk_size: int | None = None,
    distributed: str | None = None,
) -> torch.Tensor:
    """One-directional InfoNCE: each query scores its positives against all candidates.

    l_ij = scale * <q_i, c_j> over the candidates c = [k ; extra_negatives], and
    L_i = -log( sum_{p in P_i} exp l_ip / sum_{j in A_i} exp l_ij )  for one positive; with
    several positives ``multi_positive`` chooses ``"mean"`` (soft-target CE, the default),
    ``"lse"`` or ``"exclusive"`` (see ``functional.multi_positive_cross_entropy``).

    Args:
        q: (B, D) queries, used as given (normalise them first for cosine logits).
        k: (M, D) keys.
        scale: multiplicative logit scale s >= 0 (temperature tau = 1/s); float or 0-d tensor.
        positive_mask: (B, M) bool; default the diagonal (needs M >= B).
        extra_negatives: (K, D) negatives shared by every query, or (B, K, D) per query;
            they add K columns that are never positives.
        reduction: ``"mean"`` over queries with a positive, ``"sum"``, or ``"none"`` -> (B,)
            with NaN at queries without a positive.
        ignore_mask: (B, M) bool; True removes key j from query i's candidates.
        multi_positive: ``"mean"`` | ``"lse"`` | ``"exclusive"``.
        chunk_size: ``None`` tiles automatically once the (B, M + K) logits outgrow
            ``PLAIN_LOGITS_BUDGET_BYTES``; an int >= 1 tiles with that many rows; 0 never tiles.
            The tiled path takes the default diagonal positives without masks.
        distributed: under ``torch.distributed``, ``"local"`` (this rank's queries against every
            rank's keys and shared negatives; each rank's first B_r keys are its queries'
            positives) or ``"gather"`` (the whole loss on every rank); masks have no distributed
            form. With ``"local"``, ``reduction="mean"`` / ``"sum"`` return this rank's share
            (their mean over ranks is the loss) and ``"none"`` this rank's queries' losses.

    Returns:
        The loss (0-d, or (B,) for ``reduction="none"``), in float32 (float64 for float64 input).

    Raises:
        InputError: bad shapes, NaN/inf, empty batch, negative scale, bad mask.
        NoPositivePairsError: no query has a positive.

    Example:
        >>> q, k = torch.nn.functional.normalize(torch.randn(8, 32), dim=1).chunk(2)
        >>> loss = info_nce(q, k, scale=1 / 0.07)

    Reference: van den Oord et al. 2018, arXiv 1807.03748.
    """
    fn = "info_nce"
    mode = resolve_mode(fn, distributed)
    with agreement(fn, mode) as agreed:
        check_same_device(
            fn,
            q=q,
            k=k,
            scale=scale,
            extra_negatives=extra_negatives,
            positive_mask=positive_mask,
            ignore_mask=ignore_mask,
        )
        q = check_embeddings(fn, "q", q)
        k = check_embeddings(fn, "k", k, dim=q.shape[1], like="q")
        scale = check_scale(fn, "scale", scale)
        check_choice(fn, "multi_positive", multi_positive, MULTI_POSITIVE_MODES)
        check_choice(fn, "reduction", reduction, REDUCTIONS)
        batch, n_keys = q.shape[0], k.shape[0]
        if positive_mask is None and n_keys < batch:
            raise InputError(
                f"{fn}: the default positives are the diagonal, which needs at least as many keys as "
                f"queries; got {batch} queries and {n_keys} keys. Pass positive_mask=(B, M)."
            )
        if mode is not None and (positive_mask is not None or ignore_mask is not None):
            raise InputError(
                f"{fn}: 'positive_mask' and 'ignore_mask' are masks over one process's batch; they have "
                f"no distributed form (the positives are each rank's diagonal)."
            )
        if positive_mask is not None:
            positive_mask = check_mask(fn, "positive_mask", positive_mask, (batch, n_keys))
        if ignore_mask is not None:
            ignore_mask = check_mask(fn, "ignore_mask", ignore_mask, (batch, n_keys))
        shared_negatives = per_query_negatives = None
        if extra_negatives is not None:
            extra_negatives = check_embeddings(
                fn,
                "extra_negatives",
                extra_negatives,
                shape="(K, D) or (B, K, D)",
                ndims=(2, 3),
                dim=q.shape[1],
                like="q",
            )
            if extra_negatives.dim() == 3 and extra_negatives.shape[0] != batch:
                raise InputError(
                    f"{fn}: per-query 'extra_negatives' must have shape (B={batch}, K, D); got "
                    f"{tuple(extra_negatives.shape)}."
                )
            if extra_negatives.dim() == 3:
                per_query_negatives = extra_negatives
            else:
                shared_negatives = extra_negatives
        agreed.batch = q
    layout = agreed.layout

    def run(queries, keys, shared, per_query, how, positive=None, ignore=None):
        return _info_nce(
            fn, queries, keys, scale, positive, ignore, shared, per_query, how, multi_positive, chunk_size
        )

    if mode is None:
        return run(q, k, shared_negatives, per_query_negatives, reduction, positive_mask, ignore_mask)
    key_layout = layout.resized(k.shape[0])
    if shared_negatives is not None:
        shared_negatives = layout.resized(shared_negatives.shape[0]).gather(shared_negatives)
    if mode == "gather":
        keys = key_layout.gather(k)[_positives_first(key_layout, layout.sizes).to(k.device)]
        if per_query_negatives is not None:
            per_query_negatives = layout.gather(per_query_negatives)
        return run(layout.gather(q), keys, shared_negatives, per_query_negatives, reduction)
    how = "none" if reduction == "none" else "sum"
    local = run(q, key_layout.gather_local_first(k), shared_negatives, per_query_negatives, how)
    if reduction == "mean":
        return layout.share(fn, local, layout.total)
    return local * layout.world if reduction == "sum" else local


def _positives_first(key_layout, query_sizes) -> torch.Tensor:
    """Index that puts each rank's first B_r keys (its queries' positives) first, in rank order,
    then the remaining keys: the gathered queries' positives become the diagonal."""
    spans = [(key_layout.rows_of(r), n) for r, n in enumerate(query_sizes)]
    first = [torch.arange(span.start, span.start + n) for span, n in spans]
    rest = [torch.arange(span.start + n, span.stop) for span, n in spans]
    return torch.cat(first + rest)


def _info_nce(
    fn,
    q,
    k,
    scale,
    positive_mask,
    ignore_mask,
    shared_negatives,
    per_query_negatives,
    reduction,
    multi_positive,
    chunk_size,
):
    """``info_nce`` on validated inputs, on this process."""
    batch, n_keys = q.shape[0], k.shape[0]
    extra_negatives = shared_negatives if per_query_negatives is None else per_query_negatives
    dtype = compute_dtype(q, k) if extra_negatives is None else compute_dtype(q, k, extra_negatives)
    n_candidates = n_keys + (0 if extra_negatives is None else extra_negatives.shape[-2])
    extra = None
    if per_query_negatives is not None:
        extra = scale * torch.einsum("bd,bkd->bk", q.to(dtype), per_query_negatives.to(dtype))
    plain_only = positive_mask is not None or ignore_mask is not None or multi_positive != "mean"
    unsupported = "positive_mask, ignore_mask or multi_positive" if plain_only else None
    chunk = choose_tiling(fn, chunk_size, batch, n_candidates, dtype, unsupported)
    if chunk:
        check_has_negatives(fn, n_candidates, f"there are {n_candidates} candidate(s)")
        keys = k.to(dtype) if shared_negatives is None else torch.cat([k, shared_negatives]).to(dtype)
        loss = tiled_diagonal_info_nce(q.to(dtype), keys, scale, chunk, extra)
        return reduce_anchor_losses(fn, loss, torch.ones_like(loss, dtype=torch.bool), reduction)

    logits = scaled_logits(q, k, scale)
    if shared_negatives is not None:
        extra = scaled_logits(q, shared_negatives, scale)
    if extra is not None:
        logits = torch.cat([logits, extra], dim=1)

    if positive_mask is None and ignore_mask is None and multi_positive == "mean":
        check_has_negatives(fn, logits.shape[1], f"there are {logits.shape[1]} candidate(s)")
        targets = torch.arange(batch, device=q.device)
        return F.cross_entropy(logits, targets, reduction=reduction)

    if positive_mask is None:
        positive_mask = torch.eye(batch, n_keys, dtype=torch.bool, device=q.device)
    n_extra = logits.shape[1] - n_keys
    positive_mask = F.pad(positive_mask, (0, n_extra), value=False)
    if ignore_mask is not None:
        ignore_mask = F.pad(ignore_mask, (0, n_extra), value=False)
    loss, valid = multi_positive_cross_entropy(logits, positive_mask, ignore_mask, mode=multi_positive)
    return reduce_anchor_losses(fn, loss, valid, reduction)


def hard_negative_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    beta: float = 1.0,
    tau_plus: float = 0.0,
    symmetric: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Hard-negative contrastive loss (HCL): negatives reweighted by hardness, optionally debiased.

    With positive logit l+_i and N negative logits l-_ij (l = scale * <., .>):

        Ng_i = max( [N sum_j e^{(1+beta) l-_ij} / sum_j e^{beta l-_ij} - tau_plus N e^{l+_i}]
                    / (1 - tau_plus),  N e^{-scale} )
        L_i  = -log( e^{l+_i} / (e^{l+_i} + Ng_i) )

    evaluated in log space. The floor N e^{-scale} is the smallest sum of negatives for
    unit-norm embeddings (e^{-1/t} in the paper); for unnormalised inputs it is not a bound,
    so normalise q and k. beta = tau_plus = 0 gives plain InfoNCE
    (NT-Xent when ``symmetric=True``). The importance weights are not detached.

    Args:
        q, k: (B, D) the two views / modalities, paired by row, used as given (normalise them).
        scale: multiplicative logit scale (1/t; the paper's t = 0.5 is scale 2).
        beta: hardness concentration >= 0.
        tau_plus: class prior of false negatives, in [0, 1).
        symmetric: True (the paper's SimCLR setting) -> 2B anchors, each with the 2B - 2 other
            embeddings of both sets as negatives; False -> B anchors q_i against k only (B - 1
            negatives), the cross-modal setting.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per anchor).

    Reference: Robinson et al. 2021, "Contrastive Learning with Hard Negative Samples",
    arXiv 2010.04592.
    """
    fn = "hard_negative_info_nce"
    check_same_device(fn, q=q, k=k, scale=scale)
    q = check_embeddings(fn, "q", q)
    k = check_embeddings(fn, "k", k, rows=q.shape[0], dim=q.shape[1], like="q")
    scale = check_scale(fn, "scale", scale)
    beta = check_range(fn, "beta", beta, 0.0, math.inf)
    tau_plus = check_range(fn, "tau_plus", tau_plus, 0.0, 1.0, high_open=True)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    symmetric = check_flag(fn, "symmetric", symmetric)
    batch = q.shape[0]
    if batch < 2:
        raise InputError(f"{fn}: needs at least 2 pairs to have a negative; got a batch of {batch}.")

    if symmetric:
        z = torch.cat([q, k])
        logits = scaled_logits(z, z, scale)
        rows = torch.arange(2 * batch, device=q.device)
        partner = (rows + batch) % (2 * batch)
        negative = ~torch.eye(2 * batch, dtype=torch.bool, device=q.device)
        negative[rows, partner] = False
    else:
        logits = scaled_logits(q, k, scale)
        rows = partner = torch.arange(batch, device=q.device)
        negative = ~torch.eye(batch, dtype=torch.bool, device=q.device)
    positive_logit = logits[rows, partner]
    negatives = logits[negative].view(logits.shape[0], -1)
    n_neg = negatives.shape[1]

    log_reweighted = (
        math.log(n_neg)
        + torch.logsumexp((1 + beta) * negatives, dim=1)
        - torch.logsumexp(beta * negatives, dim=1)
    )
    top = torch.maximum(positive_logit, log_reweighted)
    debiased = torch.exp(log_reweighted - top) - tau_plus * n_neg * torch.exp(positive_logit - top)
    above_zero = debiased > 0
    log_ng = torch.where(
        above_zero,
        top + torch.log(torch.where(above_zero, debiased, 1.0)) - math.log1p(-tau_plus),
        float("-inf"),
    )
    log_floor = math.log(n_neg) - scale
    log_ng = torch.maximum(log_ng, torch.as_tensor(log_floor, dtype=log_ng.dtype, device=q.device))
    loss = softplus(log_ng - positive_logit)
    return reduce_anchor_losses(fn, loss, torch.ones_like(loss, dtype=torch.bool), reduction)
