"""The source protocol: a map-style, lazily loaded list of records.

A *record* is a dict: modality name -> raw item (``"image"``: a path, encoded bytes or a PIL
image; ``"text"``: a str; ``"series"``: a (C, T) float array), plus optional ``"group"`` (the id of
the underlying sample; records of one group must not share a training batch) and ``"label"`` (an
int class id). Sources only point at the raw items; decoding happens in the transforms.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from contrastkit.errors import InputError

#: The modalities a source may carry (``"label"`` is a record key, not a modality).
MODALITIES: tuple[str, ...] = ("image", "text", "series")

Record = dict[str, Any]


class Source:
    """Base class of the sources: ``len``, ``source[i] -> record`` and the group / label views.

    Subclasses set ``name``, ``modalities`` and, for classification data, ``classes`` (the class
    names, in label order, used for zero-shot prompts), and implement ``__len__`` and ``_record``.
    They may override ``group_keys`` / ``label_list`` when those are cheaper than loading records.
    """

    name: str = "source"
    modalities: tuple[str, ...] = ()
    classes: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def _record(self, index: int) -> Record:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Record:
        """The record at ``index`` (negative indices count from the end); IndexError when out of range."""
        if isinstance(index, bool):
            raise TypeError(f"{type(self).__name__} indices must be integers; got bool.")
        try:
            index = operator.index(index)  # int, numpy integers, 0-d integer tensors
        except TypeError:
            raise TypeError(
                f"{type(self).__name__} indices must be integers; got {type(index).__name__}."
            ) from None
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} records.")
        return self._record(index)

    def group_keys(self) -> list[Hashable]:
        """The group of each record (its index when it has none), in record order."""
        return [self[i].get("group", i) for i in range(len(self))]

    def groups(self) -> tuple[list[Hashable], torch.Tensor]:
        """Distinct groups in first-seen order and a (len,) int64 tensor: record -> group index."""
        keys = self.group_keys()
        position: dict[Hashable, int] = {}
        ids = [position.setdefault(k, len(position)) for k in keys]
        return list(position), torch.tensor(ids, dtype=torch.int64)

    def label_list(self) -> list[int] | None:
        """The label of each record, or None when the source has no labels."""
        if len(self) == 0 or "label" not in self[0]:
            return None
        return [int(self[i]["label"]) for i in range(len(self))]

    def labels(self) -> torch.Tensor | None:
        """(len,) int64 labels (for ClassBalancedBatchSampler and evaluation), or None."""
        labels = self.label_list()
        return None if labels is None else torch.tensor(labels, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, records={len(self)}, modalities={self.modalities})"


class ListSource(Source):
    """A source over records held in memory (tests, small custom sets).

    Args:
        records: the record dicts; every one must carry the same modalities.
        name: a name for messages and reports.
        classes: optional class names, in label order.
    """

    def __init__(self, records: Sequence[Record], name: str = "list", classes: list[str] | None = None):
        records = list(records)
        if not records:
            raise InputError(f"ListSource: argument 'records' is empty; source {name!r} needs at least one.")
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise InputError(f"ListSource: record {i} must be a dict; got {type(r).__name__}.")
        self.records = records
        self.name = name
        self.modalities = tuple(m for m in MODALITIES if m in records[0])
        if not self.modalities:
            raise InputError(
                f"ListSource: record 0 has no modality key (one of {', '.join(MODALITIES)}); "
                f"got keys {sorted(records[0])}."
            )
        self.classes = classes

    def __len__(self) -> int:
        return len(self.records)

    def _record(self, index: int) -> Record:
        return dict(self.records[index])
