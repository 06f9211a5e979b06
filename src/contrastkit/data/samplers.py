"""Batch samplers: no duplicate groups per batch (CLIP-style pairs), class-balanced (SupCon).

Both are deterministic functions of (seed, epoch), and resumable: ``state_dict()`` holds the
epoch and the number of batches already yielded in it, and ``load_state_dict`` (or
``set_epoch(epoch, start_batch=k)``) makes the next iteration continue from batch k exactly.
With DataLoader workers the sampler runs ahead of training (prefetch), so a trainer should
store the number of batches it has *trained on* as ``"batch"`` rather than the sampler's count.

Under ``torch.distributed``, ``DistributedBatchSampler`` wraps either sampler and hands each rank
its contiguous slice (``split_rows``) of every global batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from contrastkit.distributed import get_rank, get_world_size
from contrastkit.errors import InputError, check_int


def _as_list(fn: str, name: str, values: Sequence[Hashable] | torch.Tensor | np.ndarray) -> list[Hashable]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim != 1:
            raise InputError(f"{fn}: argument '{name}' must be 1-D; got shape {tuple(values.shape)}.")
        values = values.tolist()
    values = list(values)
    if not values:
        raise InputError(f"{fn}: argument '{name}' is empty; there is nothing to sample.")
    return values


class _ResumableBatchSampler(torch.utils.data.Sampler):
    """Shared epoch / position bookkeeping; subclasses implement ``_plan(epoch) -> batches``."""

    def __init__(self, seed: int) -> None:
        self.seed = check_int(type(self).__name__, "seed", seed, 0)
        self.epoch = 0
        self.start_batch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def _plan(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The full list of batches (dataset indices) of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._plan(epoch))
        return self._cache[1]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select ``epoch``'s shuffle; the next iteration starts at batch ``start_batch`` of it."""
        self.epoch = check_int(type(self).__name__, "epoch", epoch, 0)
        self.start_batch = check_int(type(self).__name__, "start_batch", start_batch, 0)
        self.position = self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.batches()
        start, self.start_batch = self.start_batch, 0
        self.position = start
        for batch in plan[start:]:
            self.position += 1
            yield list(batch)

    def __len__(self) -> int:
        """Number of batches of the current epoch (the full epoch, whatever ``start_batch``)."""
        return len(self.batches())

    def state_dict(self) -> dict[str, Any]:
        """{"seed", "epoch", "batch"}: batch = batches yielded so far in this epoch."""
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields batch ``state["batch"]`` of ``state["epoch"]``.

        A finished epoch (batch == len) resumes at the start of the next one.
        """
        if int(state.get("seed", self.seed)) != self.seed:
            raise InputError(
                f"{type(self).__name__}.load_state_dict: the state was saved with seed {state['seed']}, "
                f"this sampler has seed {self.seed}; the batches would differ."
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if batch >= len(self.batches(epoch)):
            epoch, batch = epoch + 1, 0
        self.set_epoch(epoch, batch)


class NoDuplicatesBatchSampler(_ResumableBatchSampler):
    """Batches in which no two records share a group (e.g. two captions of one image).

    Each epoch shuffles the records with (seed, epoch), then fills batches greedily: records
    whose group is already in the current batch are held back, in order, for the next batches
    (as sentence-transformers' ``NoDuplicatesBatchSampler``). Every record is used at most once
    per epoch; with ``drop_last=False`` every record is used exactly once (the last batches may be
    short), with ``drop_last=True`` short batches are dropped.

    Args:
        groups: (N,) group id of each record (``source.groups()[1]`` or any hashables).
        batch_size: records per batch; at most the number of distinct groups.
        seed: shuffle seed.
        drop_last: drop batches shorter than ``batch_size``.
    """

    def __init__(
        self,
        groups: Sequence[Hashable] | torch.Tensor,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        fn = "NoDuplicatesBatchSampler"
        super().__init__(seed)
        self.groups = _as_list(fn, "groups", groups)
        self.batch_size = check_int(fn, "batch_size", batch_size, 1)
        distinct = len(set(self.groups))
        if self.batch_size > distinct:
            raise InputError(
                f"{fn}: batch_size {self.batch_size} is larger than the number of distinct groups "
                f"({distinct}); no batch can be filled without duplicates. Lower batch_size."
            )
        self.drop_last = bool(drop_last)

    def _plan(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
        pending = deque(order.tolist())
        groups, size = self.groups, self.batch_size
        plan = []
        while pending:
            batch: list[int] = []
            taken: set[Hashable] = set()
            held: list[int] = []
            while pending and len(batch) < size:
                index = pending.popleft()
                if groups[index] in taken:
                    held.append(index)
                else:
                    batch.append(index)
                    taken.add(groups[index])
            pending.extendleft(reversed(held))
            if len(batch) == size or not self.drop_last:
                plan.append(batch)
        return plan


class ClassBalancedBatchSampler(_ResumableBatchSampler):
    """Batches of ``classes_per_batch`` classes with ``samples_per_class`` records each (for SupCon).

    Each epoch shuffles every class's records with (seed, epoch) and cuts them into chunks of
    ``samples_per_class`` (a class's remainder is left out of that epoch); batches then draw
    distinct classes with probability proportional to their remaining chunks, until fewer than
    ``classes_per_batch`` classes have chunks left. A record is used at most once per epoch.

    Args:
        labels: (N,) class of each record (ints or any hashables).
        classes_per_batch: distinct classes per batch (>= 1; >= 2 for a contrastive batch).
        samples_per_class: records per class in a batch (>= 2 gives every anchor a positive).
        seed: shuffle seed.

    The batch size is ``classes_per_batch * samples_per_class``.
    """

    def __init__(
        self,
        labels: Sequence[Hashable] | torch.Tensor,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
    ) -> None:
        fn = "ClassBalancedBatchSampler"
        super().__init__(seed)
        self.labels = _as_list(fn, "labels", labels)
        self.classes_per_batch = check_int(fn, "classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = check_int(fn, "samples_per_class", samples_per_class, 1)
        members: dict[Hashable, list[int]] = {}
        for index, label in enumerate(self.labels):
            members.setdefault(label, []).append(index)
        self.members = members
        if len(members) < self.classes_per_batch:
            raise InputError(
                f"{fn}: classes_per_batch={self.classes_per_batch} but the labels hold only {len(members)} "
                f"classes. Lower classes_per_batch."
            )
        small = {c: len(m) for c, m in members.items() if len(m) < self.samples_per_class}
        if small:
            listed = ", ".join(f"{c!r}: {n}" for c, n in list(small.items())[:5])
            raise InputError(
                f"{fn}: {len(small)} class(es) have fewer than samples_per_class={self.samples_per_class} "
                f"records ({listed}). Lower samples_per_class or drop these classes."
            )

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        k = self.samples_per_class
        chunks: list[list[list[int]]] = []
        for members in self.members.values():
            shuffled = [members[i] for i in rng.permutation(len(members))]
            chunks.append([shuffled[j : j + k] for j in range(0, len(shuffled) - k + 1, k)])
        remaining = np.array([len(c) for c in chunks], dtype=np.float64)
        plan = []
        while np.count_nonzero(remaining) >= self.classes_per_batch:
            chosen = rng.choice(
                len(chunks), size=self.classes_per_batch, replace=False, p=remaining / remaining.sum()
            )
            batch: list[int] = []
            for c in sorted(chosen.tolist()):
                remaining[c] -= 1
                batch.extend(chunks[c][int(remaining[c])])
            plan.append(batch)
        return plan


def split_rows(total: int, world: int) -> list[int]:
    """Rows of each of ``world`` ranks when ``total`` rows are split as evenly as possible.

    The first ``total % world`` ranks get one row more: ``split_rows(10, 4) == [3, 3, 2, 2]``.
    """
    total = check_int("split_rows", "total", total, 0)
    world = check_int("split_rows", "world", world, 1)
    base, extra = divmod(total, world)
    return [base + 1 if r < extra else base for r in range(world)]


def _rank_and_world(fn: str, rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size), each defaulting to torch.distributed's (0 / 1 without a process group)."""
    world_size = get_world_size() if world_size is None else world_size
    rank = get_rank() if rank is None else rank
    world_size = check_int(fn, "world_size", world_size, 1)
    rank = check_int(fn, "rank", rank, 0)
    if rank >= world_size:
        raise InputError(
            f"{fn}: argument 'rank' must be in [0, {world_size}) for world_size={world_size}; got {rank}."
        )
    return rank, world_size


class DistributedBatchSampler(torch.utils.data.Sampler):
    """This rank's contiguous slice of every global batch of a wrapped batch sampler.

    The wrapped sampler yields *global* batches (lists of dataset indices) and is built alike on
    every rank (same arguments, same seed), so all ranks walk the same batches; rank r keeps rows
    ``sum(sizes[:r]) : sum(sizes[:r + 1])`` of each, ``sizes = split_rows(len(batch), world_size)``,
    and the ranks' slices concatenated in rank order are the global batch. The global batch stays
    the unit: a ``NoDuplicatesBatchSampler``'s "no two records of one group in a batch" holds
    across all ranks, a ``ClassBalancedBatchSampler`` batch is split as it is (a class's records may
    fall on different ranks; gather the embeddings for the loss), and resuming is exact because every
    rank counts the same global batches.

    ``set_epoch(epoch, start_batch=0)``, ``state_dict()``, ``load_state_dict(state)``,
    ``batches(epoch)`` (the *global* batches), ``position`` and ``epoch`` are those of the wrapped
    sampler (AttributeError when it lacks them); ``len`` is its number of batches.

    Args:
        batch_sampler: any iterable of global batches (e.g. ``NoDuplicatesBatchSampler``).
        rank: this process's rank (default: torch.distributed's, 0 without a process group).
        world_size: number of ranks (default: torch.distributed's, 1 without a process group).

    Raises:
        InputError: on iteration, when a global batch has fewer records than ``world_size``.
    """

    _DELEGATED = frozenset({"set_epoch", "state_dict", "load_state_dict", "batches", "position", "epoch"})

    def __init__(
        self, batch_sampler: Iterable[Sequence[int]], rank: int | None = None, world_size: int | None = None
    ) -> None:
        self.batch_sampler = batch_sampler
        self.rank, self.world_size = _rank_and_world("DistributedBatchSampler", rank, world_size)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("batch_sampler")
        if name in DistributedBatchSampler._DELEGATED and inner is not None:
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            if len(batch) < self.world_size:
                raise InputError(
                    f"DistributedBatchSampler: a global batch of {len(batch)} record(s) cannot be split "
                    f"over world_size={self.world_size} ranks (every rank needs at least one); raise the "
                    f"batch size to at least {self.world_size} (and drop short last batches)."
                )
            sizes = split_rows(len(batch), self.world_size)
            start = sum(sizes[: self.rank])
            yield batch[start : start + sizes[self.rank]]

    def __len__(self) -> int:
        return len(self.batch_sampler)
