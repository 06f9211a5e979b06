"""Read the classic SMART test collections (Cranfield, CISI) into the BEIR structure.

SMART files are latin-1 text: records start with ``.I <id>``, fields with ``.T`` (title),
``.A`` (authors), ``.B`` (source), ``.W`` (text), ``.X`` (cross-references) and a few others.
"""

from __future__ import annotations

import re
from pathlib import Path

from contrastkit.errors import InputError

_FIELD = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")

#: Cranfield relevance codes (``cranqrel``, 3rd column) -> BEIR grades (higher = more relevant).
#: Codes 1-4 are Cleverdon's scale, 1 = "a complete answer" ... 4 = "of minimum interest" (5, "no
#: interest", never occurs), so the grade is 5 - code. Code -1 appears once per query and marks the
#: question's source document (the paper its author started from, e.g. document 486, "similarity
#: laws for aerothermoelastic testing", for query 1 "what similarity laws must be obeyed when
#: constructing aeroelastic models ..."); it is graded like a complete answer (4).
CRANFIELD_GRADES = {-1: 4, 1: 4, 2: 3, 3: 2, 4: 1}

#: The files of each collection: (documents, queries, relevance judgements).
COLLECTIONS = {
    "cranfield": ("cran.all.1400", "cran.qry", "cranqrel"),
    "cisi": ("CISI.ALL", "CISI.QRY", "CISI.REL"),
}


def parse_smart(text: str) -> list[tuple[str, dict[str, str]]]:
    """SMART records in file order: [(the ``.I`` id, {field letter: text})].

    A field's text is its lines joined by spaces and stripped; a repeated field is appended.
    """
    records: list[tuple[str, dict[str, str]]] = []
    field = None
    for line_no, line in enumerate(text.splitlines(), 1):
        match = _FIELD.match(line.rstrip())
        if match and match.group(1) == "I":
            records.append(((match.group(2) or "").strip(), {}))
            field = None
        elif match and match.group(2) is None:
            if not records:
                raise InputError(
                    f"parse_smart: line {line_no} starts field .{match.group(1)} before any .I record."
                )
            field = match.group(1)
            records[-1][1].setdefault(field, "")
        elif field is not None:
            fields = records[-1][1]
            fields[field] = (fields[field] + " " + line.strip()).strip()
    return records


def _text(fields: dict[str, str]) -> str:
    """Title and text, as BEIR joins them: (title + " " + text).strip()."""
    return (fields.get("T", "") + " " + fields.get("W", "")).strip()


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"load_smart: {path} is missing; expected the SMART collection's files there.")
    return path.read_text(encoding="latin-1")


def _detect(folder: Path) -> str:
    for name, files in COLLECTIONS.items():
        if (folder / files[0]).is_file():
            return name
    expected = "; ".join(f"{name}: {', '.join(files)}" for name, files in COLLECTIONS.items())
    raise InputError(
        f"load_smart: {folder} holds no SMART collection I know; expected the files of {expected}."
    )


def load_smart(folder: str | Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Load the Cranfield or CISI collection in ``folder`` (detected from its file names).

    Returns the structure of ``contrastkit.data.beir.load_beir``, so ``contrastkit.eval.ir_metrics``
    scores both:

        corpus: doc id (the ``.I`` id) -> (title + " " + text).strip()
        queries: query id -> (title + " " + text).strip()
        qrels: query id -> {doc id: grade >= 1}

    Query ids: Cranfield numbers its queries in ``cranqrel`` by their order in ``cran.qry``
    (1..225), not by their ``.I`` ids (001, 002, 004, ...), so the ids here are that order, as
    strings; CISI queries keep their ``.I`` ids (1..112; 76 of them have judgements). Grades:
    Cranfield's codes map through ``CRANFIELD_GRADES`` (1 "complete answer" -> 4 ... 4 "minimum
    interest" -> 1, -1 "source document" -> 4); CISI judges binary (its 3rd and 4th columns are all
    0), so every listed pair is grade 1.

    Example:
        >>> corpus, queries, qrels = load_smart("data/cranfield")  # doctest: +SKIP
    """
    fn = "load_smart"
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"{fn}: argument 'folder' must be a SMART collection folder; {folder} is not a directory."
        )
    name = _detect(folder)
    doc_file, query_file, rel_file = (folder / f for f in COLLECTIONS[name])
    corpus = {doc_id: _text(fields) for doc_id, fields in parse_smart(_read(doc_file))}
    parsed_queries = parse_smart(_read(query_file))
    if name == "cranfield":
        queries = {str(k): _text(fields) for k, (_, fields) in enumerate(parsed_queries, 1)}
    else:
        queries = {str(int(q)): _text(fields) for q, fields in parsed_queries}
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in enumerate(_read(rel_file).splitlines(), 1):
        cells = line.split()
        if not cells:
            continue
        try:
            qid, did, code = str(int(cells[0])), str(int(cells[1])), int(cells[2])
        except (IndexError, ValueError) as err:
            raise InputError(
                f"{fn}: {rel_file} line {line_no} must be 'query doc code ...' with integers; got {line!r}."
            ) from err
        if qid not in queries or did not in corpus:
            raise InputError(
                f"{fn}: {rel_file} line {line_no} judges query {qid} / document {did}, which "
                f"{'query' if qid not in queries else 'document'} file does not hold."
            )
        if name == "cranfield" and code not in CRANFIELD_GRADES:
            raise InputError(
                f"{fn}: {rel_file} line {line_no} has relevance code {code}; Cranfield codes are "
                f"{sorted(CRANFIELD_GRADES)}."
            )
        qrels.setdefault(qid, {})[did] = CRANFIELD_GRADES[code] if name == "cranfield" else 1
    return corpus, queries, qrels
