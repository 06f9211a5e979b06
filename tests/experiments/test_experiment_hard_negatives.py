"""experiments/hard_negatives.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiment_scripts import load_experiment, run_quick

BEGIN = "<!-- hard-negatives-table:begin -->"


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    out, text = run_quick("hard_negatives", tmp_path)
    for label in (
        "| (a) MNRL, in-batch |",
        "| (c) MNRL + 3 filtered negatives |",
        "| (e) MarginMSE",
        "nDCG@10",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count(BEGIN) == 1 and "| (d) GISTEmbed masking |" in text


def fake(values: dict[str, float]) -> dict[str, list[dict[str, float]]]:
    return {arm: [{"nDCG@10": v, "R@100": 50.0}] for arm, v in values.items()}


@pytest.mark.parametrize(
    ("filtered", "margin", "outcome"),
    [(40.0, 45.0, " reproduced"), (40.0, 30.0, "partly reproduced"), (20.0, 30.0, "did not reproduce")],
)
def test_the_verdict_follows_the_numbers(filtered, margin, outcome) -> None:
    module = load_experiment("hard_negatives")
    base = {"zero_shot": 30.0, "mnrl": 35.0, "unfiltered": 33.0, "gist": 36.0, "teacher": 50.0}
    results = {"A": fake({**base, "filtered": filtered, "margin_mse": margin})}
    summary = module.verdict(results)
    assert summary.endswith(f"{outcome} on this setup.")


def test_a_difference_within_seed_noise_does_not_count() -> None:
    module = load_experiment("hard_negatives")
    runs = {"zero_shot": [30.0], "mnrl": [35.0], "gist": [36.0], "teacher": [50.0], "margin_mse": [20.0]}
    results = {arm: [{"nDCG@10": v, "R@100": 0.0} for v in vs] for arm, vs in runs.items()}
    results["unfiltered"] = [{"nDCG@10": v, "R@100": 0.0} for v in (40.0, 42.0, 44.0)]
    results["filtered"] = [{"nDCG@10": v, "R@100": 0.0} for v in (41.0, 43.0, 45.0)]  # +1, std 2
    summary = module.verdict({"A": results})
    assert "(within seed noise)" in summary and summary.endswith("did not reproduce on this setup.")
    results["filtered"] = [{"nDCG@10": v, "R@100": 0.0} for v in (45.0, 47.0, 49.0)]  # +5, std 2
    assert "(better)" in module.verdict({"A": results})
    results["filtered"] = [{"nDCG@10": v, "R@100": 0.0} for v in (35.0, 37.0, 39.0)]  # -5, std 2
    assert "(worse)" in module.verdict({"A": results})


def test_the_query_split_is_disjoint_fixed_and_skips_unjudged_queries() -> None:
    module = load_experiment("hard_negatives")
    qrels = {f"q{i}": {"d": 1 if i % 5 else 0} for i in range(40)}
    train, dev = module.split_queries(qrels)
    assert not set(train) & set(dev)
    assert len(train) + len(dev) == 32 and len(dev) == round(0.3 * 32)
    assert module.split_queries(qrels) == (train, dev)
