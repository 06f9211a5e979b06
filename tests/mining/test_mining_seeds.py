"""PSQE pseudo-seeds (METHODS 3.9): hand-checked small cases and a brute-force greedy reference."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import contrastkit.mining.seeds as seeds_module
from contrastkit.errors import InputError
from contrastkit.mining.seeds import (
    add_unseeded_pairs,
    cluster_resample_seeds,
    global_top_seeds,
    greedy_one_to_one,
    neighbour_expand,
    row_max_filter,
)

S3 = torch.tensor([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3], [0.1, 0.7, 0.6]])


def brute_greedy(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Greedy from the formula: all entries sorted by (value desc, row, col), keep unused."""
    entries = sorted(
        ((float(scores[i, j]), i, j) for i in range(scores.shape[0]) for j in range(scores.shape[1])),
        key=lambda e: (-e[0], e[1], e[2]),
    )
    rows, cols, kept = set(), set(), []
    for _, i, j in entries:
        if i not in rows and j not in cols and len(kept) < k:
            rows.add(i)
            cols.add(j)
            kept.append((i, j))
    return kept


def _pairs(left: torch.Tensor, right: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(left.tolist(), right.tolist(), strict=True))


# ---------------------------------------------------------------- greedy_one_to_one


def test_greedy_by_hand() -> None:
    # sorted: .9 (0,0) take; .85 (1,0) col used; .8 (0,1) row used; .7 (2,1) take; .6 (2,2) row
    # used; .3 (1,2) take
    assert _pairs(*greedy_one_to_one(S3, 3)) == [(0, 0), (2, 1), (1, 2)]
    assert _pairs(*greedy_one_to_one(S3, 2)) == [(0, 0), (2, 1)]
    # only the top 3 entries (.9, .85, .8) are candidates: one pair survives
    assert _pairs(*greedy_one_to_one(S3, 3, candidates=3)) == [(0, 0)]
    # more pairs asked than rows: min(R, C) come back
    assert len(greedy_one_to_one(S3[:2], 5)[0]) == 2


def test_greedy_ties_go_to_the_lower_row_then_column() -> None:
    scores = torch.ones(3, 3)
    assert _pairs(*greedy_one_to_one(scores, 3)) == [(0, 0), (1, 1), (2, 2)]
    scores = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert _pairs(*greedy_one_to_one(scores, 2)) == [(0, 1), (1, 0)]


def test_greedy_matches_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeds_module, "BLOCK_ENTRIES", 7)  # many row blocks, each merged
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        scores = torch.randn(9 + trial, 6, generator=g, dtype=torch.float64)
        assert _pairs(*greedy_one_to_one(scores, 6)) == brute_greedy(scores, 6)


# ---------------------------------------------------------------- row_max_filter


def test_row_max_filter_by_hand() -> None:
    s = torch.tensor([[3.0, 1.0, 0.0], [2.0, 1.0, 5.0], [0.0, 0.0, 2.0]])
    eye = torch.eye(3)
    # row 0: 3 is its max; row 1: 1 < 5; row 2: 2 is its max
    assert row_max_filter(s, eye).tolist() == [True, False, True]
    # column maxima: col 0 (3 >= 2) yes, col 2 (2 < 5) no
    assert row_max_filter(s, eye, mutual=True).tolist() == [True, False, False]
    # a tie with the diagonal keeps the seed
    assert row_max_filter(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.eye(2)).tolist() == [True, True]


def test_row_max_filter_on_embeddings_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeds_module, "BLOCK_ENTRIES", 5)
    g = torch.Generator().manual_seed(1)
    left, right = torch.randn(11, 4, generator=g), torch.randn(11, 4, generator=g)
    s = left @ right.T
    want = [bool(s[i, i] >= s[i].max()) for i in range(11)]
    want_mutual = [w and bool(s[i, i] >= s[:, i].max()) for i, w in enumerate(want)]
    assert row_max_filter(left, right).tolist() == want
    assert row_max_filter(left, right, mutual=True).tolist() == want_mutual


# ---------------------------------------------------------------- cluster_resample_seeds


def _three_clusters():
    """Left and right: 6 + 2 + 2 entities around three far apart centres (fused), side features
    = one-hot identity (the true pair has dot product 1, any other 0) scaled per entity."""
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    sizes = [6, 2, 2]
    labels = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    g = torch.Generator().manual_seed(0)
    fused_left = centres[labels] + 0.1 * torch.randn(10, 2, generator=g)
    fused_right = centres[labels] + 0.1 * torch.randn(10, 2, generator=g)
    weight = torch.linspace(2.0, 1.0, 10)  # entity i's self dot product is weight_i^2
    return weight[:, None] * torch.eye(10), weight[:, None] * torch.eye(10), fused_left, fused_right, labels


