"""Private argument checks and helpers shared by the eval modules."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_embeddings, check_labels, check_nonzero_rows
from contrastkit.functional import compute_dtype


def check_emb(
    fn: str, name: str, t: object, *, rows: int | None = None, dim: int | None = None, like: str | None = None
) -> torch.Tensor:
    """A finite, non-empty (N, D) floating embedding tensor with no all-zero row."""
    if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] == 0:
        raise InputError(
            f"{fn}: argument '{name}' is empty (shape {tuple(t.shape)}); expected at least one "
            f"embedding row. Embed the evaluation set before calling {fn}."
        )
    t = check_embeddings(fn, name, t, shape="(N, D)", rows=rows, dim=dim, like=like)
    check_nonzero_rows(fn, name, t)
    return t


def unit(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows of ``t`` L2-normalised in ``dtype``."""
    return F.normalize(t.detach().to(dtype), dim=-1)


def unit_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs normalised in their common compute dtype (fp64 if either is fp64, else fp32)."""
    dtype = compute_dtype(x, y)
    return unit(x, dtype), unit(y, dtype)


def check_int(fn: str, name: str, value: object, *, minimum: int = 1, hint: str = "") -> int:
    """A Python (or NumPy) integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{fn}: argument '{name}' must be an int >= {minimum}; got {value!r}.{hint}")
    if value < minimum:
        raise InputError(f"{fn}: argument '{name}' must be an int >= {minimum}; got {value}.{hint}")
    return int(value)


def check_chunk_size(fn: str, chunk_size: object) -> int:
    """Rows of queries scored at once: an int >= 1."""
    hint = " It is the number of query rows scored at once (memory ~ chunk_size x gallery size)."
    return check_int(fn, "chunk_size", chunk_size, hint=hint)


def check_ks(fn: str, name: str, ks: object) -> tuple[int, ...]:
    """A non-empty sequence of cutoffs k >= 1, deduplicated in the given order."""
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Iterable) or isinstance(ks, str | bytes):
        raise InputError(
            f"{fn}: argument '{name}' must be a sequence of ints >= 1, e.g. (1, 5, 10); got {ks!r}."
        )
    values = tuple(ks)
    if not values:
        raise InputError(f"{fn}: argument '{name}' is empty; expected at least one cutoff, e.g. (1, 5, 10).")
    out: list[int] = []
    for k in values:
        k = check_int(fn, name, k, hint=f" (in {name}={values!r})")
        if k not in out:
            out.append(k)
    return tuple(out)


def check_index(fn: str, name: str, t: object, n: int, high: int, what: str) -> torch.Tensor:
    """An integer (n,) tensor with every value in [0, high); ``what`` names what it indexes."""
    t = check_labels(fn, name, t, n)
    if n and (int(t.min()) < 0 or int(t.max()) >= high):
        bad = ((t < 0) | (t >= high)).nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: argument '{name}' must hold {what} in [0, {high}); got values in "
            f"[{int(t.min())}, {int(t.max())}] (first bad positions: {bad}). Map ids to row indices first."
        )
    return t


def check_class_labels(fn: str, name: str, t: object, n: int) -> torch.Tensor:
    """Integer class ids of shape (n,), all >= 0."""
    t = check_labels(fn, name, t, n)
    if int(t.min()) < 0:
        bad = (t < 0).nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: argument '{name}' must hold class ids >= 0; got {int(t.min())} (first bad "
            f"positions: {bad}). Map the classes to 0..C-1 first."
        )
    return t
