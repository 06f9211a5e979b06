"""Errors that stop every rank together: the first collective of a loss call, and the trainer's
per-step handshake, carry a failure flag, so a rank with bad inputs never leaves the others
waiting in a gather."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from contrastkit.distributed.group import comm_device, is_active
from contrastkit.distributed.layout import Layout
from contrastkit.errors import ContrastkitError, InputError

_FAILED = -1


class DistributedError(ContrastkitError, RuntimeError):
    """Another rank failed (bad input, bad data) and this one stops with it."""


class _Agreement:
    """What ``agreement`` yields: set ``batch`` (the tensor whose rows are the batch) inside the
    block; read ``layout`` after it."""

    def __init__(self) -> None:
        self.batch: torch.Tensor | None = None
        self.layout: Layout | None = None


_WIRE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _row_signature(t: torch.Tensor) -> tuple[int, int, int]:
    """(rows, values per row, dtype code): what every rank's batch must agree on but the rows."""
    code = _WIRE_DTYPES.index(t.dtype) if t.dtype in _WIRE_DTYPES else len(_WIRE_DTYPES)
    per_row = t[0].numel() if t.shape[0] else math.prod(t.shape[1:])
    return t.shape[0], per_row, code


@contextlib.contextmanager
def agreement(fn: str, mode: str | None, group: Any = None) -> Iterator[_Agreement]:
    """Validate local inputs inside the block; its exit is one collective that shares the rows
    of every rank (the ``Layout``) or, when any rank raised, stops all of them.

    Ranks must also agree on the batch's row shape and dtype (one rank's model in float16, a
    different embedding size): a mismatch is an ``InputError`` on every rank, never a gather of
    mismatched buffers. With ``mode=None`` nothing is communicated and ``layout`` stays None.
    """
    state = _Agreement()
    try:
        yield state
    except ContrastkitError as err:
        if mode is not None:
            _exchange(fn, (0, 0, 0), group, err)  # raises on every rank
        raise
    if mode is None:
        return
    if state.batch is None:
        raise RuntimeError(f"{fn}: agreement() needs 'batch' set inside the block.")
    shared = _exchange(fn, _row_signature(state.batch), group, None)
    if len({part[1:] for part in shared}) > 1:
        seen = ", ".join(
            f"rank {r}: {per_row} values per row, {_dtype_name(code)}"
            for r, (_, per_row, code) in enumerate(shared)
        )
        raise InputError(
            f"{fn}: the ranks' batches differ in row shape or dtype ({seen}); every rank must run "
            f"the same model."
        )
    empty = [r for r, part in enumerate(shared) if part[0] == 0]
    if empty:
        raise InputError(
            f"{fn}: rank(s) {empty} hold an empty batch; every rank needs at least one row "
            f"(split the global batch so that each rank gets some)."
        )
    state.layout = Layout(tuple(part[0] for part in shared), dist.get_rank(group), group)


def _dtype_name(code: int) -> str:
    return str(_WIRE_DTYPES[code]).replace("torch.", "") if code < len(_WIRE_DTYPES) else "another dtype"


def _exchange(
    fn: str, values: Sequence[int], group: Any, error: BaseException | None
) -> list[tuple[int, ...]]:
    """all_gather of a few ints per rank, with a failure flag. When any rank failed (``error``),
    the messages are gathered too and every rank raises: the failed one its own error, the
    others a ``DistributedError`` naming it."""
    world = dist.get_world_size(group)
    flag = _FAILED if error is not None else 0
    mine = torch.tensor([flag, *values], dtype=torch.int64, device=comm_device(group))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    rows = [tuple(int(v) for v in part.tolist()) for part in parts]
    failed = [r for r, part in enumerate(rows) if part[0] == _FAILED]
    if not failed:
        return [part[1:] for part in rows]
    messages: list[Any] = [None] * world
    dist.all_gather_object(messages, None if error is None else str(error), group=group)
    if error is not None:
        raise error
    also = f" (ranks {failed} failed)" if len(failed) > 1 else ""
    raise DistributedError(f"{fn}: stopped because rank {failed[0]} failed{also}: {messages[failed[0]]}")


def agree_on_step(
    what: str, values: Sequence[int], error: BaseException | None = None, group: Any = None
) -> list[tuple[int, ...]]:
    """The trainer's per-step handshake: every rank's ``values`` (e.g. batch rows, bad records),
    or an error on all ranks when any rank hit one getting its batch (the failed rank re-raises
    ``error``, the others raise a ``DistributedError`` with its message)."""
    if error is not None and not is_active(group):
        raise error
    if not is_active(group):
        return [tuple(values)]
    return _exchange(what, values, group, error)
