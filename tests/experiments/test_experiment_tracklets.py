"""experiments/tracklets.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("tracklets", tmp_path)
    for label in (
        "| tracklet labels | box |",
        "| clustered labels (threshold 0.2) | mask |",
        "| identity labels (oracle) | mask |",
        "kNN top-1, held-out days",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- tracklets-table:begin -->") == 1
    assert "| clustered labels (threshold 0.4) | box |" in text


def test_frames_are_crowded_and_tracklets_fragmented() -> None:
    module = load_experiment("tracklets")
    g = torch.Generator().manual_seed(0)
    coats = module.make_coats(8, g)
    crops = module.render_days(coats, days=2, segments=3, frames=2, g=g)
    assert crops.box.shape == (8 * 2 * 3 * 2, 3, 16, 16)
    # every tracklet is one animal; each animal has one tracklet per day and segment
    for t in crops.tracklet.unique():
        assert crops.identity[crops.tracklet == t].unique().numel() == 1
    per_animal = [crops.tracklet[crops.identity == i].unique().numel() for i in range(8)]
    assert per_animal == [6] * 8
    # 4 animals per frame; a mask crop is the box crop with the neighbours' pixels zeroed
    assert torch.bincount(crops.frame).eq(4).all()
    kept = crops.mask != 0
    assert torch.equal(crops.mask[kept], crops.box[kept])
    assert 0.01 < (~kept).float().mean() < 0.5  # neighbours do overlap, but not everywhere


def test_pair_scores_by_hand() -> None:
    module = load_experiment("tracklets")
    identity = torch.tensor([0, 0, 1, 1])
    # labels {0, 1, 2} {3}: one of the three predicted pairs is right; one of two true pairs found
    precision, recall = module.pair_scores(torch.tensor([5, 5, 5, 6]), identity)
    assert abs(precision - 1 / 3) < 1e-12 and abs(recall - 1 / 2) < 1e-12


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("tracklets")

    def results(clustered_mask: float, clustered_box: float) -> dict:
        runs = {
            key: [{"top1": 0.70 + d} for d in (-0.01, 0.0, 0.01)]
            for key in [(arm, crop) for arm in module.LABELINGS for crop in module.CROPS]
        }
        runs[("clustered", "mask")] = [{"top1": clustered_mask + d} for d in (-0.01, 0.0, 0.01)]
        runs[("clustered", "box")] = [{"top1": clustered_box + d} for d in (-0.01, 0.0, 0.01)]
        return runs

    assert module.verdict(results(0.90, 0.70)).endswith(") reproduced.")
    assert module.verdict(results(0.90, 0.89)).endswith(") partly reproduced.")  # masks: no clear gain
    assert module.verdict(results(0.70, 0.80)).endswith(") did not reproduce.")
