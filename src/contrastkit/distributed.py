"""Exact contrastive losses across processes: gathers with gradient, the ring, and the bookkeeping.

A contrastive loss couples every pair of the *global* batch, so under ``torch.distributed`` each
rank needs the other ranks' embeddings, and the gradient of every embedding must come back to the
rank that owns it. contrastkit's losses take ``distributed=`` (see METHODS.md section 2.4):

``"gather"``
    Every rank gathers all embeddings with gradient and computes the whole global loss L (the same
    value on every rank). The gather's backward sums each rank's gradient onto the owner of the
    rows, so under DDP's averaging every parameter gets exactly dL/dtheta. Memory: the full
    B x B loss on every rank.
``"local"``
    Rank r scores only its own anchors against all gathered candidates and returns
    L_r = W * S_r / n, with S_r the sum of its anchors' losses and n the global number of anchors,
    so that mean_r L_r = L. DDP's averaging again gives dL/dtheta exactly, the scale and bias
    included, for any split of the batch (uneven ones too). Memory: B_r x B per rank.
``"ring"`` (``siglip_loss``)
    Like ``"local"``, but the other ranks' text blocks travel around the ring one neighbour at a
    time (W - 1 point-to-point exchanges, each an autograd Function), so no rank holds all of them
    at once in one collective.

Without an initialised process group, or with one process, every mode is the plain loss.

Errors stay collective: a loss validates its local inputs inside ``agreement()``, whose exit is
the first collective of the call; a rank whose inputs are bad (NaN, a wrong shape) tells the
others there, and every rank raises (the bad one its own error, the others a ``DistributedError``
naming it), instead of leaving them blocked in a gather.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from contrastkit.errors import ContrastkitError, InputError, NoPositivePairsError
from contrastkit.functional import reduce_anchor_losses

MODES = ("gather", "local")
RING_MODES = (*MODES, "ring")
_FAILED = -1


class DistributedError(ContrastkitError, RuntimeError):
    """Another rank failed (bad input, bad data) and this one stops with it."""


# ---- process group helpers -------------------------------------------------------------------
def is_active(group: Any = None) -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def get_rank(group: Any = None) -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when the environment of a torchrun (or any env:// launcher) worker is set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA).

    Returns True when this process is one of several; a no-op (False) outside torchrun or when
    the group is already initialised by the caller.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if dist.is_initialized():
        return True
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        store=_attempt_store(rank, world),
        rank=rank,
        world_size=world,
    )
    return True


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The rendezvous store of this worker group, with keys private to this restart attempt.

    torchrun keeps one TCP store across restarts (``TORCHELASTIC_USE_AGENT_STORE``), and the
    process group's keys are the same in every attempt: a restarted worker could read the address
    of a killed one and fail to connect. A prefix per ``TORCHELASTIC_RESTART_COUNT`` avoids that.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_store and rank == 0,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"contrastkit/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextlib.contextmanager
def distributed_run(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Join torchrun's process group for the block (if launched by torchrun) and leave it after;
    yields True on the process that reports (rank 0, or the only one)."""
    joined = init_from_env(device)
    try:
        yield get_rank() == 0
        if joined:
            dist.barrier()  # leave together: rank 0 may still be evaluating and writing the report
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def agree_on_value(value: Any, group: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a timestamped output folder); the value itself
    without a process group."""
    if not is_active(group):
        return value
    box = [value]
    dist.broadcast_object_list(
        box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group
    )
    return box[0]


def resolve_mode(
    fn: str, distributed: str | None, modes: Sequence[str] = MODES, group: Any = None
) -> str | None:
    """Check ``distributed=`` and return the mode to run, None when it is off or one process runs."""
    if distributed is None:
        return None
    if distributed not in modes:
        raise InputError(
            f"{fn}: argument 'distributed' must be None or one of {', '.join(repr(m) for m in modes)}; "
            f"got {distributed!r}."
        )
    return distributed if is_active(group) else None


# ---- the layout of a batch split over ranks ----------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How the global batch is split: ``sizes[r]`` rows on rank r, in rank order.

    ``Layout.single(n)`` describes one process holding all n rows; every method then does no
    communication, so the distributed code paths are also the single-process ones.
    """

    sizes: tuple[int, ...]
    rank: int
    group: Any = None

    @classmethod
    def single(cls, rows: int) -> Layout:
        return cls((rows,), 0)

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def rows(self) -> int:
        return self.sizes[self.rank]

    @property
    def offset(self) -> int:
        return sum(self.sizes[: self.rank])

    def resized(self, rows: int) -> Layout:
        """The layout of another tensor whose row count differs per rank (keys, negatives);
        one all_gather of the counts."""
        if self.world == 1:
            return Layout.single(rows)
        one_each = Layout((1,) * self.world, self.rank, self.group)
        counts = _all_gather_rows(torch.tensor([rows], device=_comm_device(self.group)), one_each)
        return Layout(tuple(int(n) for n in counts.tolist()), self.rank, self.group)

    def rows_of(self, rank: int) -> slice:
        """Where rank ``rank``'s rows lie in a gather in rank order."""
        start = sum(self.sizes[:rank])
        return slice(start, start + self.sizes[rank])

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B_r, ...) on every rank -> (B, ...) in rank order, with gradient (summed onto the owner)."""
        if self.world == 1:
            return x
        return _GatherWithGrad.apply(x, self)

    def gather_others(self, x: torch.Tensor) -> torch.Tensor:
        """Every other rank's rows of ``x`` (B - B_r, ...) in rank order, with gradient."""
        if self.world == 1:
            return x[:0]
        gathered = self.gather(x)
        return torch.cat([gathered[: self.offset], gathered[self.offset + self.rows :]])

    def gather_local_first(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``gather`` but with this rank's rows first (then the others in rank order), so that
        a loss's anchors are the first B_r candidates and their diagonal positives stay at i."""
        return x if self.world == 1 else torch.cat([x, self.gather_others(x)])

    def per_row(self, factor: int) -> Layout:
        """The layout of a tensor with ``factor`` rows per row of this one (views, negatives)."""
        return Layout(tuple(factor * n for n in self.sizes), self.rank, self.group)

    def gather_values(self, x: torch.Tensor, local_first: bool = True) -> torch.Tensor:
        """Gather without gradient (labels, ids, guide embeddings); any dtype."""
        if self.world == 1:
            return x
        with torch.no_grad():
            gathered = _all_gather_rows(x.detach(), self)
        if not local_first:
            return gathered
        start, stop = self.offset, self.offset + self.rows
        return torch.cat([x, gathered[:start], gathered[stop:]])

    def count(self, local: int | torch.Tensor) -> int:
        """The sum over ranks of an integer count (no gradient)."""
        if self.world == 1:
            return int(local)
        value = torch.tensor([int(local)], dtype=torch.int64, device=_comm_device(self.group))
        dist.all_reduce(value, group=self.group)
        return int(value.item())

    def reduce(
        self, fn: str, loss: torch.Tensor, valid: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """``reduce_anchor_losses`` across ranks: loss (V,) of this rank's valid anchors, valid (R,).

        ``"mean"`` and ``"sum"`` give this rank's share (the mean over ranks is the global mean /
        sum); ``"none"`` gives this rank's anchors, NaN where invalid. Raises on every rank when
        no anchor of the global batch is valid."""
        if self.world == 1:
            return reduce_anchor_losses(fn, loss, valid, reduction)
        count = self.count(loss.numel())
        if reduction == "mean":
            return self.share(fn, loss.sum(), count)
        self.share(fn, loss.sum(), count)  # raises when no anchor is valid anywhere
        if reduction == "sum":
            return loss.sum() * self.world
        return loss.new_full(valid.shape, float("nan")).masked_scatter(valid, loss)

    def share(self, fn: str, local_sum: torch.Tensor, global_count: int) -> torch.Tensor:
        """This rank's share W * S_r / n of a mean over n anchors (mean over ranks = the mean).

        Raises ``NoPositivePairsError`` on every rank at once when n = 0."""
        if global_count == 0:
            raise NoPositivePairsError(
                f"{fn}: no anchor of the global batch (all {self.world} ranks) has both a positive "
                f"and a negative, so the loss is undefined. Check the labels / masks."
            )
        return local_sum * (self.world / global_count)


def _comm_device(group: Any) -> torch.device:
    """The device collectives of ``group`` run on (CUDA for NCCL, else CPU)."""
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _all_gather_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """all_gather of uneven row blocks: pad each to the largest, gather, trim, concatenate."""
    largest = max(layout.sizes)
    wire = x
    if x.dtype == torch.bool:
        wire = x.to(torch.uint8)
    if wire.shape[0] < largest:
        pad = wire.new_zeros((largest - wire.shape[0], *wire.shape[1:]))
        wire = torch.cat([wire, pad])
    parts = [torch.empty_like(wire) for _ in layout.sizes]
    dist.all_gather(parts, wire.contiguous(), group=layout.group)
    out = torch.cat([part[:n] for part, n in zip(parts, layout.sizes, strict=True)])
    return out.to(x.dtype)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        ctx.layout = layout
        return _all_gather_rows(x, layout)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layout = ctx.layout
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=layout.group)
        return grad[layout.offset : layout.offset + layout.rows], None


# ---- point-to-point exchange around the ring ----------------------------------------------------
class _NeighbourExchange(torch.autograd.Function):
    """Send x to the next rank and receive the previous rank's block; the backward sends the
    received block's gradient back to where it came from."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, to_rank: int, from_rank: int, recv_rows: int, group: Any
    ) -> torch.Tensor:
        received = x.new_empty((recv_rows, *x.shape[1:]))
        _send_receive(x.contiguous(), to_rank, received, from_rank, group)
        ctx.plan = (to_rank, from_rank, x.shape, group)
        return received

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        to_rank, from_rank, shape, group = ctx.plan
        grad_x = grad.new_empty(shape)
        _send_receive(grad.contiguous(), from_rank, grad_x, to_rank, group)
        return grad_x, None, None, None, None


def _send_receive(
    send: torch.Tensor, to_rank: int, receive: torch.Tensor, from_rank: int, group: Any
) -> None:
    peer = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    ops = [
        dist.P2POp(dist.isend, send, peer(to_rank), group),
        dist.P2POp(dist.irecv, receive, peer(from_rank), group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()


def ring_blocks(x: torch.Tensor, layout: Layout) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (owner rank, block) for every rank's rows of ``x``, starting with this rank's own and
    then passing blocks one step around the ring (W - 1 exchanges, with gradient)."""
    yield layout.rank, x
    block = x
    for step in range(1, layout.world):
        owner = (layout.rank - step) % layout.world
        block = _NeighbourExchange.apply(
            block,
            (layout.rank + 1) % layout.world,
            (layout.rank - 1) % layout.world,
            layout.sizes[owner],
            layout.group,
        )
        yield owner, block


# ---- errors that stop every rank together --------------------------------------------------------
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
    mine = torch.tensor([flag, *values], dtype=torch.int64, device=_comm_device(group))
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


def gather_objects(value: Any, group: Any = None) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (``[value]`` without a process group).
    Only for values this job's own ranks produced: it unpickles what they send."""
    if not is_active(group):
        return [value]
    found: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(found, value, group=group)
    return found


def all_reduce_mean(value: float, group: Any = None) -> float:
    """The mean over ranks of a Python float (the global loss from the ranks' shares)."""
    if not is_active(group):
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(group))
    dist.all_reduce(tensor, group=group)
    return float(tensor.item()) / dist.get_world_size(group)
