"""Read a retrieval data set in the BEIR layout (corpus, queries, qrels)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO

from contrastkit.errors import InputError

_QRELS_HEADER = ["query-id", "corpus-id", "score"]


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with _open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"load_beir: {path} line {line_no} is not valid JSON ({err.msg}).") from err
            if not isinstance(record, dict) or "_id" not in record:
                raise InputError(
                    f"load_beir: {path} line {line_no} must be a JSON object with an '_id' field."
                )
            records.append(record)
    return records


def _splits(folder: Path) -> list[str]:
    qrels = folder / "qrels"
    return sorted(p.stem for p in qrels.glob("*.tsv")) if qrels.is_dir() else []


def load_beir(
    folder: str | Path, split: str = "test"
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Load ``folder`` in the BEIR layout.

    Files: ``corpus.jsonl`` or ``corpus.jsonl.gz`` (``_id``, ``title``, ``text``), ``queries.jsonl``
    (``_id``, ``text``) and ``qrels/{split}.tsv`` (header ``query-id corpus-id score``, tab-separated).

    Returns:
        corpus: doc id -> (title + " " + text).strip()
        queries: query id -> text (all queries of the file, whichever split judges them)
        qrels: query id -> {doc id: integer relevance grade}

    Example:
        >>> corpus, queries, qrels = load_beir("data/scifact", split="train")  # doctest: +SKIP
    """
    fn = "load_beir"
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"{fn}: argument 'folder' must be a BEIR data set folder; {folder} is not a directory."
        )
    corpus_path = next(
        (p for p in (folder / "corpus.jsonl", folder / "corpus.jsonl.gz") if p.is_file()), None
    )
    if corpus_path is None:
        raise InputError(
            f"{fn}: {folder} has neither corpus.jsonl nor corpus.jsonl.gz; expected the BEIR layout."
        )
    queries_path = folder / "queries.jsonl"
    if not queries_path.is_file():
        raise InputError(f"{fn}: {queries_path} is missing; expected the BEIR layout (queries.jsonl).")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = _splits(folder)
        raise InputError(
            f"{fn}: argument 'split' names a missing file {qrels_path}; the available splits are "
            f"{available or 'none (no qrels/*.tsv)'}. Pass one of them as split=..."
        )

    try:
        return _read_layout(fn, corpus_path, queries_path, qrels_path)
    except UnicodeDecodeError as err:
        raise InputError(
            f"{fn}: a file of {folder} is not UTF-8 text ({err.reason} at byte {err.start}); BEIR files "
            f"are UTF-8 JSON lines and TSV. Re-encode it (e.g. iconv -f latin1 -t utf-8)."
        ) from None


def _read_layout(
    fn: str, corpus_path: Path, queries_path: Path, qrels_path: Path
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {
        str(d["_id"]): (str(d.get("title") or "") + " " + str(d.get("text") or "")).strip()
        for d in _read_jsonl(corpus_path)
    }
    queries = {str(q["_id"]): str(q.get("text") or "") for q in _read_jsonl(queries_path)}
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n\r").split("\t")
            if line_no == 1 and fields[:3] == _QRELS_HEADER:
                continue
            if not line.strip():
                continue
            try:
                qid, did, score = fields[0], fields[1], int(fields[2])
            except (IndexError, ValueError) as err:
                raise InputError(
                    f"{fn}: {qrels_path} line {line_no} must be 'query-id<TAB>corpus-id<TAB>score' with an "
                    f"integer score; got {line.rstrip()!r}."
                ) from err
            qrels.setdefault(qid, {})[did] = score
    return corpus, queries, qrels
