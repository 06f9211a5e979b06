"""constrained_cluster on hand-checked cases and against scikit-learn without constraints."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.mining.clustering import constrained_cluster, cooccurring_pairs, merge_tracklets


def _angles(*degrees: float) -> torch.Tensor:
    """Unit vectors in the plane: cosine distance between angles a, b is 1 - cos(a - b)."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def _distance(degrees: float) -> float:
    return 1 - math.cos(math.radians(degrees))


def test_chain_merges_through_neighbours_with_single_linkage_only() -> None:
    # 0-20-41-63 degrees: neighbours 20, 21, 22 degrees apart (no ties), the ends 63.
    x = _angles(0, 20, 41, 63)
    t = _distance(25)
    assert constrained_cluster(x, None, t, linkage="single").tolist() == [0, 0, 0, 0]
    # average: {0, 20}, then {41, 63}; their mean distance exceeds d(25), so they stay apart
    assert constrained_cluster(x, None, t, linkage="average").tolist() == [0, 0, 1, 1]
    assert constrained_cluster(x, None, t, linkage="complete").tolist() == [0, 0, 1, 1]


def test_average_linkage_merge_order_by_hand() -> None:
    # points at 0, 10, 50 degrees: {0,10} merge at d(10); then d({0,10}, 50) = (d50 + d40)/2
    x = _angles(50, 0, 10)
    avg = (_distance(50) + _distance(40)) / 2
    assert constrained_cluster(x, None, avg - 1e-9).tolist() == [0, 1, 1]
    assert constrained_cluster(x, None, avg + 1e-9).tolist() == [0, 0, 0]
    # complete linkage needs d50; single linkage d40
    assert constrained_cluster(x, None, _distance(45), linkage="complete").tolist() == [0, 1, 1]
    assert constrained_cluster(x, None, _distance(45), linkage="single").tolist() == [0, 0, 0]


def test_cannot_link_blocks_a_merge_and_propagates_to_clusters() -> None:
    x = _angles(0, 4, 10, 90)
    t = _distance(30)
    assert constrained_cluster(x, None, t).tolist() == [0, 0, 0, 1]
    # 0 and 10 degrees may not end together: 4 joins 0 first (the nearest pair), then
    # {0, 4} and {10} hold the cannot-link pair and never merge
    assert constrained_cluster(x, torch.tensor([[2, 0]]), t).tolist() == [0, 0, 1, 2]
    # a cannot-link between the two nearest forces the middle point to one side
    assert constrained_cluster(x, torch.tensor([[0, 1]]), t).tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_cannot_link_of_any_integer_dtype(dtype: torch.dtype) -> None:
    # uint8 index tensors would act as boolean masks and int8/int16 ones are refused by torch
    x = _angles(0, 1, 90, 91)
    pairs = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]])
    want = constrained_cluster(x, pairs, 0.5)
    assert want.tolist() == [0, 1, 2, 3]
    assert constrained_cluster(x, pairs.to(dtype), 0.5).tolist() == want.tolist()


def test_no_cluster_ever_holds_a_cannot_link_pair() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    pairs = torch.randint(0, 40, (30, 2), generator=g)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    for linkage in ("average", "single", "complete"):
        ids = constrained_cluster(x, pairs, 1.5, linkage=linkage)
        assert not bool((ids[pairs[:, 0]] == ids[pairs[:, 1]]).any())
        assert ids.unique().numel() < 40  # it did merge


def test_threshold_is_strict_and_zero_merges_nothing() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # distances 1 and 0
    assert constrained_cluster(x, None, 0.0).tolist() == [0, 1, 2]
    assert constrained_cluster(x, None, 1.0).tolist() == [0, 1, 0]  # d = 1 is not < 1
    assert constrained_cluster(x, None, 1.0 + 1e-9).tolist() == [0, 0, 0]


def test_ids_are_numbered_by_first_row() -> None:
    x = _angles(90, 0, 91, 1, 180)
    assert constrained_cluster(x, None, _distance(5)).tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("linkage", ["average", "single", "complete"])
