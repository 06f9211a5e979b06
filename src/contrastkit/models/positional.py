"""Longer text context by stretching a learned positional embedding (Long-CLIP, arXiv 2403.15378).

The first ``keep`` rows (the well-trained short-caption positions) are copied; every later row is
interpolated ``factor`` times towards the next one, and the last row is extrapolated, so 77
positions become 248 (METHODS 3.1, as used by DeBias-CLIP).
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.errors import InputError, check_tensor
from contrastkit.losses.scale import mark_no_weight_decay


def stretched_length(length: int, keep: int = 20, factor: int = 4) -> int:
    """Rows after ``stretch_positional_embedding``: keep + factor * (length - keep) (77, 20, 4 -> 248)."""
    return keep + factor * (length - keep)


def stretch_positional_embedding(P: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """Stretch a positional table P (L, D) to (keep + factor * (L - keep), D); differentiable.

    With k = keep and f = factor:

        new[i]               = P[i]                                           i < k
        new[k + f*i + j]     = ((f - j)/f) P[k + i] + (j/f) P[k + i + 1]      0 <= i <= L - k - 2, 0 <= j < f
        new[k + f*(L-k-1)+j] = P[L-1] + (j/f) (P[L-1] - P[L-2])               0 <= j < f

    which for L = 77, k = 20, f = 4 is Long-CLIP's 248-row table (interior i <= 55, the last four
    rows 244..247). ``factor=1`` returns a copy of P.

    Args:
        P: (L, D) float tensor (or (1, L, D), as ``TextTransformer.pos_embed``; the output keeps
            the leading 1), L >= 2.
        keep: rows copied unchanged, 0 <= keep <= L - 1.
        factor: rows per original row after ``keep``, >= 1.

    Returns:
        (keep + factor * (L - keep), D) tensor of P's dtype and device; gradients flow to P.
    """
    fn = "stretch_positional_embedding"
    P = check_tensor(fn, "P", P)
    lead = P.dim() == 3 and P.shape[0] == 1
    if P.dim() != 2 and not lead:
        raise InputError(f"{fn}: argument 'P' must have shape (L, D) or (1, L, D); got {tuple(P.shape)}.")
    table = P[0] if lead else P
    length = table.shape[0]
    if length < 2:
        raise InputError(f"{fn}: argument 'P' needs at least 2 rows (L >= 2); got L = {length}.")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(f"{fn}: argument 'factor' must be an int >= 1; got {factor!r}.")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= length - 1:
        raise InputError(
            f"{fn}: argument 'keep' must be an int in [0, L - 1] = [0, {length - 1}]; got {keep!r}."
        )
    j = torch.arange(factor, dtype=table.dtype, device=table.device)
    w = (j / factor)[None, :, None]  # (1, f, 1): j/f
    lo, hi = table[keep : length - 1], table[keep + 1 : length]  # (L-k-1, D)
    interior = ((factor - j) / factor)[None, :, None] * lo[:, None] + w * hi[:, None]  # (L-k-1, f, D)
    tail = table[-1] + w[0] * (table[-1] - table[-2])  # (f, D)
    out = torch.cat([table[:keep], interior.reshape(-1, table.shape[1]), tail], dim=0)
    return out[None] if lead else out


def stretch_text_positions(tower: nn.Module, keep: int = 20, factor: int = 4) -> nn.Module:
    """Stretch a ``TextTransformer``'s positional embedding in place and raise its ``max_length``.

    The tower's ``pos_embed`` (1, L, D) is replaced by a new Parameter holding the stretched table
    (1, keep + factor * (L - keep), D) (still excluded from weight decay), and ``max_length`` is
    set to the new length. Build the tokenizer (and ``DeBiasCaptionAugment``'s ``ctx_len``) with
    that length. Any optimiser must be created after this call. Returns the tower.
    """
    fn = "stretch_text_positions"
    pos = getattr(tower, "pos_embed", None)
    if not isinstance(tower, nn.Module) or not isinstance(pos, nn.Parameter) or pos.dim() != 3:
        raise InputError(
            f"{fn}: argument 'tower' must be a TextTransformer-like module with a (1, L, D) Parameter "
            f"'pos_embed'; got {type(tower).__name__}."
        )
    with torch.no_grad():
        new = stretch_positional_embedding(pos.detach(), keep, factor).clone()
    tower.pos_embed = mark_no_weight_decay(nn.Parameter(new, requires_grad=pos.requires_grad))
    tower.max_length = new.shape[1]
    return tower
