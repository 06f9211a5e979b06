"""``ManifestSource``: one record per row of a TSV, CSV or JSONL manifest."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.data.badrecords import DataError
from contrastkit.data.sources import MODALITIES, Record, Source
from contrastkit.errors import InputError

_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

#: Header names recognised without a ``columns`` mapping, per record key (first match wins).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "image_path", "filepath"),
    "text": ("text", "caption"),
    "series": ("series",),
    "label": ("label",),
}


@contextlib.contextmanager
def _unlimited_csv_fields() -> Iterator[None]:
    """Lift the csv module's 128 KiB cell limit while a manifest is read (a long caption is data,
    not an error), and put the process-wide limit back afterwards."""
    previous = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_rows(path: Path, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Header names and the rows (dicts) of a manifest; blank lines are skipped."""
    try:
        with _unlimited_csv_fields():
            return _parse_rows(path, fmt)
    except UnicodeDecodeError as e:
        raise DataError(
            f"ManifestSource: {path} is not UTF-8 text (byte {e.start}: {e.reason}); save the manifest "
            f"as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    except csv.Error as e:
        raise DataError(f"ManifestSource: {path} is not a readable {fmt.upper()} file ({e}).") from None


def _parse_rows(path: Path, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        if fmt == "jsonl":
            rows = []
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"ManifestSource: {path} line {line_no} is not valid JSON ({e})."
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"ManifestSource: {path} line {line_no} must be a JSON object; "
                        f"got {type(row).__name__}."
                    )
                rows.append(row)
            header = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys
            return header, rows
        if fmt == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        lines = [r for r in reader if r]
    if not lines:
        return [], []
    header = [h.strip() for h in lines[0]]
    for line_no, cells in enumerate(lines[1:], start=2):
        if len(cells) > len(header):  # a short row keeps empty cells and becomes a bad record
            hint = "quote cells that hold commas" if fmt == "csv" else "captions must not hold a tab"
            raise DataError(
                f"ManifestSource: {path} row {line_no} has {len(cells)} cells but the header has "
                f"{len(header)} ({', '.join(header)}); {hint}."
            )
    return header, [dict(zip(header, r + [""] * (len(header) - len(r)), strict=True)) for r in lines[1:]]


def _default_columns(header: list[str]) -> dict[str, str]:
    columns = {}
    for key, names in COLUMN_ALIASES.items():
        found = next((n for n in names if n in header), None)
        if found is not None:
            columns[key] = found
    return columns


def _parse_labels(path: Path, column: str, values: list[Any]) -> tuple[list[int], list[str] | None]:
    """Integer labels as given, or class names -> (indices into the sorted names, the names)."""
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            raise DataError(f"ManifestSource: {path} row {i + 1} has an empty '{column}' label.")
    try:
        return [int(v) for v in values], None
    except (TypeError, ValueError):
        classes = sorted({str(v).strip() for v in values})
        position = {c: k for k, c in enumerate(classes)}
        return [position[str(v).strip()] for v in values], classes


class ManifestSource(Source):
    """Records from a manifest file: one row per record, one column per modality.

    The format follows the extension: ``.tsv``/``.tab`` (tab-separated, no quoting), ``.csv``,
    ``.jsonl``/``.ndjson`` (one JSON object per line). Image paths are relative to the manifest's
    folder (absolute paths are kept); images are not opened here. A series cell holds a JSON list
    ((T,) or (C, T)) or the path of a ``.npy`` file. Labels are ints, or class names (then
    ``classes`` lists the sorted names and ``label`` indexes them).

    Args:
        path: the manifest file.
        columns: record key -> column name, e.g. ``{"image": "file", "text": "caption"}``. Default:
            every header column named like a record key (``image``/``image_path``/``filepath``,
            ``text``/``caption``, ``series``, ``label``).
        group_by: record key or column whose value identifies a record's group (several captions
            of one image share it); None, or the default "image" without an image column, makes
            every row its own group.
        name: source name (default: the file's stem).

    Example:
        >>> src = ManifestSource("flickr8k/train.tsv", columns={"image": "image", "text": "caption"})
        >>> src[0]  # doctest: +SKIP
        {'image': '/.../flickr8k/images/2513260012_03d33305cf.jpg', 'text': 'A black dog ...', 'group': ...}
    """

    def __init__(
        self,
        path: str | Path,
        columns: dict[str, str] | None = None,
        group_by: str | None = "image",
        name: str | None = None,
    ) -> None:
        path = Path(path).expanduser()
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            known = ", ".join(sorted(_FORMATS))
            raise DataError(
                f"ManifestSource: cannot tell the format of {path} from its extension "
                f"{path.suffix!r}; use one of {known}."
            )
        if not path.is_file():
            raise DataError(f"ManifestSource: manifest file {path} does not exist (or is not a file).")
        header, rows = _read_rows(path, fmt)
        if not rows:
            raise DataError(f"ManifestSource: manifest {path} has no data rows (header: {header}).")
        self.path = path
        self.folder = path.resolve().parent
        self.name = name or path.stem
        self.columns = self._resolve_columns(columns, header)
        self.modalities = tuple(m for m in MODALITIES if m in self.columns)
        self._data = {k: [row.get(c) for row in rows] for k, c in self.columns.items()}
        self._n = len(rows)
        if "label" in self._data:
            self._data["label"], self.classes = _parse_labels(
                path, self.columns["label"], self._data["label"]
            )
        self._groups = self._resolve_groups(group_by, header, rows)
        if "image" in self._data:
            self._data["image"] = [self._resolve_path(v) for v in self._data["image"]]

    def _resolve_columns(self, columns: dict[str, str] | None, header: list[str]) -> dict[str, str]:
        if columns is None:
            columns = _default_columns(header)
        elif not isinstance(columns, dict):
            raise InputError(
                f"ManifestSource: argument 'columns' must be a dict record key -> column name; "
                f"got {type(columns).__name__}."
            )
        allowed = (*MODALITIES, "label")
        for key, col in columns.items():
            if key not in allowed:
                raise InputError(
                    f"ManifestSource: 'columns' key {key!r} is not a record key; use one of {allowed}."
                )
            if col not in header:
                raise DataError(
                    f"ManifestSource: column {col!r} (for {key!r}) is not in {self.path}; "
                    f"columns found: {header}."
                )
        if not any(k in columns for k in MODALITIES):
            raise DataError(
                f"ManifestSource: no modality column in {self.path}; columns found: {header}. "
                f"Name them with columns={{'image': ..., 'text': ...}}."
            )
        return dict(columns)

    def _resolve_groups(self, group_by: str | None, header: list[str], rows: list[dict]) -> list[Hashable]:
        column = self.columns.get(group_by, group_by) if group_by is not None else None
        if column is not None and column not in header:
            if group_by != "image":
                raise DataError(
                    f"ManifestSource: group_by={group_by!r} is neither a record key nor a column of "
                    f"{self.path}; columns found: {header}."
                )
            column = None
        if column is None:
            return list(range(self._n))
        return [row.get(column) for row in rows]

    def _resolve_path(self, value: Any) -> str:
        if value is None or not str(value).strip():
            return ""
        p = Path(str(value).strip()).expanduser()
        return str(p if p.is_absolute() else self.folder / p)

    def __len__(self) -> int:
        return self._n

    def _record(self, index: int) -> Record:
        record: Record = {k: v[index] for k, v in self._data.items()}
        if "series" in record:
            record["series"] = self._load_series(record["series"])
        if "text" in record and record["text"] is None:
            record["text"] = ""
        record["group"] = self._groups[index]
        return record

    def _load_series(self, value: Any) -> np.ndarray:
        """A series cell -> float32 array; raises ValueError (a bad record) when unreadable."""
        if isinstance(value, str):
            text = value.strip()
            if text.endswith(".npy"):
                p = Path(text)
                return np.load(p if p.is_absolute() else self.folder / p, allow_pickle=False).astype(
                    np.float32
                )
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"series cell is neither a JSON list nor a .npy path ({e})") from None
        if value is None:
            raise ValueError("missing series value")
        return np.asarray(value, dtype=np.float32)

    def group_keys(self) -> list[Hashable]:
        return list(self._groups)

    def label_list(self) -> list[int] | None:
        return list(self._data["label"]) if "label" in self._data else None