def test_equals_sklearn_without_constraints(linkage: str) -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(6, 8, generator=g, dtype=torch.float64)
    x = centres.repeat_interleave(5, 0) + 0.4 * torch.randn(30, 8, generator=g, dtype=torch.float64)
    for threshold in (0.1, 0.3, 0.6, 1.0):
        got = constrained_cluster(x, None, threshold, linkage=linkage)
        model = cluster.AgglomerativeClustering(
            n_clusters=None, metric="cosine", linkage=linkage, distance_threshold=threshold
        )
        want = torch.as_tensor(model.fit_predict(x.numpy()))
        same_got = got[:, None] == got[None, :]
        same_want = want[:, None] == want[None, :]
        assert torch.equal(same_got, same_want), threshold
    # strictness: at a threshold equal to a merge distance (1 exactly) neither merges
    exact = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    model = cluster.AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage=linkage, distance_threshold=1.0
    )
    assert model.fit(exact.numpy()).n_clusters_ == 2
    assert constrained_cluster(exact, None, 1.0, linkage=linkage).tolist() == [0, 1, 0]


def test_cooccurring_pairs() -> None:
    frames = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    tracks = torch.tensor([5, 2, 9, 2, 5, 9, 9])
    assert cooccurring_pairs(frames, tracks).tolist() == [[2, 5], [2, 9], [5, 9]]
    assert cooccurring_pairs(torch.tensor([0, 1]), torch.tensor([0, 1])).shape == (0, 2)


def test_merge_tracklets_by_hand() -> None:
    # tracklet means: 10 at 1, 20 at 2 (one identity), 30 at 6 degrees (seen with 10), 40 at 120.5
    z = torch.cat([_angles(0, 2), _angles(1, 3), _angles(6), _angles(120, 121)])
    tracks = torch.tensor([10, 10, 20, 20, 30, 40, 40])
    cooccur = torch.tensor([[10, 30], [30, 99]])  # 99 is absent from these frames
    merged = merge_tracklets(z, tracks, cooccur, _distance(10))
    assert merged.tolist() == [0, 0, 0, 0, 1, 2, 2]
    assert merge_tracklets(z, tracks, cooccur.int(), _distance(10)).tolist() == merged.tolist()
    assert merge_tracklets(z, tracks, None, _distance(10)).tolist() == [0, 0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embeddings": torch.randn(4)}, "'embeddings' must have shape"),
        ({"embeddings": torch.zeros(4, 2)}, "all-zero"),
        ({"embeddings": torch.full((4, 2), float("inf"))}, "NaN/inf"),
        ({"cannot_link": torch.tensor([[0, 4]])}, r"outside \[0, 4\)"),
        ({"cannot_link": torch.tensor([[1, 1]])}, "with itself"),
        ({"cannot_link": torch.tensor([0, 1])}, r"\(K, 2\)"),
        ({"threshold": -0.1}, "'threshold'"),
        ({"threshold": float("nan")}, "'threshold'"),
        ({"linkage": "ward"}, "'linkage'"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"embeddings": torch.randn(4, 2), "cannot_link": None, "threshold": 0.5} | kwargs
    with pytest.raises(InputError, match=match):
        constrained_cluster(**args)


def test_helper_bad_inputs_raise() -> None:
    with pytest.raises(InputError, match="'tracklet_id' must have shape"):
        cooccurring_pairs(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(InputError, match="'frame_id' must be a 1-D"):
        cooccurring_pairs(torch.zeros(2, 2).long(), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="'tracklet_id' must have shape"):
        merge_tracklets(torch.randn(3, 2), torch.tensor([0, 1]), None, 0.5)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # tracklet 7's frames cancel
    with pytest.raises(InputError, match="merge_tracklets: the unit frame embeddings of tracklet 7"):
        merge_tracklets(opposite, torch.tensor([7, 7, 9]), None, 0.5)
