"""The contrastkit command: train, eval, embed, report, info, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_IMAGE_ONLY_RUN, TINY_RUN
from contrastkit.cli import main


def _set(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *_set(TINY_RUN), "--out", str(out)]) == 0
    return out


def test_train_prints_the_metrics_and_the_report(run_dir, capsys):
    out = run_dir.parent / "again"
    assert main(["train", *_set([*TINY_RUN, "train.steps=1"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "retrieval/i2t_R@1" in printed and "zeroshot/top1" in printed and "report.html" in printed


def test_eval_scores_a_checkpoint_on_a_named_set(run_dir, tmp_path, capsys):
    target = tmp_path / "m.json"
    assert main(["eval", str(run_dir), "--data", "shapes", "--max-records", "16", "--out", str(target)]) == 0
    metrics = json.loads(target.read_text())
    assert 0 <= metrics["retrieval/t2i_R@1"] <= 1
    assert "retrieval/t2i_R@1" in capsys.readouterr().out


def test_embed_writes_vectors_and_ids(run_dir, tmp_path):
    target = tmp_path / "emb"
    assert (
        main(
            [
                "embed",
                str(run_dir),
                "--data",
                str(_tiny_manifest(tmp_path)),
                "--modality",
                "text",
                "--out",
                str(target),
            ]
        )
        == 0
    )
    vectors = np.load(tmp_path / "emb.npy")
    assert vectors.shape == (3, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert len((tmp_path / "emb.ids.txt").read_text().splitlines()) == 3


def _tiny_manifest(folder):
    path = folder / "texts.jsonl"
    path.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ("a red circle.", "a blue square.", "a star."))
    )
    return path


def test_report_and_info(run_dir, capsys):
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "torch" in printed and "optional extras" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--set", "optim.lr=-1"], "optim.lr: must be a positive finite number"),
        (["train", "missing.yaml"], "missing.yaml does not exist"),
        (["train", "--resume"], "--resume needs --out"),
        (["eval", "/nonexistent", "--data", "shapes"], "no checkpoint at /nonexistent"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_embed_rejects_a_modality_the_model_lacks(run_dir, tmp_path, capsys):
    assert (
        main(
            ["embed", str(run_dir), "--data", "shapes", "--modality", "series", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "the model has ['image', 'text']" in capsys.readouterr().err


def test_eval_rebuilds_a_bpe_tokenizer_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "bpe"
    overrides = [*TINY_RUN, "data.tokenizer=bpe", "data.vocab_size=300", "train.steps=3"]
    assert main(["train", *_set(overrides), "--out", str(out)]) == 0
    assert (out / "checkpoints" / "step-000003" / "tokenizer.json").is_file()
    (out / "tokenizer.json").unlink()  # the checkpoint alone must suffice
    assert (
        main(["eval", str(out / "checkpoints" / "step-000003"), "--data", "shapes", "--max-records", "8"])
        == 0
    )
    assert "retrieval/i2t_R@1" in capsys.readouterr().out
    (out / "checkpoints" / "step-000003" / "tokenizer.json").unlink()
    assert main(["eval", str(out), "--data", "shapes"]) == 2
    assert "holds no tokenizer.json; the checkpoint is incomplete" in capsys.readouterr().err


def test_resume_without_a_config_uses_the_runs_own(tmp_path, capsys):
    out = tmp_path / "r"
    overrides = [*TINY_RUN, "train.steps=3", "optim.lr=0.01"]
    assert main(["train", *_set(overrides), "--out", str(out)]) == 0
    assert main(["train", "--resume", "--out", str(out), "--set", "train.steps=4"]) == 0
    assert "train/steps                4" in capsys.readouterr().out


def test_eval_refuses_a_model_it_cannot_score(tmp_path, capsys):
    out = tmp_path / "views"
    assert main(["train", *_set(TINY_IMAGE_ONLY_RUN), "--out", str(out)]) == 0
    manifest = _tiny_manifest(tmp_path)
    assert main(["eval", str(out), "--data", str(manifest)]) == 2
    assert "has no labels" in capsys.readouterr().err
