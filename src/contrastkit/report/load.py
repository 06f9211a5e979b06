"""Read and check the files of a run directory (the trainer writes them; the report only reads).

Required: ``log.csv`` and ``metrics.json``. Optional (a missing one is reported as "not available"):
``config.yaml``, ``eval/similarity.npy``, ``eval/examples.json``, ``eval/thumbnails.npy``,
``data_issues.txt``. A file that exists but cannot be read raises an :class:`InputError` naming it.
"""

from __future__ import annotations

import csv
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from contrastkit.errors import InputError

_FN = "write_report"
_PRODUCE = (
    "Produce a run directory with `contrastkit train ...` (it writes config.yaml, log.csv and metrics.json)."
)
_REWRITE = "The trainer writes it; restore the file or rerun `contrastkit train ...`."


@dataclass
class RunData:
    """Everything the report shows, checked. ``log`` maps a column name to float64 values (n_rows,)."""

    run_dir: Path
    config: dict[str, Any] | None
    metrics: dict[str, Any]
    log: dict[str, np.ndarray]
    log_note: str | None
    similarity: np.ndarray | None
    examples: list[dict[str, Any]] | None
    thumbnails: np.ndarray | None
    data_issues: str | None


def _corrupt(path: Path, detail: str) -> InputError:
    return InputError(f"{_FN}: {path} is corrupt: {detail}. {_REWRITE}")


