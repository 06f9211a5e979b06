"""load_beir on a written folder and on the real SciFact set, with ir_metrics at chance and oracle level."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from contrastkit import InputError
from contrastkit.data.beir import load_beir
from contrastkit.eval import ir_metrics


def _write(folder, *, gz: bool = False, splits=("test",)):
    folder.mkdir(parents=True, exist_ok=True)
    docs = [
        {"_id": "d1", "title": "Title one", "text": "Body one."},
        {"_id": "d2", "title": "", "text": "  Body two. "},
        {"_id": 3, "title": "Only a title", "text": ""},
    ]
    lines = "".join(json.dumps(d) + "\n" for d in docs) + "\n"
    if gz:
        with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        (folder / "corpus.jsonl").write_text(lines, encoding="utf-8")
    queries = [{"_id": "q1", "text": "first?", "metadata": {}}, {"_id": "q2", "text": "second?"}]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t3\t2\nq2\td2\t0\n", encoding="utf-8"
        )
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_reads_the_beir_layout(tmp_path, gz):
    corpus, queries, qrels = load_beir(_write(tmp_path / "set", gz=gz))
    assert corpus == {"d1": "Title one Body one.", "d2": "Body two.", "3": "Only a title"}
    assert queries == {"q1": "first?", "q2": "second?"}
    assert qrels == {"q1": {"d1": 1, "3": 2}, "q2": {"d2": 0}}


def test_missing_split_lists_the_available_ones(tmp_path):
    folder = _write(tmp_path / "set", splits=("train", "dev"))
    with pytest.raises(InputError, match=r"test\.tsv; the available splits are \['dev', 'train'\]"):
        load_beir(folder)
    assert load_beir(folder, split="dev")[2]["q1"] == {"d1": 1, "3": 2}


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("corpus.jsonl", "neither corpus.jsonl nor corpus.jsonl.gz"),
        ("queries.jsonl", "queries.jsonl is missing"),
    ],
)
def test_missing_files_are_named(tmp_path, remove, match):
    folder = _write(tmp_path / "set")
    (folder / remove).unlink()
    with pytest.raises(InputError, match=f"load_beir: .*{match}"):
        load_beir(folder)


def test_missing_folder_and_bad_lines(tmp_path):
    with pytest.raises(InputError, match="'folder' must be a BEIR data set folder"):
        load_beir(tmp_path / "nowhere")
    folder = _write(tmp_path / "set")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"test\.tsv line 2 must be 'query-id<TAB>corpus-id<TAB>score'"):
        load_beir(folder)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"queries\.jsonl line 1 is not valid JSON"):
        load_beir(folder)


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_a_file_that_is_not_utf8_is_named_with_the_fix(tmp_path, name):
    folder = _write(tmp_path / "set")
    path = folder / name
    path.write_bytes(path.read_bytes() + "caf\xe9\n".encode("latin-1"))  # one latin-1 line
    with pytest.raises(InputError, match="is not UTF-8 text .* Re-encode it"):
        load_beir(folder)


@pytest.fixture
def scifact(shared_data):
    folder = shared_data / "scifact"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    return load_beir(folder, split="train")


def test_scifact_counts(scifact):
    corpus, queries, qrels = scifact
    assert len(corpus) == 5183 and len(queries) == 1109
    assert len(qrels) == 809 and sum(len(v) for v in qrels.values()) == 919
    assert all(text and text == text.strip() for text in corpus.values())


def _embed(scifact, oracle: bool):
    corpus, queries, qrels = scifact
    corpus_ids, query_ids = list(corpus), list(queries)
    g = torch.Generator().manual_seed(0)
    corpus_emb = torch.randn(len(corpus_ids), 64, generator=g)
    query_emb = torch.randn(len(query_ids), 64, generator=g)
    if oracle:  # each judged query is embedded as one of its relevant documents
        row = {d: j for j, d in enumerate(corpus_ids)}
        for i, qid in enumerate(query_ids):
            relevant = [d for d, r in qrels.get(qid, {}).items() if r > 0]
            if relevant:
                query_emb[i] = corpus_emb[row[relevant[0]]]
    return ir_metrics(query_emb, corpus_emb, qrels, query_ids, corpus_ids, chunk_size=300)


def test_scifact_random_embeddings_score_at_chance(scifact):
    got = _embed(scifact, oracle=False)
    assert got["n_queries"] == 809 and got["n_skipped"] == 300
    assert got["MRR@10"] < 0.02 and got["nDCG@10"] < 0.02
    assert got["Recall@100"] < 0.06  # chance: about 100 / 5183


def test_scifact_oracle_embeddings_score_high(scifact):
    got = _embed(scifact, oracle=True)
    assert got["MRR@10"] == 1.0
    assert got["Recall@1"] > 0.8 and got["nDCG@10"] > 0.9