def test_cluster_quotas_and_pairs_by_hand() -> None:
    feat_left, feat_right, fused_left, fused_right, labels = _three_clusters()
    out = cluster_resample_seeds(
        feat_left,
        feat_right,
        fused_left,
        fused_right,
        n_clusters=3,
        budget=5,
        generator=torch.Generator().manual_seed(3),
    )
    # N = 20; quotas floor(5 * 12 / 20) = 3 and floor(5 * 4 / 20) = 1 (twice)
    size = torch.bincount(out.cluster_left, minlength=3) + torch.bincount(out.cluster_right, minlength=3)
    assert sorted(size.tolist()) == [4, 4, 12]
    assert out.quota.tolist() == [5 * int(s) // 20 for s in size]
    assert out.per_cluster.tolist() == out.quota.tolist()
    # within each cluster the true pairs with the largest dot products: rows 0, 1, 2 of the big
    # cluster, row 6 and row 8 of the small ones
    assert sorted(_pairs(out.left, out.right)) == [(0, 0), (1, 1), (2, 2), (6, 6), (8, 8)]
    # the k-means clusters are the true ones
    for c in range(3):
        members = set((out.cluster_left == c).nonzero()[:, 0].tolist())
        assert members in ({0, 1, 2, 3, 4, 5}, {6, 7}, {8, 9})
    assert torch.equal(out.cluster_left, out.cluster_right)


def test_global_top_seeds_crowd_where_dot_products_are_large() -> None:
    feat_left, feat_right, *_ = _three_clusters()
    # the global top 5 are the five largest weights: all from the big cluster but one
    assert _pairs(*global_top_seeds(feat_left, feat_right, budget=5)) == [(i, i) for i in range(5)]
    # candidate_factor 1: the top 5 entries are exactly those 5 diagonal ones, all kept
    assert len(global_top_seeds(feat_left, feat_right, budget=5, candidate_factor=1)[0]) == 5


def test_candidate_factor_caps_each_cluster() -> None:
    # one cluster, one dominant left row: its 3 entries are the top 3, so with candidate_factor 1
    # and a quota of 3 only one pair is found; a factor of 3 finds all 3.
    feat_left = torch.tensor([[10.0, 10.0, 10.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    feat_right = torch.eye(3)
    fused = torch.zeros(3, 2)
    few = cluster_resample_seeds(
        feat_left, feat_right, fused, fused, n_clusters=1, budget=3, candidate_factor=1
    )
    assert few.quota.tolist() == [3] and few.per_cluster.tolist() == [1]
    many = cluster_resample_seeds(
        feat_left, feat_right, fused, fused, n_clusters=1, budget=3, candidate_factor=3
    )
    assert many.per_cluster.tolist() == [3]
    # all 9 entries: the three 10s (row 0 takes column 0), then 1 at (1, 0) (column used) and
    # (2, 1) (kept), then the zeros by row: (1, 1) column used, (1, 2) kept
    assert _pairs(many.left, many.right) == [(0, 0), (2, 1), (1, 2)]


def test_cluster_seeds_are_reproducible_with_a_generator() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(60, 4, generator=g)
    args = (x + 0.05 * torch.randn(60, 4, generator=g), x, x, x)
    one = cluster_resample_seeds(*args, budget=20, generator=torch.Generator().manual_seed(9))
    two = cluster_resample_seeds(*args, budget=20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(one.left, two.left) and torch.equal(one.right, two.right)
    assert int(one.per_cluster.sum()) == len(one.left) <= 20
    assert len(set(one.left.tolist())) == len(one.left) and len(set(one.right.tolist())) == len(one.right)


# ---------------------------------------------------------------- add_unseeded_pairs


def test_add_unseeded_pairs_by_hand() -> None:
    # cosine: left 1 ~ right 2 (1.0), left 2 ~ right 1 (0.8), left 1 ~ right 1 (0.6)
    fused_left = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])
    fused_right = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 2.0, 0.0]])
    left, right = add_unseeded_pairs(fused_left, fused_right, torch.tensor([0]), torch.tensor([0]), budget=5)
    assert _pairs(left, right) == [(0, 0), (1, 2), (2, 1)]
    left, right = add_unseeded_pairs(fused_left, fused_right, torch.tensor([0]), torch.tensor([0]), budget=1)
    assert _pairs(left, right) == [(0, 0), (1, 2)]


