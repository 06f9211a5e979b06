"""Mined rows as JSON lines: both layouts, the round trip and reading errors."""

from __future__ import annotations

import json

import pytest

from contrastkit.errors import InputError
from contrastkit.mining.hard_negatives import MinedNegatives
from contrastkit.mining.jsonl import read_mined_jsonl


def _mined() -> MinedNegatives:
    mined = MinedNegatives(["q0", "q1"], ["d0", "d1", "d2", "d3 é"], num_negatives=2)
    mined.query_index = [0, 0, 1]
    mined.positive_index = [0, 1, 2]
    mined.negative_index = [[2, 3], [2, 3], [3]]
    mined.positive_score = [0.9, 0.8, 0.7]
    mined.negative_scores = [[0.5, 0.25], [0.5, 0.25], [0.125]]
    return mined


def test_list_layout_round_trip(tmp_path):
    mined = _mined()
    path = tmp_path / "out" / "neg.jsonl"
    assert mined.to_jsonl(path) == 3
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {
        "query": "q0",
        "positive": "d0",
        "negatives": ["d2", "d3 é"],
        "scores": [0.9, 0.5, 0.25],
    }
    assert read_mined_jsonl(path) == lines == mined.records()


def test_n_tuple_layout_has_the_sentence_transformers_columns_and_drops_short_rows(tmp_path):
    records = _mined().records("n-tuple")
    # sentence-transformers mine_hard_negatives(output_format="n-tuple", output_scores=True):
    # anchor, positive, negative_1 .. negative_n, scores
    assert [list(r) for r in records] == [["query", "positive", "negative_1", "negative_2", "scores"]] * 2
    assert records[1] == {
        "query": "q0",
        "positive": "d1",
        "negative_1": "d2",
        "negative_2": "d3 é",
        "scores": [0.8, 0.5, 0.25],
    }
    path = tmp_path / "tuple.jsonl"
    _mined().to_jsonl(path, layout="n-tuple")
    assert read_mined_jsonl(path) == _mined().records()[:2]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"query": "q", "negatives": ["n"]}', "'query' and 'positive'"),
        ('{"query": "q", "positive": "p", "negatives": []}', "at least one negative"),
        ('{"query": "q", "positive": "p", "negatives": ["n"], "scores": [1.0]}', "must list 2 numbers"),
    ],
)
def test_bad_lines_raise_with_the_line_number(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "positive": "p", "negatives": ["n"]}\n' + line + "\n")
    with pytest.raises(InputError, match=match) as err:
        read_mined_jsonl(path)
    assert "line 2" in str(err.value)


def test_missing_or_empty_file_and_bad_layout(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_mined_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        read_mined_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(InputError, match="'layout'"):
        _mined().records("triplet")


def test_summary_counts():
    mined = _mined()
    mined.dropped["fn_rel"] = 4
    text = mined.summary()
    assert "3 rows, 5 negatives (1 rows with fewer than 2)" in text and "fn_rel 4" in text


def test_other_negative_fields_and_non_utf8_files_raise_clear_errors(tmp_path):
    # a field that merely starts with "negative_" is not a numbered negative (it used to crash int())
    path = tmp_path / "extra.jsonl"
    path.write_text('{"query": "q", "positive": "p", "negative_1": "n", "negative_note": "x"}\n')
    assert read_mined_jsonl(path) == [{"query": "q", "positive": "p", "negatives": ["n"]}]
    path.write_text('{"query": "q", "positive": "p", "negative_note": "x"}\n')
    with pytest.raises(InputError, match="line 1 needs at least one negative"):
        read_mined_jsonl(path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"query": "q", "positive": "p", "negatives": ["n"]}\n{"query": "caf\xe9"}\n')
    with pytest.raises(InputError, match="is not UTF-8 text"):
        read_mined_jsonl(latin)
