"""How a batch is split over ranks, and moving rows between them with gradient: the all-gather
whose backward sums onto the owner, and the point-to-point ring."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from contrastkit.distributed.group import comm_device, is_active
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.functional import reduce_anchor_losses

MODES = ("gather", "local")
RING_MODES = (*MODES, "ring")


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
        counts = _all_gather_rows(torch.tensor([rows], device=comm_device(self.group)), one_each)
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

    def logsumexp_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """log sum_r exp(values on rank r), elementwise, with gradient (every rank's partial LSEs
        of the same columns -> the columns' LSEs over all rows)."""
        if self.world == 1:
            return values
        return _AllReduceLogSumExp.apply(values, self)

    def count(self, local: int | torch.Tensor) -> int:
        """The sum over ranks of an integer count (no gradient)."""
        if self.world == 1:
            return int(local)
        value = torch.tensor([int(local)], dtype=torch.int64, device=comm_device(self.group))
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


class _AllReduceLogSumExp(torch.autograd.Function):
    """c = log sum_r exp(p_r) over ranks (max-shifted); the backward all-reduces (sums) dc, since
    every rank's loss may use every c_j, and gives dp_r = sum dc * exp(p_r - c)."""

    @staticmethod
    def forward(ctx, partial: torch.Tensor, layout: Layout) -> torch.Tensor:
        top = partial.detach().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=layout.group)
        total = torch.exp(partial.detach() - top)
        dist.all_reduce(total, group=layout.group)
        result = top + torch.log(total)
        ctx.save_for_backward(partial, result)
        ctx.layout = layout
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        partial, result = ctx.saved_tensors
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.layout.group)
        return grad * torch.exp(partial - result), None


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
