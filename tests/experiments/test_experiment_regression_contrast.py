"""experiments/regression_contrast.py --quick runs end to end in seconds and rewrites only its block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("regression_contrast", tmp_path)
    for label in (
        "| MSE | raw |",
        "| InfoNCE | unit | exp(t) |",
        "| 0.8·MSE + 0.2·CLIP | raw | t (no exp) |",
    ):
        assert label in out
    assert "200-way top-1 %" in out and "cos error" in out
    verdicts = [line for line in out.splitlines() if line.startswith("Claim ")]
    assert len(verdicts) == 1 and "reproduce" in verdicts[0]
    assert text.count("<!-- regression-contrast-table:begin -->") == 1
    assert text.count("<!-- regression-contrast-table:end -->") == 1 and "| InfoNCE |" in text


def test_metrics_of_a_perfect_decoder() -> None:
    module = load_experiment("regression_contrast")
    v = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    metrics = module.evaluate(v.clone(), v, k=10, n_draws=2)
    assert metrics["top1"] == 100.0 and metrics["top5"] == 100.0
    assert abs(metrics["cos_err"]) < 1e-6 and metrics["mse"] == 0.0


def test_verdict_is_decided_by_the_numbers() -> None:
    module = load_experiment("regression_contrast")

    def fake(mix_top1: float, mix_cos: float) -> dict:
        out = {}
        for name, normalize, exp_scale in module.runs(0.8):
            top1, cos = {"MSE": (10.0, 0.2), "InfoNCE": (30.0, 0.6)}.get(name, (mix_top1, mix_cos))
            out[(name, normalize, exp_scale)] = [{"top1": top1, "top5": top1, "cos_err": cos, "mse": 0.0}]
        return out

    assert "faithful mode) reproduced." in module.verdict(fake(20.0, 0.3))
    assert "partly reproduced" in module.verdict(fake(5.0, 0.3))
    assert "partly reproduced" in module.verdict(fake(20.0, 0.7))
    assert "did not reproduce" in module.verdict(fake(5.0, 0.7))