def test_add_unseeded_pairs_is_the_exact_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seeds_module, "BLOCK_ENTRIES", 16)
    g = torch.Generator().manual_seed(2)
    fused_left, fused_right = (
        torch.randn(30, 5, generator=g, dtype=torch.float64),
        torch.randn(25, 5, generator=g, dtype=torch.float64),
    )
    seeded_left, seeded_right = torch.tensor([3, 7, 11]), torch.tensor([0, 4, 9])
    left, right = add_unseeded_pairs(fused_left, fused_right, seeded_left, seeded_right, budget=20)
    free_left = [i for i in range(30) if i not in {3, 7, 11}]
    free_right = [j for j in range(25) if j not in {0, 4, 9}]
    unit = torch.nn.functional.normalize
    cos = unit(fused_left[free_left], dim=1) @ unit(fused_right[free_right], dim=1).T
    want = [(free_left[i], free_right[j]) for i, j in brute_greedy(cos, 20)]
    assert _pairs(left, right) == [(3, 0), (7, 4), (11, 9), *want]


# ---------------------------------------------------------------- neighbour_expand


def _angle(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


def test_neighbour_expand_threshold_quota_and_filter_by_hand() -> None:
    # Two seeds (0, 0) and (1, 1); n = 2. Seed 0: quota floor(6) = 6, threshold 0.8; seed 1:
    # quota floor(6 - 1.5) = 4, threshold 0.85.
    # left 2 ~ right 2: cos 0.83 (a neighbour pair of seed 1 only -> rejected, 0.83 <= 0.85);
    # left 3 ~ right 3: cos 0.83 (a neighbour pair of seed 0 -> accepted, 0.83 > 0.8).
    c = math.acos(0.83)
    fused_left = torch.tensor([[1.0, 0.0], [0.0, 1.0], _angle(2.0), _angle(-2.0)])
    fused_right = torch.tensor([[1.0, 0.0], [0.0, 1.0], _angle(2.0 + c), _angle(-2.0 - c)])
    neighbours_left = torch.tensor([[3, -1], [2, -1], [-1, -1], [-1, -1]])
    neighbours_right = torch.tensor([[3, -1], [2, -1], [-1, -1], [-1, -1]])
    left, right = neighbour_expand(
        fused_left, fused_right, torch.tensor([0, 1]), torch.tensor([0, 1]), neighbours_left, neighbours_right
    )
    assert _pairs(left, right) == [(0, 0), (1, 1), (3, 3)]


def test_neighbour_expand_caps_at_the_quota_and_reuses_no_entity() -> None:
    # one seed (0, 0) with 8 neighbour pairs i ~ i of cosine 1 (> 0.8): only floor(6) = 6 taken,
    # by similarity (ties: lowest rows); cross pairs i ~ j have cosine 0.
    n = 9
    fused = torch.eye(n)
    neighbours = torch.full((n, 8), -1)
    neighbours[0] = torch.arange(1, 9)
    left, right = neighbour_expand(
        fused, fused.clone(), torch.tensor([0]), torch.tensor([0]), neighbours, neighbours
    )
    assert _pairs(left, right) == [(i, i) for i in range(7)]


def test_neighbour_expand_drops_pairs_that_are_not_row_maxima() -> None:
    # seed (0, 0); neighbour pairs (1, 1) cos 0.9 accepted; but left 1 is closer to right 0
    # (cos 0.95) than to right 1, so the final row-max filter drops (1, 1); seed 0 stays.
    fused_left = torch.tensor([[1.0, 0.0], _angle(math.acos(0.95))])
    fused_right = torch.tensor([[1.0, 0.0], _angle(math.acos(0.95) + math.acos(0.9))])
    neighbours = torch.tensor([[1], [-1]])
    left, right = neighbour_expand(
        fused_left, fused_right, torch.tensor([0]), torch.tensor([0]), neighbours, neighbours
    )
    assert _pairs(left, right) == [(0, 0)]


# ---------------------------------------------------------------- errors


def test_errors_name_the_function_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(6, 3)
    fn = "cluster_resample_seeds"
    with pytest.raises(InputError, match=f"{fn}: argument 'feat_right' must have embedding size 3"):
        cluster_resample_seeds(x, torch.randn(6, 2), x, x)
    with pytest.raises(InputError, match=f"{fn}: argument 'fused_left' must have 6 rows"):
        cluster_resample_seeds(x, x, torch.randn(5, 3), x)
    with pytest.raises(InputError, match=f"{fn}: argument 'feat_left' contains 3 NaN"):
        cluster_resample_seeds(torch.cat([torch.full((1, 3), float("nan")), x[1:]]), x, x, x)
    with pytest.raises(InputError, match=f"{fn}: argument 'n_clusters' must be an int in \\[1, 12\\]"):
        cluster_resample_seeds(x, x, x, x, n_clusters=13)
    with pytest.raises(InputError, match=f"{fn}: argument 'budget' must be an int >= 1"):
        cluster_resample_seeds(x, x, x, x, budget=0)
    with pytest.raises(InputError, match=f"{fn}: argument 'candidate_factor' must be an int >= 1"):
        cluster_resample_seeds(x, x, x, x, candidate_factor=True)
    with pytest.raises(InputError, match=f"{fn}: argument 'generator' must be a torch.Generator"):
        cluster_resample_seeds(x, x, x, x, generator=0)
    with pytest.raises(InputError, match=f"{fn}: argument 'feat_left' is empty"):
        cluster_resample_seeds(torch.zeros(0, 3), x, torch.zeros(0, 3), x)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(InputError, match=f"{fn}: needs scikit-learn; pip install 'contrastkit\\[cluster\\]'"):
        cluster_resample_seeds(x, x, x, x, n_clusters=2)


def test_errors_of_the_building_blocks() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(InputError, match="greedy_one_to_one: argument 'k' must be an int >= 1"):
        greedy_one_to_one(S3, 0)
    with pytest.raises(InputError, match="greedy_one_to_one: argument 'scores' contains 1 NaN"):
        greedy_one_to_one(torch.tensor([[float("nan"), 1.0]]), 1)
    with pytest.raises(InputError, match="greedy_one_to_one: argument 'candidates' must be an int >= 1"):
        greedy_one_to_one(S3, 1, candidates=0)
    with pytest.raises(InputError, match="row_max_filter: argument 'right' must have 4 rows"):
        row_max_filter(x, torch.randn(3, 3))
    with pytest.raises(InputError, match="row_max_filter: argument 'mutual' must be True or False"):
        row_max_filter(x, x, mutual="no")
    with pytest.raises(InputError, match="global_top_seeds: argument 'budget' must be an int >= 1"):
        global_top_seeds(x, x, budget=2.5)
    fn = "add_unseeded_pairs"
    with pytest.raises(InputError, match=f"{fn}: argument 'left_idx' holds indices outside \\[0, 4\\)"):
        add_unseeded_pairs(x, x, torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(InputError, match=f"{fn}: argument 'right_idx' uses an entity twice"):
        add_unseeded_pairs(x, x, torch.tensor([0, 1]), torch.tensor([2, 2]))
    with pytest.raises(InputError, match=f"{fn}: 'left_idx' and 'right_idx' must pair up"):
        add_unseeded_pairs(x, x, torch.tensor([0, 1]), torch.tensor([2]))
    with pytest.raises(InputError, match=f"{fn}: argument 'left_idx' must be a 1-D integer index tensor"):
        add_unseeded_pairs(x, x, torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(InputError, match=f"{fn}: argument 'fused_left' has 1 all-zero row"):
        add_unseeded_pairs(torch.cat([torch.zeros(1, 3), x[1:]]), x, torch.tensor([0]), torch.tensor([0]))
    fn = "neighbour_expand"
    seeds = torch.tensor([0]), torch.tensor([0])
    good = torch.full((4, 2), -1)
    with pytest.raises(
        InputError, match=f"{fn}: argument 'neighbours_left' must be a \\(4, K\\) integer tensor"
    ):
        neighbour_expand(x, x, *seeds, torch.full((3, 2), -1), good)
    with pytest.raises(
        InputError, match=f"{fn}: argument 'neighbours_right' holds indices outside \\[-1, 4\\)"
    ):
        neighbour_expand(x, x, *seeds, good, torch.full((4, 2), 7))
    # float neighbour rows used to reach torch's indexing (IndexError) instead of a clear error
    with pytest.raises(InputError, match=f"{fn}: argument 'neighbours_left' must be a \\(4, K\\) integer"):
        neighbour_expand(x, x, *seeds, torch.full((4, 2), 1.0), good)
    # no seeds: the error names neighbour_expand, not the row_max_filter it calls
    none = torch.zeros(0, dtype=torch.long)
    with pytest.raises(InputError, match=f"{fn}: arguments 'left_idx' and 'right_idx' are empty"):
        neighbour_expand(x, x, none, none, good, good)


def test_half_precision_inputs_work() -> None:
    assert _pairs(*greedy_one_to_one(S3.bfloat16(), 3)) == [(0, 0), (2, 1), (1, 2)]
    feat_left, feat_right, fused_left, fused_right, _ = _three_clusters()
    left, right = global_top_seeds(feat_left.bfloat16(), feat_right.bfloat16(), budget=3)
    assert _pairs(left, right) == [(0, 0), (1, 1), (2, 2)]
    out = cluster_resample_seeds(
        feat_left.bfloat16(), feat_right.bfloat16(), fused_left.bfloat16(), fused_right.bfloat16(), 3, 5
    )
    assert len(out.left) == 5
