"""``contrastkit eval CHECKPOINT --ir DIR``: a tiny trained checkpoint on BEIR and SMART folders."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_RUN
from contrastkit.cli import main

SHOWN = {"ir/nDCG@10", "ir/MRR@10", "ir/Recall@10", "ir/Recall@100", "ir/MAP@100", "ir/n_queries"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_ir") / "run"
    overrides = [*TINY_RUN, "train.steps=1"]
    assert main(["train", *[a for item in overrides for a in ("--set", item)], "--out", str(out)]) == 0
    return out


def _beir(folder):
    (folder / "qrels").mkdir(parents=True)
    docs = {"a": "a red circle.", "b": "a blue square.", "c": "a green star.", "d": "a red square."}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs.items())
    )
    queries = {"q1": "red circle", "q2": "blue square", "q3": "unjudged"}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items())
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\tb\t2\nq2\td\t1\n")
    return folder


def test_eval_ir_on_a_beir_folder(run_dir, tmp_path, capsys):
    target = tmp_path / "ir.json"
    assert main(["eval", str(run_dir), "--ir", str(_beir(tmp_path / "set")), "--out", str(target)]) == 0
    metrics = json.loads(target.read_text())
    assert set(metrics) == SHOWN and metrics["ir/n_queries"] == 2
    assert metrics["ir/Recall@10"] == 1.0  # 4 documents: every relevant one is in the top 10
    assert 0 < metrics["ir/nDCG@10"] <= 1 and 0 < metrics["ir/MRR@10"] <= 1
    assert "ir/nDCG@10" in capsys.readouterr().out


def test_eval_ir_on_a_smart_folder(run_dir, tmp_path):
    folder = tmp_path / "cisi"
    folder.mkdir()
    (folder / "CISI.ALL").write_text(
        ".I 1\n.T\nred circle\n.W\na red circle.\n.I 2\n.T\nblue\n.W\na blue square.\n"
    )
    (folder / "CISI.QRY").write_text(".I 1\n.W\nred circle\n.I 2\n.W\nblue square\n")
    (folder / "CISI.REL").write_text("1 1 0 0.0\n2 2 0 0.0\n")
    target = tmp_path / "smart.json"
    assert main(["eval", str(run_dir), "--ir", str(folder), "--out", str(target)]) == 0
    metrics = json.loads(target.read_text())
    assert metrics["ir/n_queries"] == 2 and metrics["ir/Recall@100"] == 1.0


def test_eval_needs_exactly_one_of_data_and_ir(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir)]) == 2
    assert main(["eval", str(run_dir), "--data", "shapes", "--ir", str(tmp_path)]) == 2
    assert "exactly one of --data" in capsys.readouterr().err


def test_eval_ir_on_a_folder_that_is_neither(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--ir", str(tmp_path)]) == 2
    assert "no SMART collection" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("docs", "qrels", "extra", "message"),
    [
        ({}, "q1\ta\t1\n", [], "an empty corpus"),
        ({"a": "red"}, "q1\ta\t0\n", [], "no query with a relevant document"),
        ({"a": "red"}, "q9\ta\t1\n", [], "no query with a relevant document"),  # qrels id unknown
        ({"a": "red"}, "q1\ta\t1\n", ["--max-records", "0"], "--max-records must be >= 1"),
        ({"a": "red"}, "q1\ta\t1\n", ["--max-records", "-1"], "--max-records must be >= 1"),
    ],
)
def test_eval_ir_bad_folders_and_values_print_one_line(
    run_dir, tmp_path, capsys, docs, qrels, extra, message
):
    folder = tmp_path / "set"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs.items())
    )
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "red"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    assert main(["eval", str(run_dir), "--ir", str(folder), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contrastkit eval: error:") and message in err and err.count("\n") == 1


def test_eval_ir_ranks_a_margin_mse_checkpoint_by_its_dot_product(tmp_path, monkeypatch):
    """MarginMSE trains raw dot products (METHODS 1.8): --ir must rank by them, not by cosine."""
    from contrastkit.eval import ir as ir_module

    rows = [
        {
            "query": f"q{i} red",
            "positive": f"d{i} red circle",
            "negatives": [f"blue {i}"],
            "scores": [2.0, 0.5],
        }
        for i in range(8)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        f"data.train={{mined: {data}}}",
        "data.eval=null",
        "data.tokenizer=byte",
        "data.max_length=16",
        "data.negatives=1",
        "model={towers: {text: {type: transformer, dim: 16, depth: 1, heads: 2}}, embed_dim: 8}",
        "loss.name=margin_mse",
        "train.batch_size=4",
        "train.steps=1",
        "train.progress=false",
    ]
    out = tmp_path / "run"
    assert main(["train", *[a for item in overrides for a in ("--set", item)], "--out", str(out)]) == 0
    seen = []
    original = ir_module.ir_metrics

    def spy(query_emb, corpus_emb, *args, **kwargs):
        seen.append((query_emb.norm(dim=1), kwargs.get("normalize", True)))
        return original(query_emb, corpus_emb, *args, **kwargs)

    monkeypatch.setattr(ir_module, "ir_metrics", spy)
    assert main(["eval", str(out), "--ir", str(_beir(tmp_path / "set"))]) == 0
    norms, normalize = seen[0]
    assert normalize is False and not torch.allclose(norms, torch.ones_like(norms))
