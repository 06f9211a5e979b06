"""experiments/sigrot.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("sigrot", tmp_path)
    for label in ("| CLIP |", "| SIGROT |", "| 0.1·CLIP + SIGROT |", "i2t R@1", "gap", "align"):
        assert label in out
    assert "Claim " in out and "reproduced" in out
    assert text.count("<!-- sigrot-table:begin -->") == 1 and "| CLIP |" in text


def test_metrics_on_a_perfect_embedding() -> None:
    import torch

    module = load_experiment("sigrot")
    x = torch.eye(4)
    y = torch.eye(4).repeat(2, 1)
    owner = torch.arange(4).repeat(2)
    metrics = module.evaluate(x, y, owner)
    assert metrics["i2t_R@1"] == 100.0 and metrics["t2i_R@1"] == 100.0
    assert metrics["gap"] == 0.0 and abs(metrics["align"] - 1.0) < 1e-6
