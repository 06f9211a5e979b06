"""experiments/pseudo_seeds.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("pseudo_seeds", tmp_path)
    for label in (
        "| global top-K, as selected |",
        "| cluster-proportional, as selected |",
        "| global top-K, 10% wrong seeds |",
        "| cluster-proportional, 10% wrong seeds |",
        "(control: no richness bias) |",
        "Hits@1 sparse",
        "‖repel‖ per sparse anchor",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- pseudo-seeds-table:begin -->") == 1
    assert (
        text.count("<!-- pseudo-seeds-table:end -->") == 1 and "| cluster-proportional, as selected |" in text
    )


def test_wrong_seeds_are_one_to_one_and_all_wrong() -> None:
    module = load_experiment("pseudo_seeds")
    right = torch.arange(50)
    wrong = module.inject_wrong(right, 0.1, torch.Generator().manual_seed(0))
    changed = wrong != right
    assert int(changed.sum()) == 5
    assert sorted(wrong.tolist()) == list(range(50))  # a permutation: still one-to-one
    assert torch.equal(module.inject_wrong(right, 0.0, torch.Generator()), right)


def test_views_are_70_30_and_noisy_per_view() -> None:
    module = load_experiment("pseudo_seeds")
    counts = module.class_counts(2000)
    assert counts[module.DENSE_CLASS] == 1400
    assert [counts[c] for c in module.SPARSE_CLASSES] == [150] * 4
    pool = module.synthetic_entities(per_class=300)
    views = module.make_views(pool, 400, 1.5, torch.Generator().manual_seed(0))
    assert int(views.dense.sum()) == 280
    assert not torch.equal(views.side[0], views.side[1]) and not torch.equal(views.inputs[0], views.inputs[1])
    assert torch.allclose(views.fused[0].norm(dim=1), torch.ones(400))


def test_hits_at_1_and_the_verdict_follow_the_numbers() -> None:
    module = load_experiment("pseudo_seeds")
    z = torch.eye(4)
    right = torch.stack([z[0], z[2], z[1], z[3]])  # entities 1 and 2 swapped
    assert module.hits_at_1(z, right).tolist() == [1.0, 0.0, 0.0, 1.0]

    def runs(hits: list[float]) -> list[dict[str, float]]:
        return [{"hits_sparse": h} for h in hits]

    rich, flat = module.DENSE_RICHNESS, 1.0
    results = {
        ("global", 0.0, rich): runs([0.50, 0.52, 0.51]),
        ("proportional", 0.0, rich): runs([0.80, 0.81, 0.79]),
        ("global", module.WRONG_SHARE, rich): runs([0.40, 0.45, 0.50]),
        ("proportional", module.WRONG_SHARE, rich): runs([0.41, 0.46, 0.49]),
        ("global", 0.0, flat): runs([0.9, 0.9, 0.9]),
        ("proportional", 0.0, flat): runs([0.9, 0.9, 0.9]),
    }
    assert "partly reproduced" in module.verdict(results)
    results[("proportional", module.WRONG_SHARE, rich)] = runs([0.70, 0.71, 0.72])
    assert "Claim (cluster-proportional seeds align the sparse clusters better) reproduced" in module.verdict(
        results
    )
