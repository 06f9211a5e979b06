"""Multimodal InfoNCE: the sum of symmetric CLIP losses over pairs of modalities, one scale each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
from torch import nn

from contrastkit.errors import InputError, check_embeddings, check_flag
from contrastkit.losses.clip import clip_loss

Pair = tuple[str, str]


def resolve_pairs(fn: str, modalities: Sequence[str], pairs: object) -> list[Pair]:
    """The modality pairs to use: every unordered pair (in the given order) when ``pairs`` is None."""
    modalities = list(modalities)
    if pairs is None:
        return list(combinations(modalities, 2))
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not pairs:
        raise InputError(
            f"{fn}: argument 'pairs' must be a non-empty list of (modality, modality) tuples, e.g. "
            f"[('ts', 'image')], or None for every pair; got {pairs!r}."
        )
    out: list[Pair] = []
    seen: set[frozenset[str]] = set()
    for pair in pairs:
        if (
            isinstance(pair, str)
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(m, str) for m in pair)
        ):
            raise InputError(f"{fn}: each entry of 'pairs' must be a (str, str) tuple; got {pair!r}.")
        a, b = pair
        unknown = [m for m in (a, b) if m not in modalities]
        if unknown:
            raise InputError(f"{fn}: 'pairs' names unknown modalities {unknown}; known: {modalities}.")
        if a == b:
            raise InputError(f"{fn}: pair {pair!r} in 'pairs' pairs a modality with itself.")
        key = frozenset(pair)
        if key in seen:
            raise InputError(f"{fn}: pair {pair!r} appears twice in 'pairs' (in either order).")
        seen.add(key)
        out.append((a, b))
    return out


def _pair_scale(fn: str, scales: object, pair: Pair) -> float | torch.Tensor:
    """The scale of one pair from a scalar (shared) or a mapping keyed by (a, b) or (b, a)."""
    if isinstance(scales, float | int | torch.Tensor) and not isinstance(scales, bool):
        return scales
    if not isinstance(scales, Mapping):
        raise InputError(
            f"{fn}: argument 'scales' must be a float / one-element tensor (one scale for every pair) or "
            f"a dict (a, b) -> scale (float, tensor or LogitScale); got {type(scales).__name__}."
        )
    a, b = pair
    found = [key for key in ((a, b), (b, a)) if key in scales]
    if not found:
        raise InputError(
            f"{fn}: argument 'scales' has no scale for pair {pair!r}; it has {list(scales)}. "
            f"Give one scale per pair."
        )
    if len(found) == 2:
        raise InputError(f"{fn}: argument 'scales' holds both {(a, b)!r} and {(b, a)!r}; keep one.")
    value = scales[found[0]]
    return value() if isinstance(value, nn.Module) else value


def multimodal_info_nce(
    embeddings: Mapping[str, torch.Tensor],
    scales: float | torch.Tensor | Mapping[Pair, float | torch.Tensor | nn.Module],
    pairs: Sequence[Pair] | None = None,
    *,
    label_smoothing: float = 0.0,
    sample_ids: torch.Tensor | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[Pair, torch.Tensor]]:
    """Sum of pairwise symmetric CLIP losses over chosen modality pairs, one scale per pair.

        L = sum_{(a, b) in pairs} clip_loss(z_a, z_b, s_ab)

    Args:
        embeddings: modality -> (B, D) embeddings, row i of every modality describing item i
            (used as given; normalise them first).
        scales: one multiplicative scale per pair: a dict (a, b) -> float, 0-d tensor or module
            returning one (``LogitScale``); either order of a key is accepted. A single float or
            tensor is shared by every pair. Keys of pairs not in use are ignored.
        pairs: (a, b) tuples to sum over; None takes every unordered pair, in the order of
            ``embeddings`` (three modalities give three pairs).
        label_smoothing, sample_ids: passed to every ``clip_loss``.
        return_terms: also return {pair: its clip_loss} (for logging).

    Returns:
        The scalar sum (and the per-pair terms when ``return_terms``).

    Example:
        >>> z = {m: F.normalize(torch.randn(8, 32), dim=1) for m in ("ts", "image", "text")}
        >>> scales = {("ts", "image"): 14.3, ("ts", "text"): 14.3, ("image", "text"): 14.3}
        >>> loss = multimodal_info_nce(z, scales)

    Reference: the trimodal alignment study (arXiv 2602.19367), METHODS 3.3.
    """
    fn = "multimodal_info_nce"
    if not isinstance(embeddings, Mapping) or len(embeddings) < 2:
        raise InputError(
            f"{fn}: argument 'embeddings' must be a dict modality -> (B, D) tensor with at least two "
            f"modalities; got {embeddings!r:.120}."
        )
    rows = None
    for name, z in embeddings.items():
        z = check_embeddings(fn, f"embeddings[{name!r}]", z, rows=rows, like="the first modality")
        rows = z.shape[0]
    check_flag(fn, "return_terms", return_terms)
    terms: dict[Pair, torch.Tensor] = {}
    for a, b in resolve_pairs(fn, list(embeddings), pairs):
        za, zb = embeddings[a], embeddings[b]
        if za.shape[1] != zb.shape[1]:
            raise InputError(
                f"{fn}: embeddings[{a!r}] and embeddings[{b!r}] must share the embedding size to be "
                f"paired; got {tuple(za.shape)} and {tuple(zb.shape)}."
            )
        scale = _pair_scale(fn, scales, (a, b))
        terms[(a, b)] = clip_loss(za, zb, scale, label_smoothing=label_smoothing, sample_ids=sample_ids)
    total = sum(terms.values())
    return (total, terms) if return_terms else total
