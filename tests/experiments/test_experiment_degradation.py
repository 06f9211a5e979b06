"""experiments/degradation.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("degradation", tmp_path)
    for label in (
        "| frozen features, cosine |",
        "| last-layer head, cosine |",
        "| multi-layer heads, cosine |",
        "| multi-layer heads, Mahalanobis |",
        "AUROC s5",
        "Spearman",
        "class η²",
        "| blur | contrast | noise | jpeg |",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- degradation-table:begin -->") == 1 and "| multi-layer heads, cosine |" in text


def test_training_batch_has_positives_and_hard_negatives() -> None:
    module = load_experiment("degradation")
    images = torch.rand(100, 3, 8, 8)
    x, comp, image = module.training_batch(images, torch.Generator().manual_seed(0))
    assert x.shape == (128, 3, 8, 8) and comp.shape == image.shape == (128,)
    for c in comp.unique():
        rows = comp == c
        assert image[rows].unique().numel() == int(rows.sum()) >= 2  # different images only
    for i in image.unique():
        assert comp[image == i].unique().numel() == 2  # the same image under two compositions
    assert bool((comp == 0).any())  # the clean composition is in every batch


def test_metrics_on_known_scores() -> None:
    module = load_experiment("degradation")
    n = 4
    severities = module.evaluation_conditions(n)
    assert severities.shape == (21 * n, 4) and bool((severities[:n] == 0).all())
    severity = severities.max(dim=1).values.double()
    labels = torch.tensor([0, 0, 1, 1])
    perfect = module.metrics(severity, severities, labels, n)
    assert all(perfect[f"auroc_{s}"] == 1.0 for s in range(1, 6)) and perfect["spearman"] > 0.99
    assert module.class_eta2(torch.tensor([1.0, 1.0, 3.0, 3.0]), labels) == 1.0  # all between-class
    # between-class SS 0 when both classes share one mean
    assert module.class_eta2(torch.tensor([0.0, 2.0, 2.0, 0.0]), labels) == 0.0
    assert module.auroc(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])) == 0.5


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("degradation")
    frozen = {"auroc": 0.60, "auroc_1": 0.52, "auroc_5": 0.66, "spearman": 0.2, "eta2": 0.25}

    def results(**multi: float) -> dict:
        runs = {
            arm: [{k: v + d for k, v in frozen.items()} for d in (-0.002, 0.0, 0.002)] for arm in module.ARMS
        }
        row = (
            frozen | {"auroc": 0.80, "auroc_1": 0.60, "auroc_5": 0.90, "spearman": 0.6, "eta2": 0.05} | multi
        )
        runs["multi"] = [{k: v + d for k, v in row.items()} for d in (-0.002, 0.0, 0.002)]
        return runs

    assert module.verdict(results()).endswith(") reproduced.")
    assert module.verdict(results(spearman=0.45)).endswith(") partly reproduced.")  # not graded enough
    assert module.verdict(results(eta2=0.25)).endswith(") partly reproduced.")  # not content-invariant
    flat = {"auroc": 0.60, "auroc_1": 0.60, "auroc_5": 0.60, "eta2": 0.25}
    assert module.verdict(results(**flat)).endswith(") did not reproduce.")
