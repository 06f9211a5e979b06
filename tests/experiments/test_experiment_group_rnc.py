"""experiments/group_rnc.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("group_rnc", tmp_path)
    for label in ("| same-part InfoNCE |", "| group RnC |", "geodesic error", "Dist ≤ 0.25"):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- group-rnc-table:begin -->") == 1 and "| group RnC |" in text


def test_group_distances_come_from_the_part_names() -> None:
    module = load_experiment("group_rnc")
    names = module.GROUP_NAMES
    dist = module.GROUP_DIST
    assert dist.shape == (30, 30) and torch.equal(dist, dist.T) and bool((dist.diagonal() == 0).all())

    def d(a: str, b: str) -> float:
        return float(dist[names.index(a), names.index(b)])

    assert d("left upper arm distal", "left upper arm middle") == 0.25  # 3 of 4 words shared
    assert d("left upper arm distal", "right upper arm distal") == 0.25
    assert d("left upper arm distal", "right lower leg proximal") == 1.0
    assert abs(d("torso middle", "torso distal") - 0.5) < 1e-12
    assert abs(d("torso middle", "head distal") - 1.0) < 1e-12


def test_skeleton_geodesics_on_a_known_shape() -> None:
    module = load_experiment("group_rnc")
    shape = module.make_shape(torch.Generator().manual_seed(0), per_group=2)
    length = shape.lengths
    bone = {b[0]: i for i, b in enumerate(module.BONES)}

    def geo(a: str, ta: float, b: str, tb: float) -> float:
        t = torch.tensor
        return float(module.geodesic(shape, t([bone[a]]), t([ta]), t([bone[b]]), t([tb]))[0])

    torso, upper, lower = (
        length[bone["torso"]],
        length[bone["left upper arm"]],
        length[bone["left lower arm"]],
    )
    assert math.isclose(geo("torso", 0.25, "torso", 0.75), 0.5 * torso)
    # left hand to pelvis: lower arm, upper arm, torso
    assert math.isclose(geo("left lower arm", 1.0, "torso", 0.0), lower + upper + torso)
    # left hand to right hand through the chest
    right = length[bone["right upper arm"]] + length[bone["right lower arm"]]
    assert math.isclose(geo("left lower arm", 1.0, "right lower arm", 1.0), lower + upper + right)
    assert math.isclose(geo("left upper arm", 0.5, "head", 0.5), 0.5 * upper + 0.5 * length[bone["head"]])
    assert shape.points.shape == (60, 3) and shape.group.tolist() == [g for g in range(30) for _ in range(2)]


def test_metrics_on_a_perfect_and_a_swapped_matching() -> None:
    module = load_experiment("group_rnc")
    g = torch.Generator().manual_seed(1)
    x = module.make_shape(g, per_group=3)
    perfect = module.correspondence_metrics(x, x, torch.arange(90))
    assert perfect["error"].abs().max() < 1e-12 and not bool(perfect["wrong"].any())
    # every point of group 0 (torso proximal) matched into group 1 (torso middle): Dist 0.5
    matched = torch.arange(90)
    matched[:3] = torch.tensor([3, 4, 5])
    swapped = module.correspondence_metrics(x, x, matched)
    assert swapped["wrong"].tolist() == [True] * 3 + [False] * 87
    assert torch.allclose(swapped["dist"][:3], torch.full((3,), 0.5, dtype=torch.float64))
    assert bool((swapped["error"][:3] > 0).all())
