"""``ShardStream``: WebDataset tar shards read sample by sample, split over ranks and workers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.data.badrecords import DataError
from contrastkit.data.dataset import ContrastiveDataset
from contrastkit.data.samplers import _rank_and_world
from contrastkit.data.shards import (
    _check_extensions,
    _check_keys,
    _decode,
    _decode_label,
    _find_classes,
    _iter_shard,
    _shard_paths,
)
from contrastkit.data.sources import MODALITIES, Record
from contrastkit.errors import InputError, check_int

#: ``record["index"] = shard number * INDEX_STRIDE + position in the shard``.
INDEX_STRIDE = 10**6


def _shuffled(records: Iterator[Record], size: int, rng: np.random.Generator) -> Iterator[Record]:
    """``records`` through a shuffle buffer of ``size`` records (0: unchanged order)."""
    if size == 0:
        yield from records
        return
    buffer: list[Record] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = record
    for j in rng.permutation(len(buffer)).tolist():
        yield buffer[j]


class ShardStream(torch.utils.data.IterableDataset):
    """Records streamed from WebDataset tar shards, split over ranks and DataLoader workers.

    For shard sets too large for ``ShardSource``, which reads everything into memory. ``urls`` and
    ``keys`` are as in ``ShardSource``, and so are the records (``{"image": bytes, "label": int,
    "text": str, "group": "<shard file name>/<key>"}``, per ``keys``), plus ``"index"``: a stable
    id, ``shard number (in the expanded url list) * 10**6 + position in the shard (tar order)``
    (``ShardSource``'s sorted index needs every key, which a stream does not have).

    Each epoch shuffles the shard list with ``default_rng([seed, epoch])``; rank r of W takes shards
    r, r + W, ... of that order and DataLoader worker w of K every K-th of those. With fewer shards
    than W * K, every worker reads all shards in the epoch order instead and keeps the samples whose
    running count % (W * K) is its global worker id (rank * K + w): each sample still goes to one
    worker, at the cost of every worker reading every shard. The samples then pass a shuffle buffer
    of ``shuffle_buffer`` records seeded by (seed, epoch, rank, worker), so the sequence is a
    function of (seed, epoch, rank, worker count). Ranks may receive different numbers of samples
    (unequal shards, a shard count not divisible by W); the trainer must not assume equal counts.

    A key's files must be adjacent in the tar (as webdataset's ``TarWriter`` writes them). Errors:
    missing shard files (at construction), a sample without its label file or with a non-integer
    one, and an extension of ``keys`` absent from every sample of the first non-empty shard a
    worker reads (when that shard ends) raise ``DataError``.

    Resuming: ``state_dict()`` is ``{"epoch", "seed", "yielded"}``, yielded = records handed out in
    the epoch by this object, which only counts with ``num_workers=0`` (worker processes count in
    their copies; the trainer must count itself). ``skip(n)`` / ``load_state_dict`` make the next
    iteration skip the first n records of this rank's epoch sequence, exactly, with
    ``num_workers=0`` only: per-worker skipping would not be exact, so it raises InputError in a
    worker. Call ``set_epoch`` before each epoch's DataLoader iterator is made.

    Args:
        urls: a shard path, a brace pattern (``data/train-{000000..000099}.tar``) or a list.
        keys: record key -> file extension (default image <- jpg, label <- cls).
        seed: shuffle seed.
        shuffle_buffer: records held for shuffling (0 disables).
        rank, world_size: this process's place (default: torch.distributed's, else 0 / 1).
        name: stream name (default: the first shard's folder name).
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        keys: dict[str, str] | None = None,
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
        name: str | None = None,
    ) -> None:
        fn = "ShardStream"
        self.keys = _check_keys(fn, keys)
        self.urls = _shard_paths(fn, urls)
        self.seed = check_int(fn, "seed", seed, 0)
        self.shuffle_buffer = check_int(fn, "shuffle_buffer", shuffle_buffer, 0)
        self.rank, self.world_size = _rank_and_world(fn, rank, world_size)
        self.name = name or Path(self.urls[0]).parent.name or "shards"
        self.modalities = tuple(m for m in MODALITIES if m in self.keys)
        self.classes = _find_classes(fn, self.urls)
        self.epoch = 0
        self.yielded = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shard order and shuffle; the next iteration starts at its beginning."""
        self.epoch = check_int("ShardStream.set_epoch", "epoch", epoch, 0)
        self.yielded = self._skip = 0

    def skip(self, n: int) -> None:
        """Make the next iteration skip the first ``n`` records of this rank's epoch sequence."""
        self.yielded = self._skip = check_int("ShardStream.skip", "n", n, 0)

    def state_dict(self) -> dict[str, Any]:
        """{"epoch", "seed", "yielded"}: yielded = records handed out in this epoch (num_workers=0)."""
        return {"epoch": self.epoch, "seed": self.seed, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields record ``state["yielded"]`` of its epoch."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise InputError(
                f"ShardStream.load_state_dict: the state was saved with seed {state['seed']}, this "
                f"stream has seed {self.seed}; the sequence would differ."
            )
        self.set_epoch(int(state["epoch"]))
        self.skip(int(state["yielded"]))

    def _plan(self, worker: int, workers: int) -> tuple[list[int], int, int]:
        """(shard numbers to read in order, keep every, keep offset) for one worker."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls)).tolist()
        readers = self.world_size * workers
        if len(order) >= readers:
            return order[self.rank :: self.world_size][worker::workers], 1, 0
        return order, readers, self.rank * workers + worker

    def _record(self, shard: int, position: int, sample: dict[str, Any]) -> Record:
        group = f"{Path(self.urls[shard]).name}/{sample['__key__']}"
        record: Record = {}
        for key, ext in self.keys.items():
            value = sample.get(ext)
            if key != "label":
                record[key] = _decode(key, ext, value)
            elif value is None:
                files = sorted(e for e in sample if not e.startswith("__"))
                raise DataError(
                    f"ShardStream: sample {group} has no '.{ext}' label file (its files: {files}); "
                    f"add it, set keys={{'label': <extension>}}, or drop 'label' from keys."
                )
            else:
                record[key] = _decode_label("ShardStream", ext, value)
        record["group"] = group
        record["index"] = shard * INDEX_STRIDE + position
        return record

    def _records(self, shards: list[int], every: int, offset: int) -> Iterator[Record]:
        """The kept records of ``shards`` in order (running count % every == offset)."""
        count, checked = 0, False
        for shard in shards:
            url, seen, found = self.urls[shard], set(), set()
            for position, sample in enumerate(_iter_shard(url)):
                if sample["__key__"] in seen:
                    raise DataError(
                        f"ShardStream: the files of key {sample['__key__']!r} are not adjacent in {url}; "
                        f"write each sample's files together (as TarWriter does) or use ShardSource."
                    )
                if position >= INDEX_STRIDE:
                    raise DataError(f"ShardStream: {url} holds more than {INDEX_STRIDE} samples.")
                seen.add(sample["__key__"])
                if not checked:
                    found.update(sample)
                if count % every == offset:
                    yield self._record(shard, position, sample)
                count += 1
            if not checked and seen:
                _check_extensions("ShardStream", self.keys, found, [url])
                checked = True

    def __iter__(self) -> Iterator[Record]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        skip, self._skip = self._skip, 0
        if skip and info is not None:
            raise InputError(
                f"ShardStream: cannot resume {skip} record(s) into the epoch in DataLoader workers "
                f"(per-worker skipping is not exact); resume with num_workers=0 or from the epoch start."
            )
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        records = _shuffled(self._records(*self._plan(worker, workers)), self.shuffle_buffer, rng)
        self.yielded = skip
        for record in itertools.islice(records, skip, None):
            self.yielded += 1
            yield record

    def __repr__(self) -> str:
        return (
            f"ShardStream(name={self.name!r}, shards={len(self.urls)}, modalities={self.modalities}, "
            f"rank={self.rank}/{self.world_size})"
        )


class TransformedStream(torch.utils.data.IterableDataset):
    """A ``ShardStream``'s records through per-modality transforms, as ``ContrastiveDataset`` does
    for a map-style source: augmentations seeded by (seed, epoch, record index), unloadable
    records turned into ``BadRecord`` values for the ``Collator`` to drop.

    Args:
        stream: the ``ShardStream`` (split over ranks and workers by itself).
        transforms: modality -> transform, as ``ContrastiveDataset``.
        generator_seed: base seed of the augmentation generators.
        derived: extra outputs from a modality's item, as ``ContrastiveDataset``.
    """

    def __init__(
        self, stream: ShardStream, transforms: Any = None, generator_seed: int = 0, derived: Any = None
    ) -> None:
        self.stream = stream
        self.items = ContrastiveDataset(stream, transforms, generator_seed, derived)

    def set_epoch(self, epoch: int) -> None:
        """The epoch's shard order, shuffle and augmentations."""
        self.stream.set_epoch(epoch)
        self.items.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        for record in self.stream:
            yield self.items.transform_record(record, record["index"])
