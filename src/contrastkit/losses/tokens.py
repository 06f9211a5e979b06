"""MoBind's sub-sample contrast: token-level InfoNCE within a clip, and multi-positive
local -> global InfoNCE (arXiv 2602.19004)."""

from __future__ import annotations

import torch

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_mask,
    check_same_device,
    check_scale,
)
from contrastkit.functional import (
    compute_dtype,
    multi_positive_cross_entropy,
    reduce_anchor_losses,
    scaled_logits,
)


def token_info_nce(
    a_tokens: torch.Tensor,
    b_tokens: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric token InfoNCE whose negatives are the other time steps of the same sample.

    For each sample b, l_b = s * A[b] B[b]^T (N x N) and, with target the same time index,

        L = 1/2 [ mean_{b,n} CE(l_b[n, :], n) + mean_{b,n} CE(l_b[:, n], n) ]

    (each direction averaged over its B*N rows). Samples never meet each other.

    Args:
        a_tokens: (B, N, D) token embeddings of one modality, used as given (normalise first).
        b_tokens: (B, N, D) token embeddings of the other modality, token n paired with a's n.
        scale: multiplicative logit scale s >= 0 (a float or a 0-d tensor that may carry gradient).
        mask: (B, N) bool, True for real tokens; padded tokens are neither rows nor candidates.
            A row needs at least one other real token of its sample as a negative.
        reduction: ``"mean"``, ``"sum"`` (over the rows of both directions, halved) or ``"none"``
            -> (2, B, N) per-row losses (a->b, b->a), NaN at padded tokens.

    Reference: MoBind, arXiv 2602.19004 (stage 1, L_tok); METHODS.md 3.16.
    """
    fn = "token_info_nce"
    check_same_device(fn, a_tokens=a_tokens, b_tokens=b_tokens, mask=mask)
    a = check_embeddings(fn, "a_tokens", a_tokens, shape="(B, N, D)", ndims=(3,))
    b = check_embeddings(fn, "b_tokens", b_tokens, shape="(B, N, D)", ndims=(3,))
    if a.shape != b.shape:
        raise InputError(
            f"{fn}: 'a_tokens' and 'b_tokens' must have the same shape (B, N, D), token n of one paired "
            f"with token n of the other; got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    scale = check_scale(fn, "scale", scale)
    n_samples, n_tokens, _ = a.shape
    if mask is None:
        check_has_negatives(fn, n_tokens, f"each sample has N={n_tokens} token(s)")
        valid_token = torch.ones(n_samples, n_tokens, dtype=torch.bool, device=a.device)
    else:
        valid_token = check_mask(fn, "mask", mask, (n_samples, n_tokens))
    dtype = compute_dtype(a, b)
    logits = scale * (a.to(dtype) @ b.to(dtype).transpose(1, 2))  # (B, N, N): l_b = s A[b] B[b]^T
    same_step = torch.eye(n_tokens, dtype=torch.bool, device=a.device).expand(n_samples, -1, -1)
    padded = ~(valid_token[:, :, None] & valid_token[:, None, :])
    per_direction = []
    for direction in (logits, logits.transpose(1, 2)):
        loss, valid = multi_positive_cross_entropy(
            direction.reshape(-1, n_tokens),
            same_step.reshape(-1, n_tokens),
            padded.reshape(-1, n_tokens),
        )
        per_direction.append((loss, valid))
    if reduction == "none":
        return torch.stack([reduce_anchor_losses(fn, lo, va, "none") for lo, va in per_direction]).reshape(
            2, n_samples, n_tokens
        )
    return 0.5 * sum(reduce_anchor_losses(fn, lo, va, reduction) for lo, va in per_direction)


def multi_positive_info_nce(
    anchor: torch.Tensor,
    candidates: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    detach_anchor: bool = True,
) -> torch.Tensor:
    """MoBind's local -> global loss: each global anchor against all B*S local candidates.

    With g_b the anchor (detached by default) and l_{b,s} the S local embeddings of sample b:

        anchor -> local:  L_b = LSE_{b',s} s<g_b, l_{b',s}> - [LSE_s s<g_b, l_{b,s}> - log S]
        local -> anchor:  L_{b,s} = CE(s * l_{b,s} G^T, b)
        L = 1/2 [ mean_b L_b + mean_{b,s} L_{b,s} ]

    The first term is METHODS.md 1.1's ``"lse"`` mode with count normalisation.

    Args:
        anchor: (B, D) global embeddings (MoBind: the pose global embedding), used as given.
        candidates: (B, S, D) local embeddings (MoBind: the S projected limb IMU embeddings).
        scale: multiplicative logit scale s >= 0.
        detach_anchor: stop the gradient into ``anchor`` (MoBind's stopgrad on g); both terms see
            the detached anchor.

    Reference: MoBind, arXiv 2602.19004 (stage 2); METHODS.md 3.16.
    """
    fn = "multi_positive_info_nce"
    check_same_device(fn, anchor=anchor, candidates=candidates)
    anchor = check_embeddings(fn, "anchor", anchor)
    candidates = check_embeddings(
        fn, "candidates", candidates, shape="(B, S, D)", ndims=(3,), rows=anchor.shape[0],
        dim=anchor.shape[1], like="anchor",
    )  # fmt: skip
    scale = check_scale(fn, "scale", scale)
    check_flag(fn, "detach_anchor", detach_anchor)
    n, per_sample, dim = candidates.shape
    check_has_negatives(fn, n, f"the batch has B={n} sample(s)")
    g = anchor.detach() if detach_anchor else anchor
    local = candidates.reshape(n * per_sample, dim)
    owner = torch.arange(n, device=anchor.device).repeat_interleave(per_sample)
    logits = scaled_logits(g, local, scale)  # (B, B*S)
    owned = owner[None, :] == torch.arange(n, device=anchor.device)[:, None]
    to_local, valid = multi_positive_cross_entropy(logits, owned, mode="lse", count_normalize=True)
    to_anchor, valid_t = multi_positive_cross_entropy(logits.T, owned.T)
    return 0.5 * (reduce_anchor_losses(fn, to_local, valid) + reduce_anchor_losses(fn, to_anchor, valid_t))
