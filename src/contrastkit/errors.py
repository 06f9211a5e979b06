"""Error classes and argument checks shared by every layer.

This module is a leaf: it imports nothing of the project, so ``functional`` may use it
without breaking the downward-only layering. Every check raises one clear message that
names the function, the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


class ContrastkitError(Exception):
    """Base class of every error contrastkit raises on purpose."""


class InputError(ContrastkitError, ValueError):
    """An argument has the wrong type, shape, dtype or value."""


class NoPositivePairsError(InputError):
    """No anchor of the batch has a positive, so the loss is undefined (never a silent 0)."""


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(fn: str, name: str, t: object, *, floating: bool = True) -> torch.Tensor:
    """Check that ``t`` is a tensor (floating point unless ``floating=False``)."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{fn}: argument '{name}' must be a torch.Tensor; got {type(t).__name__}.")
    if floating and not t.is_floating_point():
        raise InputError(
            f"{fn}: argument '{name}' must be a floating-point tensor; got dtype {t.dtype}. "
            f"Convert it with .float()."
        )
    return t


def check_finite(fn: str, name: str, t: torch.Tensor) -> None:
    """Raise if ``t`` holds NaN or inf, saying how many entries are bad."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(
            f"{fn}: argument '{name}' contains {bad} NaN/inf value(s) out of {t.numel()}. "
            f"Check the encoder output (a diverged model or a bad input) before the loss."
        )


def check_embeddings(
    fn: str,
    name: str,
    t: object,
    *,
    shape: str = "(B, D)",
    ndims: Sequence[int] = (2,),
    rows: int | None = None,
    dim: int | None = None,
    like: str | None = None,
) -> torch.Tensor:
    """Check a finite, non-empty floating embedding tensor.

    ``ndims`` lists the accepted ranks; ``rows`` and ``dim`` pin the first and last sizes
    (``like`` names the argument they came from, for the message).
    """
    t = check_tensor(fn, name, t)
    if t.dim() not in ndims:
        raise InputError(
            f"{fn}: argument '{name}' must have shape {shape}; got a {t.dim()}-D tensor of shape {_shape(t)}."
        )
    if t.numel() == 0 or t.shape[0] == 0:
        raise InputError(
            f"{fn}: argument '{name}' is empty (shape {_shape(t)}); a contrastive loss needs "
            f"at least one row. Skip empty batches before calling the loss."
        )
    source = f" (from '{like}')" if like else ""
    if rows is not None and t.shape[0] != rows:
        raise InputError(
            f"{fn}: argument '{name}' must have {rows} rows{source} to match; got shape {_shape(t)}."
        )
    if dim is not None and t.shape[-1] != dim:
        raise InputError(
            f"{fn}: argument '{name}' must have embedding size {dim}{source}; got shape {_shape(t)}."
        )
    check_finite(fn, name, t)
    return t


def check_same_device(fn: str, **tensors: torch.Tensor) -> None:
    """Raise if the given tensors do not all live on one device."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"'{n}' on {d}" for n, d in devices.items())
        raise InputError(f"{fn}: all tensors must be on one device; got {listed}.")


def check_has_negatives(fn: str, n_candidates: int, detail: str) -> None:
    """Raise if an anchor's candidates are its positive alone (the loss would be a silent 0)."""
    if n_candidates < 2:
        raise InputError(
            f"{fn}: each anchor needs at least one negative, but {detail}. Use a batch of at least "
            f"2 pairs (or add negatives)."
        )


def check_scalar(
    fn: str, name: str, value: object, *, minimum: float | None = None, hint: str = ""
) -> float | torch.Tensor:
    """Check a finite scalar (a number or a one-element floating tensor), optionally >= minimum.

    Returns a float, or the tensor reshaped to 0-d so that autograd still reaches it.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise InputError(
                f"{fn}: argument '{name}' must be a scalar (a float or a one-element tensor); "
                f"got a tensor of shape {_shape(value)}."
            )
        check_tensor(fn, name, value)
        number = float(value.detach())
        scalar: float | torch.Tensor = value.reshape(())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        scalar = number
    else:
        raise InputError(
            f"{fn}: argument '{name}' must be a float or a one-element tensor; got {type(value).__name__}."
        )
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = "finite" if minimum is None else f"finite and >= {minimum}"
        raise InputError(f"{fn}: argument '{name}' must be {bound}; got {number}.{hint}")
    return scalar


def check_scale(fn: str, name: str, value: object) -> float | torch.Tensor:
    """Check a multiplicative logit scale: a finite number >= 0 (float or one-element tensor)."""
    hint = " It is a multiplicative logit scale; a temperature tau corresponds to scale = 1/tau."
    return check_scalar(fn, name, value, minimum=0.0, hint=hint)


def check_temperature(fn: str, name: str, value: object) -> float:
    """Check a temperature: a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(
            f"{fn}: argument '{name}' must be a float > 0 (a fixed temperature; pass a learnable "
            f"one as a multiplicative scale to the scale-based losses); got {type(value).__name__}."
        )
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{fn}: argument '{name}' must be a finite float > 0; got {value}.")
    return float(value)


