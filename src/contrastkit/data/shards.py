"""``ShardSource``: WebDataset tar shards read into memory as a map-style source."""

from __future__ import annotations

import io
import json
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.data.badrecords import DataError
from contrastkit.data.sources import MODALITIES, Record, Source
from contrastkit.errors import InputError


def expand_shard_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand brace patterns (``train-00000{0..1}.tar``) in a string or each string of a list."""
    from webdataset.shardlists import expand_urls

    if isinstance(urls, (str, Path)):
        urls = [urls]
    expanded: list[str] = []
    for url in urls:
        expanded.extend(expand_urls(str(Path(url).expanduser())))
    return expanded


def _iter_shard(path: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard in tar order: dicts extension -> bytes plus ``__key__``.

    webdataset's ``group_by_keys`` joins the files of one key only where they are adjacent in the
    tar (as ``TarWriter`` writes them); a key whose pieces lie apart comes out more than once.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as f:
        files = ({**entry, "__url__": path} for entry in tar_file_iterator(f))
        yield from group_by_keys(files)


def _read_shard(path: str) -> list[dict[str, Any]]:
    """All samples of one tar shard, the pieces of one key merged wherever they lie."""
    merged: dict[str, dict[str, Any]] = {}
    for sample in _iter_shard(path):
        merged.setdefault(sample["__key__"], {}).update(sample)
    return list(merged.values())


def _decode(key: str, ext: str, value: bytes | None) -> Any:
    """A raw shard item -> the record's raw item (images stay encoded bytes)."""
    if value is None or key == "image":
        return value
    if key == "label":
        return int(value.decode("utf-8").strip())
    if key == "text":
        return value.decode("utf-8")
    if key == "series":
        if ext.endswith("npy"):
            return np.load(io.BytesIO(value), allow_pickle=False).astype(np.float32)
        return np.asarray(json.loads(value.decode("utf-8")), dtype=np.float32)
    return value


def _decode_label(fn: str, ext: str, value: bytes) -> int:
    """A ``.cls`` entry -> int; DataError when it is not an integer."""
    try:
        return _decode("label", ext, value)
    except (AttributeError, ValueError) as e:
        raise DataError(f"{fn}: a '.{ext}' entry is not an integer ({e}).") from None


def _check_keys(fn: str, keys: dict[str, str] | None) -> dict[str, str]:
    """The record key -> extension map (default image <- jpg, label <- cls), validated."""
    keys = {"image": "jpg", "label": "cls"} if keys is None else dict(keys)
    allowed = (*MODALITIES, "label")
    bad_keys = [k for k in keys if k not in allowed]
    if bad_keys or not any(k in keys for k in MODALITIES):
        raise InputError(
            f"{fn}: argument 'keys' must map record keys ({', '.join(allowed)}, at least one "
            f"modality) to file extensions; got {keys}."
        )
    return keys


def _shard_paths(fn: str, urls: str | Path | Sequence[str | Path]) -> list[str]:
    """The expanded shard paths; DataError naming the missing ones."""
    paths = expand_shard_urls(urls)
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        raise DataError(f"{fn}: shard file(s) not found: {missing[:5] or urls}.")
    return paths


def _check_extensions(fn: str, keys: dict[str, str], found: set[str], where: list[str]) -> None:
    """DataError when an extension of ``keys`` is not among those ``found`` in the shards ``where``."""
    for key, ext in keys.items():
        if ext not in found:
            listed = sorted(e for e in found if not e.startswith("__"))
            raise DataError(
                f"{fn}: no sample in {where[:5]} has a '.{ext}' file (for {key!r}); "
                f"extensions found: {listed}. Set keys={{{key!r}: <extension>}}."
            )


def _find_classes(fn: str, paths: list[str]) -> list[str] | None:
    """Class names from a ``classes.json`` beside the first shard (a list or {"classes": [...]})."""
    candidate = Path(paths[0]).parent / "classes.json"
    if not candidate.is_file():
        return None
    names = json.loads(candidate.read_text(encoding="utf-8"))
    if isinstance(names, dict):
        names = names.get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{fn}: {candidate} must hold a list of class names or {{'classes': [...]}}.")
    return names


class ShardSource(Source):
    """Records from WebDataset tar shards, read through the ``webdataset`` library.

    Every sample is materialised into memory as raw bytes when the source is built (images stay
    encoded and are decoded by the transform), which suits the small and medium sets this library
    ships examples for (CIFAR-10's 10,000 training JPEGs take about 10 MB); stream larger sets with
    ``ShardStream``. Samples are sorted by (key, shard) so that indices are deterministic
    whatever the shard order. Labels (``.cls``) are the class index as text; texts are UTF-8;
    series are ``.npy`` or JSON. ``classes`` come from a ``classes.json`` beside the shards.

    Args:
        urls: a shard path, a brace pattern (``data/train-00000{0..1}.tar``) or a list of them.
        keys: record key -> file extension inside the shards (default image <- jpg, label <- cls).
        name: source name (default: the first shard's folder name).

    Example:
        >>> src = ShardSource("cifar10/train-00000{0..1}.tar")
        >>> src[0]["label"], src.classes[src[0]["label"]]  # doctest: +SKIP
        (9, 'truck')
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        keys: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        fn = "ShardSource"
        keys = _check_keys(fn, keys)
        paths = _shard_paths(fn, urls)
        samples = []
        for shard_no, path in enumerate(paths):
            samples.extend((s["__key__"], shard_no, s) for s in _read_shard(path))
        if not samples:
            raise DataError(f"{fn}: the shards {paths[:5]} hold no samples.")
        samples.sort(key=lambda t: (t[0], t[1]))
        _check_extensions(fn, keys, {e for _, _, s in samples for e in s}, paths)
        self.urls = paths
        self.keys = keys
        self.name = name or Path(paths[0]).parent.name or "shards"
        self.modalities = tuple(m for m in MODALITIES if m in keys)
        self.classes = _find_classes(fn, paths)
        self._keys = [f"{Path(self.urls[shard]).name}/{key}" for key, shard, _ in samples]
        self._items = {k: [s.get(ext) for _, _, s in samples] for k, ext in keys.items()}
        if "label" in keys:
            unlabelled = [k for k, v in zip(self._keys, self._items["label"], strict=True) if v is None]
            if unlabelled:
                raise DataError(
                    f"{fn}: {len(unlabelled)} sample(s) have no '.{keys['label']}' label file "
                    f"(first: {unlabelled[:5]}); add them, or drop 'label' from keys."
                )
            self._items["label"] = [_decode_label(fn, keys["label"], v) for v in self._items["label"]]

    def __len__(self) -> int:
        return len(self._keys)

    def _record(self, index: int) -> Record:
        record: Record = {
            k: v[index] if k == "label" else _decode(k, self.keys[k], v[index])
            for k, v in self._items.items()
        }
        record["group"] = self._keys[index]
        return record

    def group_keys(self) -> list[Hashable]:
        return list(self._keys)

    def label_list(self) -> list[int] | None:
        return list(self._items["label"]) if "label" in self._items else None
