"""experiments/group_views.py --quick runs end to end in seconds and rewrites only its marked block;
its world, encoder, metrics and verdict logic on known cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiment_scripts import load_experiment, run_quick


@pytest.fixture(scope="module")
def module():
    return load_experiment("group_views")


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("group_views", tmp_path)
    for label in ("| 0 |", "| 0.025 |", "| 0.1 |", "HR@10, 6-8 members", "NDCG@10, 2-5", "dominance ratio"):
        assert label in out
    assert "Claim " in out and ("reproduce" in out or "could not be tested" in out)
    assert text.count("<!-- group-views-table:begin -->") == 1 and "| 0.025 |" in text


def test_hit_and_ndcg_and_drop_member_on_known_cases(module) -> None:
    hit, ndcg = module.hit_and_ndcg(torch.tensor([0, 1, 9, 10, 50]))
    assert hit.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(
        ndcg, torch.tensor([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0], dtype=torch.float64)
    )
    members = torch.tensor([[5, 6, 7, -1], [1, 2, 3, 4]])
    dropped = module.drop_member(members, torch.tensor([0, 2]))
    assert dropped.tolist() == [[6, 7, -1, -1], [1, 2, 4, -1]]


def test_world_spreads_light_users_over_groups_with_one_heavy_member_each(module) -> None:
    n_light, n_heavy, n_groups = 200, 10, 40
    world = module.make_world(n_light, n_heavy, 100, n_groups, seed=0)
    sizes = (world.members >= 0).sum(1)
    assert bool(((sizes >= 2) & (sizes <= 8)).all())
    assert world.heavy.tolist() == [True] * n_heavy + [False] * n_light
    heavy_members = world.heavy[world.members.clamp(min=0)] & (world.members >= 0)
    assert heavy_members.sum(1).tolist() == [1] * n_groups and bool(heavy_members[:, 0].all())
    for row in world.members.tolist():  # no user twice in a group
        present = [u for u in row if u >= 0]
        assert len(set(present)) == len(present)
    uses = torch.bincount(world.members[world.members >= 0], minlength=n_light + n_heavy)
    for part in (uses[:n_heavy], uses[n_heavy:]):  # the least-used draw spreads users evenly
        assert int(part.max() - part.min()) <= 1
    counts = torch.bincount(world.user_items[:, 0], minlength=n_light + n_heavy)
    light = module.LIGHT_INTERACTIONS
    assert set(counts[world.heavy].tolist()) == {light * module.HEAVY_FACTOR}
    assert set(counts[~world.heavy].tolist()) == {light}
    train = world.group_train.view(n_groups, module.GROUP_TRAIN, 2)[:, :, 1]
    assert not bool((train == world.group_test[:, None]).any())  # the test item is held out
    assert torch.equal(world.group_seen.sum(1), torch.full((n_groups,), module.GROUP_TRAIN + 1))


def test_histories_list_each_users_items_and_the_score_ignores_padding(module) -> None:
    world = module.make_world(30, 3, 50, 10, seed=1)
    history = module.user_histories(world)
    assert history.shape == (34, module.LIGHT_INTERACTIONS * module.HEAVY_FACTOR)
    assert bool((history[0] == world.n_items).all())  # the padding member has no items
    for user in (0, 2, 5, 32):
        listed = sorted(i for i in history[user + 1].tolist() if i != world.n_items)
        assert listed == sorted(world.user_items[world.user_items[:, 0] == user, 1].tolist())
    torch.manual_seed(0)
    model = module.GroupRecommender(history, world.n_items).eval()
    members, item = torch.tensor([[0, 4, 7], [1, 9, -1]]), torch.tensor([3, 8])
    padded = torch.cat([members, torch.full((2, 2), -1)], dim=1)
    torch.testing.assert_close(model.score(padded, item), model.score(members, item))


def _results(ratios: dict[float, list[float]], hr_large: dict[float, list[float]]):
    return {
        beta: [{"ratio": r, "hr_large": h} for r, h in zip(ratios[beta], hr_large[beta], strict=True)]
        for beta in ratios
    }


FLAT_HR = {0.0: [0.50, 0.51, 0.49], 0.025: [0.50, 0.51, 0.49], 0.1: [0.50, 0.51, 0.49]}
BETTER_HR = {0.0: [0.50, 0.51, 0.49], 0.025: [0.60, 0.61, 0.59], 0.1: [0.60, 0.61, 0.59]}
DOMINATED = [1.50, 1.52, 1.48]


@pytest.mark.parametrize(
    ("ratios", "hr_large", "expected"),
    [
        ({0.0: [0.80, 0.85, 0.82], 0.025: [0.5] * 3, 0.1: [0.5] * 3}, BETTER_HR, "could not be tested"),
        ({0.0: [1.03, 1.04, 1.02], 0.025: [0.5] * 3, 0.1: [0.5] * 3}, BETTER_HR, "could not be tested"),
        ({0.0: [0.5, 1.0, 2.0], 0.025: [0.5] * 3, 0.1: [0.5] * 3}, BETTER_HR, "could not be tested"),
        ({0.0: DOMINATED, 0.025: [1.10, 1.12, 1.08], 0.1: DOMINATED}, BETTER_HR, "reproduced"),
        ({0.0: DOMINATED, 0.025: [1.10, 1.12, 1.08], 0.1: DOMINATED}, FLAT_HR, "partly reproduced"),
        ({0.0: DOMINATED, 0.025: DOMINATED, 0.1: DOMINATED}, BETTER_HR, "partly reproduced"),
        ({0.0: DOMINATED, 0.025: [1.49, 1.53, 1.47], 0.1: [1.0] * 3}, FLAT_HR, "did not reproduce"),
    ],
)
def test_verdict_separates_premise_absent_reproduced_and_not(module, ratios, hr_large, expected) -> None:
    line = module.verdict(_results(ratios, hr_large))
    outcome = line.rsplit(")", 1)[-1] if expected != "could not be tested" else line
    assert expected in outcome
    for other in {"could not be tested", "partly reproduced", "did not reproduce"} - {expected}:
        assert other not in line


def test_premise_needs_a_clear_excess_over_one(module) -> None:
    assert module.premise_holds([1.2]) and not module.premise_holds([1.04])
    assert module.premise_holds([1.3, 1.35, 1.25]) and not module.premise_holds([0.9, 1.6, 1.2])