def check_range(
    fn: str, name: str, value: object, low: float, high: float, *, high_open: bool = False
) -> float:
    """Check a float in [low, high] (or [low, high) with ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{fn}: argument '{name}' must be a float; got {type(value).__name__}.")
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or above:
        bracket = ")" if high_open else "]"
        raise InputError(f"{fn}: argument '{name}' must be in [{low}, {high}{bracket}; got {value}.")
    return float(value)


def check_flag(fn: str, name: str, value: object) -> bool:
    """Check a True/False switch (a string such as "no" is truthy and would flip it silently)."""
    if not isinstance(value, bool):
        raise InputError(f"{fn}: argument '{name}' must be True or False; got {value!r}.")
    return value


def check_int(
    fn: str, name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Check an int (numpy ints too; bools refused: True would silently mean 1) in [minimum, maximum]."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bound = f" in [{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f" >= {minimum}"
        else:
            bound = "" if maximum is None else f" <= {maximum}"
        raise InputError(f"{fn}: argument '{name}' must be an int{bound}; got {value!r}.")
    return int(value)


def check_generator(fn: str, generator: object) -> torch.Generator | None:
    """Check a ``torch.Generator`` or None (None draws from torch's global generator)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(
            f"{fn}: argument 'generator' must be a torch.Generator or None; got {type(generator).__name__}. "
            f"Pass torch.Generator().manual_seed(seed)."
        )
    return generator


def check_nonzero_rows(fn: str, name: str, t: torch.Tensor) -> None:
    """Raise if a row has zero norm: its cosine similarity is undefined (and its gradient ~1e12)."""
    zero = t.detach().abs().amax(dim=-1) == 0
    if bool(zero.any()):
        rows = zero.nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: argument '{name}' has {int(zero.sum())} all-zero row(s) (first: {rows}); cosine "
            f"similarity is undefined for them. Check the encoder (dead units, a masked-out input)."
        )


def check_choice(fn: str, name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise InputError(f"{fn}: argument '{name}' must be one of {options}; got {value!r}.")
    return value  # type: ignore[return-value]


def check_mask(fn: str, name: str, mask: object, shape: tuple[int, ...]) -> torch.Tensor:
    """Check a boolean mask of an exact shape."""
    mask = check_tensor(fn, name, mask, floating=False)
    if mask.dtype != torch.bool:
        raise InputError(
            f"{fn}: argument '{name}' must be a bool tensor; got dtype {mask.dtype}. "
            f"Build it with a comparison, e.g. labels[:, None] == labels[None, :]."
        )
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"{fn}: argument '{name}' must have shape {tuple(shape)}; got {_shape(mask)}.")
    return mask


def check_labels(fn: str, name: str, labels: object, n: int) -> torch.Tensor:
    """Check integer class labels of shape (n,)."""
    labels = check_tensor(fn, name, labels, floating=False)
    if labels.dtype == torch.bool or labels.is_complex() or labels.is_floating_point():
        raise InputError(
            f"{fn}: argument '{name}' must be an integer tensor of class ids; got dtype {labels.dtype}."
        )
    if labels.dim() != 1 or labels.shape[0] != n:
        raise InputError(f"{fn}: argument '{name}' must have shape ({n},); got {_shape(labels)}.")
    return labels


def is_integer_tensor(t: torch.Tensor) -> bool:
    """True for integer dtypes (not bool, float or complex): ids and indices."""
    return not (t.dtype == torch.bool or t.is_floating_point() or t.is_complex())


def check_pairs(fn: str, name: str, pairs: object) -> torch.Tensor:
    """Check a (K, 2) integer tensor of id pairs (K may be 0) with no pair (a, a)."""
    pairs = check_tensor(fn, name, pairs, floating=False)
    if not is_integer_tensor(pairs):
        raise InputError(f"{fn}: argument '{name}' must be an integer tensor of id pairs; got {pairs.dtype}.")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise InputError(
            f"{fn}: argument '{name}' must have shape (K, 2), one id pair per row; got {tuple(pairs.shape)}. "
            f"Stack the pairs with torch.tensor([[a, b], ...])."
        )
    same = pairs[:, 0] == pairs[:, 1]
    if bool(same.any()):
        raise InputError(
            f"{fn}: argument '{name}' pairs an id with itself (first: {pairs[same][0].tolist()}); an "
            f"item cannot be linked with itself. Drop the pairs (a, a)."
        )
    return pairs
