"""Maximal runs of True in 0/1 label rows (anomalous segments), as half-open index pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_tensor

Segment = tuple[int, int]


def check_binary_labels(
    fn: str, name: str, labels: object, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Check a 0/1 label tensor (bool or integer) of shape (N,) or (B, N), or exactly ``shape``;
    return it as bool."""
    labels = check_tensor(fn, name, labels, floating=False)
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(
            f"{fn}: argument '{name}' must be a bool or integer 0/1 tensor; got dtype {labels.dtype}. "
            f"Threshold scores first, e.g. scores > 0.5."
        )
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise InputError(
            f"{fn}: argument '{name}' must have shape {tuple(shape)}; got {tuple(labels.shape)}."
        )
    if labels.dim() not in (1, 2):
        raise InputError(
            f"{fn}: argument '{name}' must have shape (N,) or (B, N); got {tuple(labels.shape)}."
        )
    if labels.dtype != torch.bool:
        bad = (labels != 0) & (labels != 1)
        if bool(bad.any()):
            raise InputError(
                f"{fn}: argument '{name}' must hold only 0 and 1; got {int(bad.sum())} other value(s) "
                f"(e.g. {labels[bad][0].item()}). Mark anomalous points with 1, normal ones with 0."
            )
        labels = labels != 0
    return labels


def binary_runs(flags: torch.Tensor) -> list[list[Segment]]:
    """flags (B, N) bool -> per row, the maximal runs of True as (start, end), end exclusive.

    Rows are independent: a run never wraps from one row into the next.
    """
    padded = F.pad(flags.to(torch.int8), (1, 1))
    step = padded[:, 1:] - padded[:, :-1]  # +1 where a run starts, -1 one past its end
    starts, ends = (step == 1).nonzero().tolist(), (step == -1).nonzero().tolist()
    per_row: list[list[Segment]] = [[] for _ in range(flags.shape[0])]
    for (row, start), (_, end) in zip(starts, ends, strict=True):
        per_row[row].append((start, end))
    return per_row