def _require(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.is_file():
        raise InputError(f"{_FN}: {name} is missing from the run directory {run_dir}. {_PRODUCE}")
    return path


def read_config(path: Path) -> dict[str, Any] | None:
    """The resolved config as a mapping, or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _corrupt(path, f"not readable YAML ({err})") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _corrupt(path, f"expected a YAML mapping at the top, got {type(config).__name__}")
    return config


def read_metrics(path: Path) -> dict[str, Any]:
    """The flat ``{"section/name": value}`` final metrics."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"not valid JSON ({err})") from err
    if not isinstance(metrics, dict):
        raise _corrupt(path, f"expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics


def _column(path: Path, name: str, cells: list[str], lines: list[int]) -> np.ndarray | None:
    """Parse one column to float64 (empty cell -> NaN); None if a cell is not a number."""
    try:
        return np.array([c.strip() or "nan" for c in cells], dtype=np.str_).astype(np.float64)
    except ValueError:
        if name not in ("step", "loss"):
            return None
        for cell, line in zip(cells, lines, strict=True):
            try:
                float(cell.strip() or "nan")
            except ValueError:
                raise _corrupt(path, f"line {line}, column '{name}': {cell!r} is not a number") from None
        raise _corrupt(path, f"column '{name}' is not numeric") from None


def read_log(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """The per-step log as numeric columns (``step`` and ``loss`` required) and a note, if any.

    Columns other than ``step``/``loss`` that are not numeric are dropped; a short last row (a run
    still writing) is skipped and noted.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _corrupt(path, f"not readable CSV ({err})") from err
    if not rows:
        raise _corrupt(path, "it is empty (expected a header line starting with step,loss)")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in ("step", "loss") if c not in header]
    if missing:
        raise _corrupt(path, f"the header {header} lacks the required column(s) {missing}")
    body, note = rows[1:], None
    if body and len(body[-1][1]) < len(header):
        body = body[:-1]
        note = "The last row of log.csv is incomplete (a run still writing?) and is not shown."
    for line, row in body:
        if len(row) != len(header):
            raise _corrupt(path, f"line {line} has {len(row)} fields, the header has {len(header)}")
    lines = [line for line, _ in body]
    log: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        values = _column(path, name, [row[j] for _, row in body], lines)
        if values is not None and name not in log:
            log[name] = values
    if not np.isfinite(log["step"]).all():
        raise _corrupt(path, "the 'step' column has empty or non-finite values")
    return log, note


def _load_npy(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise _corrupt(path, f"not a readable .npy array ({err})") from err


def read_similarity(path: Path) -> np.ndarray | None:
    """The (n, m) image-by-caption cosine similarities as float64, or None when absent."""
    sim = _load_npy(path)
    if sim is None:
        return None
    if sim.ndim != 2 or sim.size == 0 or not np.issubdtype(sim.dtype, np.number):
        raise _corrupt(path, f"expected a non-empty float (n, n) array, got {sim.dtype} of shape {sim.shape}")
    if np.iscomplexobj(sim):
        raise _corrupt(path, f"expected real similarities, got {sim.dtype}")
    return sim.astype(np.float64)


def read_thumbnails(path: Path) -> np.ndarray | None:
    """The uint8 (G, h, w, 3) gallery thumbnails ((G, h, w) grayscale is accepted), or None."""
    thumbs = _load_npy(path)
    if thumbs is None:
        return None
    ok_shape = thumbs.ndim == 3 or (thumbs.ndim == 4 and thumbs.shape[-1] in (1, 3, 4))
    if thumbs.dtype != np.uint8 or not ok_shape or thumbs.size == 0:
        raise _corrupt(
            path, f"expected a uint8 (G, h, w, 3) array, got {thumbs.dtype} of shape {thumbs.shape}"
        )
    return thumbs


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_example(path: Path, i: int, ex: object, n_gallery: int | None) -> dict[str, Any]:
    where = f"example {i}"
    if not isinstance(ex, dict):
        raise _corrupt(path, f"{where} is a {type(ex).__name__}, expected an object")
    query, target = ex.get("query"), ex.get("target")
    retrieved, scores = ex.get("retrieved"), ex.get("scores", [])
    if not isinstance(query, str) or not _is_int(target):
        raise _corrupt(path, f"{where} needs a string 'query' and an integer 'target'")
    if not isinstance(retrieved, list) or not all(_is_int(r) for r in retrieved):
        raise _corrupt(path, f"{where}: 'retrieved' must be a list of integer gallery indices")
    numeric = all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scores or [])
    if not isinstance(scores, list) or not numeric or len(scores) not in (0, len(retrieved)):
        raise _corrupt(path, f"{where}: 'scores' must be a list of numbers, one per retrieved index")
    if n_gallery is not None:
        bad = [k for k in [target, *retrieved] if not 0 <= k < n_gallery]
        if bad:
            raise _corrupt(path, f"{where}: gallery index {bad[0]} is outside thumbnails.npy (G={n_gallery})")
    return {"query": query, "target": int(target), "retrieved": [int(r) for r in retrieved], "scores": scores}


def read_examples(path: Path, n_gallery: int | None) -> list[dict[str, Any]] | None:
    """The text->image example retrievals, checked (indices against the gallery size), or None."""
    if not path.is_file():
        return None
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"not valid JSON ({err})") from err
    if not isinstance(examples, list):
        raise _corrupt(path, f"expected a JSON list of examples, got {type(examples).__name__}")
    return [_check_example(path, i, ex, n_gallery) for i, ex in enumerate(examples)]


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read every file of ``run_dir`` the report uses."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise InputError(f"{_FN}: the run directory {run_dir} {what}. {_PRODUCE}")
    log, note = read_log(_require(run_dir, "log.csv"))
    metrics = read_metrics(_require(run_dir, "metrics.json"))
    thumbnails = read_thumbnails(run_dir / "eval" / "thumbnails.npy")
    n_gallery = None if thumbnails is None else len(thumbnails)
    issues_path = run_dir / "data_issues.txt"
    issues = issues_path.read_text(encoding="utf-8", errors="replace") if issues_path.is_file() else None
    return RunData(
        run_dir=run_dir,
        config=read_config(run_dir / "config.yaml"),
        metrics=metrics,
        log=log,
        log_note=note,
        similarity=read_similarity(run_dir / "eval" / "similarity.npy"),
        examples=read_examples(run_dir / "eval" / "examples.json", n_gallery),
        thumbnails=thumbnails,
        data_issues=issues,
    )
