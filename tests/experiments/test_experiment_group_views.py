"""experiments/group_views.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("group_views", tmp_path)
    for label in ("| 0 |", "| 0.025 |", "| 0.1 |", "HR@10, 6-8 members", "NDCG@10, 2-5", "dominance ratio"):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- group-views-table:begin -->") == 1 and "| 0.025 |" in text


def test_hit_and_ndcg_and_drop_member_on_known_cases() -> None:
    module = load_experiment("group_views")
    hit, ndcg = module.hit_and_ndcg(torch.tensor([0, 1, 9, 10, 50]))
    assert hit.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(
        ndcg, torch.tensor([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0], dtype=torch.float64)
    )
    members = torch.tensor([[5, 6, 7, -1], [1, 2, 3, 4]])
    dropped = module.drop_member(members, torch.tensor([0, 2]))
    assert dropped.tolist() == [[6, 7, -1, -1], [1, 2, 4, -1]]


def test_world_has_one_heavy_member_per_group_and_held_out_items() -> None:
    module = load_experiment("group_views")
    world = module.make_world(60, 100, 40, seed=0)
    sizes = (world.members >= 0).sum(1)
    assert bool(((sizes >= 2) & (sizes <= 8)).all())
    heavy_members = world.heavy[world.members.clamp(min=0)] & (world.members >= 0)
    assert heavy_members.sum(1).tolist() == [1] * 40 and bool(heavy_members[:, 0].all())
    counts = torch.bincount(world.user_items[:, 0], minlength=60)
    assert set(counts[world.heavy].tolist()) == {80} and set(counts[~world.heavy].tolist()) == {8}
    train = world.group_train.view(40, module.GROUP_TRAIN, 2)[:, :, 1]
    assert not bool((train == world.group_test[:, None]).any())  # the test item is held out
    assert torch.equal(world.group_seen.sum(1), torch.full((40,), module.GROUP_TRAIN + 1))
