"""The SMART reader: inline Cranfield / CISI fixtures, grade mapping, errors, and the real counts."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data.smart import load_smart, parse_smart
from contrastkit.errors import InputError
from contrastkit.eval.ir import ir_metrics

CRAN_DOCS = """.I 1
.T
flow past a plate .
.A
someone
.B
j. ae. 1958
.W
flow past a plate .
  the boundary layer
grows .
.I 2
.T
wing flutter .
.A
.B
.W
wing flutter at mach 3 .
"""
CRAN_QUERIES = """.I 001
.W
what is the boundary layer
of a plate .
.I 004
.W
flutter of wings .
"""
CRAN_QRELS = "1 1 -1\n1 2 4\n2 2 1\n"


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("latin-1"))
    return folder


def test_parse_smart_joins_lines_and_keeps_fields():
    records = parse_smart(CRAN_DOCS)
    assert [r[0] for r in records] == ["1", "2"]
    assert records[0][1]["W"] == "flow past a plate . the boundary layer grows ."
    assert records[0][1]["A"] == "someone" and records[1][1]["A"] == ""


def test_cranfield_numbers_queries_by_order_and_maps_grades(tmp_path):
    folder = _write(
        tmp_path / "cran", {"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": CRAN_QRELS}
    )
    corpus, queries, qrels = load_smart(folder)
    assert corpus["1"] == "flow past a plate . flow past a plate . the boundary layer grows ."
    assert queries == {"1": "what is the boundary layer of a plate .", "2": "flutter of wings ."}
    # -1 (source document) and 1 (complete answer) -> 4; 4 (minimum interest) -> 1
    assert qrels == {"1": {"1": 4, "2": 1}, "2": {"2": 4}}


def test_cisi_keeps_query_ids_and_binary_grades(tmp_path):
    docs = ".I 1\n.T\nTitle one\n.A\nX\n.W\nText one\n.X\n1 5 1\n.I 2\n.T\nTitle two\n.W\nText two é\n"
    queries = ".I 1\n.W\nfirst question\n.I 2\n.T\nA title\n.A\nB\n.W\nsecond question\n"
    rel = "     1     2\t0\t0.000000\n     2     1\t0\t0.000000\n     2     2\t0\t0.000000\n"
    folder = _write(tmp_path / "cisi", {"CISI.ALL": docs, "CISI.QRY": queries, "CISI.REL": rel})
    corpus, q, qrels = load_smart(folder)
    assert corpus == {"1": "Title one Text one", "2": "Title two Text two é"}
    assert q == {"1": "first question", "2": "A title second question"}
    assert qrels == {"1": {"2": 1}, "2": {"1": 1, "2": 1}}


def test_the_structure_feeds_ir_metrics(tmp_path):
    folder = _write(
        tmp_path / "cran", {"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": CRAN_QRELS}
    )
    corpus, queries, qrels = load_smart(folder)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    metrics = ir_metrics(q, q.clone(), qrels, list(queries), list(corpus), ks=(1,))
    assert metrics["n_queries"] == 2 and metrics["Recall@1"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"other.txt": ""}, "no SMART collection"),
        ({"cran.all.1400": CRAN_DOCS, "cranqrel": CRAN_QRELS}, "cran.qry is missing"),
        ({"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": "1 9 1\n"}, "document 9"),
        ({"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": "3 1 1\n"}, "query 3"),
        ({"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": "1 1 7\n"}, "relevance code 7"),
        ({"cran.all.1400": CRAN_DOCS, "cran.qry": CRAN_QUERIES, "cranqrel": "1 x 1\n"}, "line 1"),
        ({"cran.all.1400": ".T\nno record\n", "cran.qry": CRAN_QUERIES, "cranqrel": ""}, "before any .I"),
    ],
)
def test_errors_name_the_problem(tmp_path, files, match):
    with pytest.raises(InputError, match=match):
        load_smart(_write(tmp_path / "c", files))


def test_not_a_folder(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        load_smart(tmp_path / "missing")


def test_real_cranfield_and_cisi_counts(shared_data):
    corpus, queries, qrels = load_smart(shared_data / "cranfield")
    assert (len(corpus), len(queries), len(qrels)) == (1400, 225, 225)
    assert sum(len(v) for v in qrels.values()) == 1837
    assert qrels["1"]["486"] == 4 and "similarity laws" in corpus["486"]
    corpus, queries, qrels = load_smart(shared_data / "cisi")
    assert (len(corpus), len(queries), len(qrels)) == (1460, 112, 76)
    assert sum(len(v) for v in qrels.values()) == 3114
