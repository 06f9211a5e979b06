"""Private argument and input checks shared by the towers (messages name the tower and the argument)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from contrastkit.errors import InputError, check_int, check_scalar, check_tensor


def check_optional_dim(fn: str, name: str, value: object) -> int | None:
    """Check None or an int >= 1 (an optional output size)."""
    return None if value is None else check_int(fn, name, value, 1)


def check_heads(fn: str, dim: int, heads: int) -> None:
    """Multi-head attention splits ``dim`` evenly over ``heads``."""
    if dim % heads:
        raise InputError(
            f"{fn}: 'dim' ({dim}) must be divisible by 'heads' ({heads}); pick e.g. heads="
            f"{max(h for h in range(1, heads + 1) if dim % h == 0)}."
        )


def check_dense(fn: str, name: str, x: object, shape: str, channels: int) -> torch.Tensor:
    """Check a non-empty float tensor of shape (B, C, *spatial) with ``channels`` channels."""
    x = check_tensor(fn, name, x)
    ndim = shape.count(",") + 1
    if x.dim() != ndim:
        raise InputError(
            f"{fn}: argument '{name}' must have shape {shape}; got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}."
        )
    if x.numel() == 0:
        raise InputError(f"{fn}: argument '{name}' is empty (shape {tuple(x.shape)}).")
    if x.shape[1] != channels:
        raise InputError(
            f"{fn}: argument '{name}' must have {channels} channels (dim 1 of {shape}); got shape "
            f"{tuple(x.shape)}. Set in_channels to match the data."
        )
    return x


def check_text_batch(
    fn: str, batch: object, *, vocab_size: int | None, max_length: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a tokenised batch {"input_ids", "attention_mask"}: int (B, L), mask in {0, 1}.

    Every row needs at least one real token; ids must lie in [0, vocab_size) and L <= max_length
    (when those are given). Returns (input_ids, attention_mask as bool).
    """
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "attention_mask" not in batch:
        got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise InputError(
            f"{fn}: the text batch must be a dict with 'input_ids' and 'attention_mask' (int64, (B, L)), "
            f"as a tokenizer returns; got {got}."
        )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for name, t in (("input_ids", ids), ("attention_mask", mask)):
        t = check_tensor(fn, name, t, floating=False)
        if t.is_floating_point() or t.is_complex() or t.dim() != 2 or t.numel() == 0:
            raise InputError(
                f"{fn}: '{name}' must be a non-empty integer (or bool mask) tensor of shape (B, L); got "
                f"dtype {t.dtype}, shape {tuple(t.shape)}."
            )
    if ids.shape != mask.shape:
        raise InputError(
            f"{fn}: 'input_ids' {tuple(ids.shape)} and 'attention_mask' {tuple(mask.shape)} must have "
            f"the same shape (B, L)."
        )
    if ids.dtype == torch.bool:
        raise InputError(f"{fn}: 'input_ids' must hold integer token ids; got dtype {ids.dtype}.")
    if max_length is not None and ids.shape[1] > max_length:
        raise InputError(
            f"{fn}: sequence length {ids.shape[1]} exceeds the tower's max_length {max_length}; set the "
            f"tokenizer's max_length to {max_length} (or build the tower with a larger max_length)."
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"{fn}: 'attention_mask' must hold only 0 (padding) and 1 (real token).")
    mask = mask.bool()
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: {int(empty.sum())} row(s) of the text batch have no real token (first: {rows}); "
            f"every text needs at least one token. Drop empty texts before collating."
        )
    if vocab_size is not None:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise InputError(
                f"{fn}: token ids must lie in [0, {vocab_size}) (the tower's vocab_size); got ids in "
                f"[{low}, {high}]. Build the tower with the tokenizer's vocab_size."
            )
    return ids, mask


def check_number(fn: str, name: str, value: object, *, minimum: float | None = None) -> float:
    """Check a finite number (or one-element tensor), optionally >= minimum; returns a float."""
    scalar = check_scalar(fn, name, value, minimum=minimum)
    return float(scalar.detach()) if isinstance(scalar, torch.Tensor) else float(scalar)
