"""``contrastkit eval CHECKPOINT --ir DIR``: a tiny trained checkpoint on BEIR and SMART folders."""

from __future__ import annotations

import json

import pytest

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
