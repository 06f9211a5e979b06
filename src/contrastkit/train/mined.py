"""Mined hard-negative rows as training data: ``MinedSource`` (the JSONL file) and
``MinedPairsDataset`` (its rows as a bi-encoder's batch items).

A row is sentence-transformers' column layout, as ``contrastkit.mining`` writes it and
``contrastkit.mining.read_mined_jsonl`` reads and checks it:

    {"query": str, "positive": str, "negatives": [str, ...], "scores": [T(q, p), T(q, n_1), ...]}

``scores`` (the teacher's scores of the positive, then of each negative) is optional, but then
absent from every row. Each item of ``MinedPairsDataset`` holds the query under ``"text"`` (the
text tower's modality), the positive under ``"positive"``, the first N negatives under
``"negative_1" .. "negative_N"``, their N + 1 teacher scores under ``"scores"`` and the raw texts
(query, positive, negatives) under ``"raw_texts"`` for a guide model with its own tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch

from contrastkit.data import DataError, Source
from contrastkit.data.sources import Record
from contrastkit.mining.jsonl import read_mined_jsonl

QUERY = "text"
POSITIVE = "positive"
SCORES = "scores"
RAW_TEXTS = "raw_texts"


def negative_keys(negatives: int) -> tuple[str, ...]:
    """The batch keys of the first ``negatives`` mined negatives: ``negative_1`` ... ``negative_N``."""
    return tuple(f"negative_{k}" for k in range(1, negatives + 1))


def is_document_key(key: str) -> bool:
    """Whether a batch key holds a document of mined rows (the positive or a negative)."""
    return key == POSITIVE or (key.startswith("negative_") and key[len("negative_") :].isdigit())


def document_keys(negatives: int) -> tuple[str, ...]:
    """The batch keys embedded by the text tower besides the query: the positive, then the negatives."""
    return (POSITIVE, *negative_keys(negatives))


class MinedSource(Source):
    """The rows of a mined hard-negative JSONL file, read and checked when it is opened.

    ``source[i]`` is ``{"text": query, "positive", "negatives": [...], "scores": [...] (when the
    file has them), "group"}``: rows linked by a shared query or positive text (directly or through
    other rows) form a group, so the default sampler never puts two of them in one batch: a
    repeated query or positive would be the other row's in-batch false negative
    (sentence-transformers' ``NoDuplicatesBatchSampler`` avoids them too).

    Args:
        path: the JSONL file, read by ``read_mined_jsonl``: a corrupt line, a missing query,
            positive or negative, or a ``scores`` list whose length is not 1 + len(negatives)
            raises ``InputError`` naming the line. Non-finite scores, and scores on only some
            rows, or an empty text raise ``DataError`` naming the row (the n-th non-blank line).

    Example:
        >>> source = MinedSource("runs/negatives.jsonl")  # doctest: +SKIP
        >>> source.check_negatives(3)  # every row has >= 3 negatives  # doctest: +SKIP
    """

    modalities = ("text",)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows = read_mined_jsonl(self.path)
        with_scores = [("scores" in row) for row in self.rows]
        for number, row in enumerate(self.rows, start=1):
            if with_scores[number - 1] != with_scores[0]:
                raise self._error(
                    number, "differs from row 1 in having 'scores'; give scores on all rows or none."
                )
            if not all(text.strip() for text in (row["query"], row["positive"], *row["negatives"])):
                raise self._error(number, "has an empty or whitespace-only text; drop or fix the row.")
            if not all(math.isfinite(s) for s in row.get("scores", ())):
                raise self._error(number, f"'scores' must be finite; got {row['scores']}.")
        self.has_scores = with_scores[0]
        self.name = self.path.name
        self._groups = linked_groups([(row["query"].strip(), row["positive"].strip()) for row in self.rows])

    def _error(self, number: int, message: str) -> DataError:
        return DataError(f"MinedSource: {self.path} row {number} {message}")

    def __len__(self) -> int:
        return len(self.rows)

    def _record(self, index: int) -> Record:
        row = self.rows[index]
        record = {"text": row["query"], "positive": row["positive"], "negatives": list(row["negatives"])}
        if self.has_scores:
            record["scores"] = list(row["scores"])
        record["group"] = self._groups[index]
        return record

    def group_keys(self) -> list[Hashable]:
        return list(self._groups)

    def texts(self) -> list[str]:
        """Every query, positive and negative of the file (e.g. to train a tokenizer)."""
        return [t for row in self.rows for t in (row["query"], row["positive"], *row["negatives"])]

    def check_negatives(self, negatives: int) -> None:
        """Raise ``DataError`` naming the first row with fewer than ``negatives`` mined negatives."""
        for number, row in enumerate(self.rows, start=1):
            if len(row["negatives"]) < negatives:
                raise self._error(
                    number,
                    f"has {len(row['negatives'])} negative(s), but {negatives} are used per row "
                    f"(data.negatives); mine more, drop such rows, or lower data.negatives.",
                )


def linked_groups(pairs: list[tuple[Hashable, Hashable]]) -> list[Hashable]:
    """For each (query, positive) row, a key shared by every row it is linked to through an equal
    query or positive (directly or through other rows): the connected components of a union-find.
    Rows of one group must not share a batch, or a positive is another row's false negative."""
    parent: dict[Hashable, Hashable] = {}

    def root(key: Hashable) -> Hashable:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for query, positive in pairs:
        parent[root(query)] = root(positive)
    return [root(query) for query, _ in pairs]


class MinedPairsDataset(torch.utils.data.Dataset):
    """``MinedSource`` rows as batch items of a bi-encoder (see the module docstring).

    Args:
        source: the mined rows.
        negatives: N >= 0, the first N negatives of each row (and their N + 1 teacher scores) are
            used; ``source.check_negatives(N)`` is run here.
    """

    def __init__(self, source: MinedSource, negatives: int = 0) -> None:
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
            raise DataError(f"MinedPairsDataset: 'negatives' must be an int >= 0; got {negatives!r}.")
        source.check_negatives(negatives)
        self.source, self.negatives = source, negatives
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The items do not depend on the epoch (no augmentation); kept for the loader protocol."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        record = self.source[index]
        documents = [record["positive"], *record["negatives"][: self.negatives]]
        item: dict[str, Any] = {"index": index, QUERY: record["text"].strip()}
        for key, text in zip(document_keys(self.negatives), documents, strict=True):
            item[key] = text.strip()
        if "scores" in record:
            item[SCORES] = torch.tensor(record["scores"][: 1 + self.negatives], dtype=torch.float32)
        item[RAW_TEXTS] = (item[QUERY], *(item[k] for k in document_keys(self.negatives)))
        return item
