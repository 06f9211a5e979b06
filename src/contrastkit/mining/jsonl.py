"""Mined negatives as JSON lines, in sentence-transformers' column layouts.

Two layouts, one JSON object per (query, positive) row:

- ``"list"``: ``{"query", "positive", "negatives": [str, ...], "scores": [T(q,p), T(q,n_1), ...]}``;
- ``"n-tuple"``: ``{"query", "positive", "negative_1", ..., "negative_n", "scores"}``, the columns of
  sentence-transformers' ``mine_hard_negatives(output_format="n-tuple", output_scores=True)``;
  rows with fewer than ``num_negatives`` negatives are left out (as there).

``scores`` always starts with the positive's teacher score, then the negatives' in order: the
label column of MarginMSE (arXiv 2010.02666).
"""

from __future__ import annotations

import json
import numbers
import re
from pathlib import Path
from typing import TYPE_CHECKING

from contrastkit.errors import InputError, check_choice

if TYPE_CHECKING:
    from contrastkit.mining.hard_negatives import MinedNegatives

LAYOUTS = ("list", "n-tuple")
_NUMBERED = re.compile(r"negative_[0-9]+")


def to_records(mined: MinedNegatives, layout: str = "list") -> list[dict]:
    """The rows of ``mined`` as dicts in ``layout`` ("list" or "n-tuple", see the module doc)."""
    layout = check_choice("MinedNegatives.records", "layout", layout, LAYOUTS)
    out = []
    for r in range(len(mined)):
        negatives = [mined.corpus[j] for j in mined.negative_index[r]]
        if layout == "n-tuple" and len(negatives) < mined.num_negatives:
            continue
        record: dict = {
            "query": mined.queries[mined.query_index[r]],
            "positive": mined.corpus[mined.positive_index[r]],
        }
        if layout == "list":
            record["negatives"] = negatives
        else:
            record.update({f"negative_{i}": text for i, text in enumerate(negatives, start=1)})
        record["scores"] = [mined.positive_score[r], *mined.negative_scores[r]]
        out.append(record)
    return out


def write_mined_jsonl(records: list[dict], path: str | Path) -> int:
    """Write ``records`` one JSON object per line (UTF-8, parent folders created); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


def read_mined_jsonl(path: str | Path) -> list[dict]:
    """Read mined rows of either layout back as "list"-layout dicts (checked).

    Each returned dict has ``query`` (str), ``positive`` (str), ``negatives`` (list of str, at least
    one) and ``scores`` (list of 1 + len(negatives) floats) when the file has scores.
    """
    fn = "read_mined_jsonl"
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{fn}: argument 'path' must be a JSONL file; {path} does not exist.")
    rows = []
    with path.open(encoding="utf-8") as f:
        try:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {line_no}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{fn}: {where} is not valid JSON ({err.msg}).") from err
                rows.append(_normalise(fn, where, raw))
        except UnicodeDecodeError as err:
            raise InputError(
                f"{fn}: {path} is not UTF-8 text ({err.reason}, after row {len(rows)})."
            ) from None
    if not rows:
        raise InputError(f"{fn}: {path} holds no rows.")
    return rows


def _normalise(fn: str, where: str, raw: object) -> dict:
    if not isinstance(raw, dict):
        raise InputError(f"{fn}: {where} must be a JSON object; got {type(raw).__name__}.")
    numbered = sorted((k for k in raw if _NUMBERED.fullmatch(k)), key=lambda k: int(k[len("negative_") :]))
    negatives = raw.get("negatives", [raw[k] for k in numbered])
    texts = {"query": raw.get("query"), "positive": raw.get("positive")}
    if not all(isinstance(v, str) for v in texts.values()):
        raise InputError(f"{fn}: {where} needs string fields 'query' and 'positive'; got keys {sorted(raw)}.")
    if not (isinstance(negatives, list) and negatives and all(isinstance(n, str) for n in negatives)):
        raise InputError(
            f"{fn}: {where} needs at least one negative: a 'negatives' list of strings or "
            f"'negative_1', 'negative_2', ... fields."
        )
    record = {**texts, "negatives": negatives}
    if "scores" in raw:
        scores = raw["scores"]
        if not (
            isinstance(scores, list)
            and len(scores) == len(negatives) + 1
            and all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scores)
        ):
            raise InputError(
                f"{fn}: {where} 'scores' must list {len(negatives) + 1} numbers (the positive's teacher "
                f"score, then one per negative); got {scores!r}."
            )
        record["scores"] = [float(s) for s in scores]
    return record
