"""kNN detectors against a float64 brute-force loop, the GMM split against its own formula, and
the AUROC against the pairwise definition; hand-checked cases and every error path."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.security.detectors import (
    average_ranks,
    detection_auroc,
    gmm_safe_split,
    knn_outlier_scores,
)


def _points(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- loop reference


def ref_knn(x: list[float], reference: list[list[float]], k: int) -> list[tuple[float, int]]:
    """The k nearest reference rows at a positive distance: (distance, index), ascending."""
    found = []
    for j, r in enumerate(reference):
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(x, r, strict=True)))
        if d > 0:
            found.append((d, j))
    return sorted(found)[:k]


def ref_lid(neighbours: list[tuple[float, int]]) -> float:
    k, dk = len(neighbours), neighbours[-1][0]
    total = sum(math.log(d / dk) for d, _ in neighbours)
    return math.inf if total == 0 else -k / total


def ref_scores(
    z: torch.Tensor, reference: torch.Tensor | None, k: int, method: str, form: str
) -> list[float]:
    rows = z.tolist()
    ref = rows if reference is None else reference.tolist()
    knn = [ref_knn(x, ref, k) for x in rows]
    if method == "k_distance":
        return [nb[-1][0] for nb in knn]
    if method == "lid":
        return [ref_lid(nb) for nb in knn]
    ref_knns = [ref_knn(o, ref, k) for o in ref]
    out = []
    for nb in knn:
        dk = nb[-1][0]
        terms = []
        for _, o in nb:
            dko, lido = ref_knns[o][-1][0], ref_lid(ref_knns[o])
            terms.append((dk / dko) ** lido if form == "power" else lido * math.log(dk / dko))
        out.append(sum(terms) / k)
    return out


# ---------------------------------------------------------------- kNN scores


@pytest.mark.parametrize("method", ["k_distance", "lid", "dao"])
@pytest.mark.parametrize("form", ["log", "power"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_matches_the_float64_loop(method, form, with_reference):
    z = _points(30, 4, seed=1)
    reference = _points(25, 4, seed=2) if with_reference else None
    got = knn_outlier_scores(z, reference, k=5, method=method, form=form, chunk_size=7)
    want = torch.tensor(ref_scores(z, reference, 5, method, form), dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (30,)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_hand_checked_line():
    z = torch.tensor([[0.0], [1.0], [2.0], [4.0]], dtype=torch.float64)
    kdist = knn_outlier_scores(z, k=2, method="k_distance")
    assert kdist.tolist() == [2.0, 1.0, 2.0, 3.0]  # 0: {1, 2}; 1: {0, 2}; 2: {1, 0}; 4: {2, 1}
    lid = knn_outlier_scores(z, k=2, method="lid")
    assert math.isclose(lid[0], 2 / math.log(2))  # -2 / (log(1/2) + log(2/2))
    assert lid[1] == math.inf  # both neighbours at distance 1: all distances tie
    assert math.isclose(lid[3], -2 / math.log(2 / 3))
    # DAO of the point 4: its neighbours 2 (d_k 2, LID 2/log 2) and 1 (d_k 1, LID inf)
    dao = knn_outlier_scores(z, k=2, method="dao", form="power")
    assert dao[3] == math.inf  # (3 / 1) ** inf
    # the point 0: neighbours 1 (d_k 1, LID inf; log(2 / 1) > 0 -> +inf) and 2 (d_k 2: term 0)
    assert knn_outlier_scores(z, k=2, method="dao")[0] == math.inf


def test_hand_checked_dao():
    z = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    # 7: neighbours 3 (d 4) and 1 (d 6), d_k = 6; 3: neighbours 1, 0 -> d_k 3, LID -2/log(2/3);
    # 1: neighbours 0, 3 -> d_k 2, LID -2/log(1/2)
    lid3, lid1 = -2 / math.log(2 / 3), -2 / math.log(1 / 2)
    log_form = (lid3 * math.log(6 / 3) + lid1 * math.log(6 / 2)) / 2
    power_form = ((6 / 3) ** lid3 + (6 / 2) ** lid1) / 2
    assert math.isclose(knn_outlier_scores(z, k=2, method="dao")[3], log_form, rel_tol=1e-12)
    assert math.isclose(knn_outlier_scores(z, k=2, method="dao", form="power")[3], power_form, rel_tol=1e-12)


def test_dao_with_tied_neighbours_on_both_sides_is_inf_not_nan():
    # reference points 0 and 3 each have their 2 neighbours tied (LID = inf), with d_k 1 and 3;
    # the query's d_k is 2, so its log-form terms are +inf and -inf: the score is +inf (power form)
    reference = torch.tensor([[0.0, 0], [0, 1], [0, -1], [4, 0], [4, 3], [4, -3]], dtype=torch.float64)
    query = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    log_form = knn_outlier_scores(query, reference, k=2, method="dao")
    power_form = knn_outlier_scores(query, reference, k=2, method="dao", form="power")
    assert log_form[0] == math.inf and power_form[0] == math.inf
    # the second query sits inside point 0's tied neighbourhood (d_k 0.5 < 1): only a -inf term
    assert log_form[1] == -math.inf and math.isfinite(power_form[1])


def test_duplicates_are_not_neighbours():
    z = torch.tensor([[0.0], [1.0], [3.0], [3.0]], dtype=torch.float64)
    # the two 3s do not count each other (their nearest is 1, at distance 2); 0 counts both copies
    assert knn_outlier_scores(z, k=1, method="k_distance").tolist() == [1.0, 1.0, 2.0, 2.0]
    with pytest.raises(InputError, match="row 2 has fewer than k = 3 reference rows at a positive distance"):
        knn_outlier_scores(z, k=3, method="k_distance")


def test_reference_searches_another_set_and_excludes_only_zero_distances():
    reference = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    query = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    # 0.5: neighbours 0 and 1 (both 0.5 away); 1.0: itself is in the reference at distance 0 -> skipped
    got = knn_outlier_scores(query, reference, k=2, method="k_distance")
    assert got.tolist() == [0.5, 1.0]
    z = _points(20, 3, seed=4)
    torch.testing.assert_close(knn_outlier_scores(z, z, k=4), knn_outlier_scores(z, k=4), rtol=0, atol=0)


def test_an_isolated_point_scores_highest():
    z = torch.cat([_points(60, 2, seed=5) * 0.1, torch.tensor([[3.0, 3.0]], dtype=torch.float64)])
    for method in ("k_distance", "dao"):  # (LID measures dimension, not density: no claim here)
        assert int(knn_outlier_scores(z, k=8, method=method).argmax()) == 60


def test_chunking_is_exact():
    z = _points(50, 6, seed=6)
    for method in ("k_distance", "lid", "dao"):
        whole = knn_outlier_scores(z, k=6, method=method, chunk_size=1024)
        torch.testing.assert_close(
            knn_outlier_scores(z, k=6, method=method, chunk_size=3), whole, rtol=0, atol=0
        )


def test_float32_matches_float64_and_bf16_is_finite():
    z = _points(60, 8, seed=7)
    for method in ("k_distance", "lid", "dao"):
        want = knn_outlier_scores(z, k=8, method=method)
        got = knn_outlier_scores(z.float(), k=8, method=method)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
        low = knn_outlier_scores(z.bfloat16(), k=8, method=method)
        assert low.dtype == torch.float32 and bool(torch.isfinite(low).all())


def test_does_not_track_gradients():
    z = _points(20, 3, seed=8).requires_grad_()
    assert not knn_outlier_scores(z, k=3).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "'k' must be an int >= 1; got 0"),
        ({"k": 2.0}, "'k' must be an int >= 1"),
        ({"k": 1, "method": "lid"}, "method 'lid' needs k >= 2"),
        ({"k": 1, "method": "dao"}, "method 'dao' needs k >= 2"),
        ({"k": 10}, "fewer than k = 10 reference rows"),
        ({"method": "lof"}, "'method' must be one of 'k_distance', 'lid', 'dao'; got 'lof'"),
        ({"form": "exp"}, "'form' must be one of 'log', 'power'"),
        ({"chunk_size": 0}, "'chunk_size' must be an int >= 1"),
        ({"z": torch.zeros(10)}, "'z' must have shape (N, D)"),
        ({"z": torch.zeros(0, 3)}, "'z' is empty"),
        ({"z": torch.full((10, 3), float("nan"))}, "'z' contains 30 NaN/inf"),
        ({"z": torch.zeros(10, 3, dtype=torch.int64)}, "floating-point"),
        ({"reference": torch.zeros(10, 4)}, "'reference' must have embedding size 3 (from 'z')"),
        ({"reference": torch.zeros(3, 3), "k": 3}, "fewer than k = 3 reference rows"),
    ],
)
def test_knn_errors(kwargs, message):
    args = {"z": _points(10, 3, seed=9), **kwargs}
    with pytest.raises(InputError, match="knn_outlier_scores") as err:
        knn_outlier_scores(**args)
    assert message in str(err.value)


# ---------------------------------------------------------------- AUROC


def ref_auroc(scores: list[float], poisoned: list[bool]) -> float:
    pos = [s for s, p in zip(scores, poisoned, strict=True) if p]
    neg = [s for s, p in zip(scores, poisoned, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_average_ranks_by_hand():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc_matches_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(10)
    scores = torch.randint(0, 6, (80,), generator=g).float()  # many ties
    poisoned = torch.rand(80, generator=g) < 0.3
    got = detection_auroc(scores, poisoned)
    assert math.isclose(got, ref_auroc(scores.tolist(), poisoned.tolist()), rel_tol=1e-12)


def test_auroc_ranks_infinite_scores():
    # a tied LID (and DAO) is +inf: the detector's own output must be scoreable
    scores = torch.tensor([math.inf, 0.3, math.inf, -math.inf, 0.9])
    poisoned = torch.tensor([True, False, False, False, True])
    want = ref_auroc(scores.tolist(), poisoned.tolist())
    assert want == pytest.approx((1 + 0.5 + 1 + 1 + 0 + 1) / 6)  # inf vs (0.3, inf, -inf); 0.9 vs them
    assert detection_auroc(scores, poisoned) == pytest.approx(want, rel=1e-12)


def test_auroc_hand_checked():
    mask = torch.tensor([False, False, True, True])
    assert detection_auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), mask) == 1.0
    assert detection_auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), mask) == 0.0
    assert detection_auroc(torch.ones(4), mask) == 0.5


@pytest.mark.parametrize(
    ("scores", "mask", "message"),
    [
        (torch.ones(4), torch.zeros(4, dtype=torch.bool), "needs poisoned and clean pairs; got 0 poisoned"),
        (torch.ones(4), torch.ones(4, dtype=torch.bool), "got 4 poisoned and 0 clean"),
        (torch.ones(4), torch.tensor([0, 1, 0, 1]), "'poisoned_mask' must be a bool tensor"),
        (torch.ones(4), torch.tensor([True, False]), "must have the shape of 'scores' (4,)"),
        (torch.ones(2, 2), torch.tensor([True, False]), "'scores' must be a non-empty 1-D tensor"),
        (torch.tensor([1.0, float("nan")]), torch.tensor([True, False]), "'scores' contains 1 NaN"),
    ],
)
def test_auroc_errors(scores, mask, message):
    with pytest.raises(InputError, match="detection_auroc") as err:
        detection_auroc(scores, mask)
    assert message in str(err.value)


# ---------------------------------------------------------------- GMM split


def _cosines(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    high = 0.7 + 0.05 * torch.randn(80, generator=g, dtype=torch.float64)
    low = 0.1 + 0.05 * torch.randn(20, generator=g, dtype=torch.float64)
    order = torch.randperm(100, generator=g)
    return torch.cat([high, low])[order], (torch.arange(100) < 80)[order]


def test_gmm_split_separates_two_clusters_and_follows_its_formula():
    s, is_high = _cosines()
    split = gmm_safe_split(s, seed=0)
    assert torch.equal(split.safe, is_high) and torch.equal(split.safe, split.posterior > 0.5)
    assert split.means[0] < 0.2 < 0.6 < split.means[1]
    assert math.isclose(split.weights[1], 0.8, abs_tol=0.02)
    for i in range(100):  # posterior = pi_h N_h / sum_c pi_c N_c, by hand from the fitted parameters
        dens = [
            w * math.exp(-((float(s[i]) - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)
            for w, m, v in zip(split.weights, split.means, split.variances, strict=True)
        ]
        assert math.isclose(float(split.posterior[i]), dens[1] / sum(dens), rel_tol=1e-6, abs_tol=1e-12)
    again = gmm_safe_split(s.float(), seed=0)
    torch.testing.assert_close(again.posterior, split.posterior, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("sim", "kwargs", "message"),
    [
        (torch.ones(2, 3), {}, "1-D tensor of at least 2 matched-pair cosines"),
        (torch.ones(1), {}, "at least 2"),
        (torch.ones(5), {}, "holds one value only"),
        (torch.tensor([0.1, float("inf")]), {}, "NaN/inf"),
        (torch.tensor([0.1, 0.5]), {"seed": -1}, "'seed' must be an int >= 0"),
        (torch.tensor([0.1, 0.5]), {"max_iter": 0}, "'max_iter' must be an int >= 1"),
        ([0.1, 0.5], {}, "must be a torch.Tensor"),
    ],
)
def test_gmm_errors(sim, kwargs, message):
    with pytest.raises(InputError, match="gmm_safe_split") as err:
        gmm_safe_split(sim, **kwargs)
    assert message in str(err.value)


def test_gmm_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.mixture", None)
    with pytest.raises(InputError, match=r"needs scikit-learn; pip install 'contrastkit\[cluster\]'"):
        gmm_safe_split(_cosines()[0])
