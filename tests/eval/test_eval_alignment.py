"""Mutual kNN, CKA, CKNNA, SVCCA and bridge retrieval against float64 loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import alignment as alignment_module
from contrastkit.eval import (
    alignment_metrics,
    alignment_score,
    bridge_retrieval,
    cka,
    cknna,
    geometry,
    mean_matched_cosine,
    modality_gap,
    mutual_knn,
    svcca,
)


def _rows(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(d: int, seed: int = 7) -> torch.Tensor:
    return torch.linalg.qr(_rows(d, d, seed=seed))[0]


# ---- loop references, written from METHODS 3.3 ---------------------------------------------


def _unit_list(x: torch.Tensor) -> list[list[float]]:
    out = []
    for row in x.tolist():
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / norm for v in row])
    return out


def _gram(x: torch.Tensor) -> list[list[float]]:
    u = _unit_list(x)
    return [[sum(p * q for p, q in zip(a, b, strict=True)) for b in u] for a in u]


def _knn(kernel: list[list[float]], i: int, k: int) -> set[int]:
    """The k most similar j != i (ties to the lower index)."""
    order = sorted((j for j in range(len(kernel)) if j != i), key=lambda j: (-kernel[i][j], j))
    return set(order[:k])


def _ref_mutual_knn(a, b, k) -> float:
    ka, kb = _gram(a), _gram(b)
    n = len(ka)
    return sum(len(_knn(ka, i, k) & _knn(kb, i, k)) / k for i in range(n)) / n


def _ref_hsic_u(K, L) -> float:
    """HSIC_u with explicit sums: [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1]/(n(n-3))."""
    n = len(K)
    Kt = [[0.0 if i == j else K[i][j] for j in range(n)] for i in range(n)]
    Lt = [[0.0 if i == j else L[i][j] for j in range(n)] for i in range(n)]
    trace = sum(Kt[i][j] * Lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(Kt[i][j] for i in range(n) for j in range(n))
    sum_l = sum(Lt[i][j] for i in range(n) for j in range(n))
    kl1 = sum(Kt[i][m] * Lt[m][j] for i in range(n) for m in range(n) for j in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * kl1 / (n - 2)) / (n * (n - 3))


def _ref_hsic_b(K, L) -> float:
    """tr(K H L H) / (n-1)^2 with H = I - 11'/n, by explicit products."""
    n = len(K)
    H = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]

    def mm(X, Y):
        return [[sum(X[i][m] * Y[m][j] for m in range(n)) for j in range(n)] for i in range(n)]

    P = mm(mm(mm(K, H), L), H)
    return sum(P[i][i] for i in range(n)) / (n - 1) ** 2


def _ref_cka(a, b, unbiased) -> float:
    K, L = _gram(a), _gram(b)
    h = _ref_hsic_u if unbiased else _ref_hsic_b
    return h(K, L) / math.sqrt(h(K, K) * h(L, L))


def _ref_cknna(a, b, k) -> float:
    K, L = _gram(a), _gram(b)
    n = len(K)
    nk = [_knn(K, i, k) for i in range(n)]
    nl = [_knn(L, i, k) for i in range(n)]
    MK = [[1.0 if j in nk[i] else 0.0 for j in range(n)] for i in range(n)]
    ML = [[1.0 if j in nl[i] else 0.0 for j in range(n)] for i in range(n)]

    def had(M, X):
        return [[M[i][j] * X[i][j] for j in range(n)] for i in range(n)]

    M = had(MK, ML)
    num = _ref_hsic_u(had(M, K), had(M, L))
    return num / math.sqrt(_ref_hsic_u(had(MK, K), had(MK, K)) * _ref_hsic_u(had(ML, L), had(ML, L)))


def _ref_svcca(a, b, dims) -> float:
    """Textbook CCA (numpy): canonical correlations = singular values of Cxx^-1/2 Cxy Cyy^-1/2."""

    def top_u(x):
        x = np.array(_unit_list(x))
        x = (x - x.mean(0)) / x.std(0, ddof=1)
        u, _, _ = np.linalg.svd(x, full_matrices=False)
        return u[:, :dims]

    x, y = top_u(a), top_u(b)
    x, y = x - x.mean(0), y - y.mean(0)
    cxx, cyy, cxy = x.T @ x, y.T @ y, x.T @ y

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w**-0.5) @ v.T

    return float(np.linalg.svd(inv_sqrt(cxx) @ cxy @ inv_sqrt(cyy), compute_uv=False).mean())


# ---- against the references ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_mutual_knn_matches_reference(k):
    a, b = _rows(10, 4), _rows(10, 6, seed=1)
    b = b + 0.8 * torch.cat([a, a[:, :2]], dim=1)  # partly related, so the overlap is not trivial
    assert mutual_knn(a, b, k=k) == pytest.approx(_ref_mutual_knn(a, b, k), abs=1e-15)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_cka_matches_reference(unbiased, seed):
    a, b = _rows(9, 4, seed=seed), _rows(9, 7, seed=seed + 10)
    b[:, :4] += a
    assert cka(a, b, unbiased=unbiased) == pytest.approx(_ref_cka(a, b, unbiased), abs=1e-12)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_cknna_matches_reference(k):
    a, b = _rows(9, 4), _rows(9, 5, seed=3)
    b[:, :4] += 0.7 * a
    assert cknna(a, b, k=k) == pytest.approx(_ref_cknna(a, b, k), abs=1e-12)


def test_cknna_with_all_neighbours_is_unbiased_cka():
    a, b = _rows(12, 4), _rows(12, 6, seed=5)
    assert cknna(a, b, k=11) == pytest.approx(cka(a, b), abs=1e-12)


@pytest.mark.parametrize("dims", [1, 3, 5])
def test_svcca_matches_textbook_cca(dims):
    a, b = _rows(30, 6), _rows(30, 8, seed=2)
    b[:, :6] += a
    assert svcca(a, b, dims=dims) == pytest.approx(_ref_svcca(a, b, dims), abs=1e-10)


def test_svcca_matches_scikit_learn_cca():
    cross_decomposition = pytest.importorskip("sklearn.cross_decomposition")
    a, b = _rows(80, 6), _rows(80, 9, seed=4)
    b[:, :6] += 0.5 * a
    dims = 3
    ua = alignment_module._top_left_singular("t", "a", torch.nn.functional.normalize(a, dim=1), dims)
    ub = alignment_module._top_left_singular("t", "b", torch.nn.functional.normalize(b, dim=1), dims)
    cca = cross_decomposition.CCA(n_components=dims, max_iter=5000, tol=1e-12)
    xa, xb = cca.fit_transform(ua.numpy(), ub.numpy())
    corr = np.mean([np.corrcoef(xa[:, i], xb[:, i])[0, 1] for i in range(dims)])
    assert svcca(a, b, dims=dims) == pytest.approx(corr, abs=1e-6)


# ---- hand cases ---------------------------------------------------------------------------


def test_identical_representations_are_perfectly_aligned():
    a = _rows(40, 12)
    assert mutual_knn(a, a, k=10) == 1.0
    assert cka(a, a) == pytest.approx(1.0, abs=1e-12)
    assert cka(a, a, unbiased=False) == pytest.approx(1.0, abs=1e-12)
    assert cknna(a, a, k=10) == pytest.approx(1.0, abs=1e-12)
    assert svcca(a, a, dims=10) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_invariant_to_orthogonal_maps_and_isotropic_scaling(unbiased):
    a, b = _rows(30, 8), _rows(30, 5, seed=1)
    want = cka(a, b, unbiased=unbiased)
    q = _orthogonal(8)
    assert cka(3.5 * a @ q, b, unbiased=unbiased) == pytest.approx(want, abs=1e-12)
    assert cka(a @ q, 0.1 * b, unbiased=unbiased, normalize=False) == pytest.approx(
        cka(a, b, unbiased=unbiased, normalize=False), abs=1e-12
    )
    assert cka(a, 2 * a @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)


def test_knn_metrics_invariant_to_rotation_and_scale():
    a = _rows(50, 8)
    b = 4 * a @ _orthogonal(8)
    assert mutual_knn(a, b, k=5) == 1.0
    assert cknna(a, b, k=5) == pytest.approx(1.0, abs=1e-10)


def test_svcca_invariant_to_column_scaling_and_permutation():
    a = _rows(40, 8)
    b = a[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))] * torch.arange(1, 9)
    assert svcca(a, b, dims=4, normalize=False) == pytest.approx(1.0, abs=1e-10)


def test_independent_features_score_near_chance():
    a, b = _rows(600, 32), _rows(600, 32, seed=1)
    assert mutual_knn(a, b, k=10) < 0.05  # chance is k/(N-1) ~ 0.017
    assert abs(cka(a, b)) < 0.02
    assert abs(cknna(a, b, k=10)) < 0.1
    assert svcca(a, b, dims=10) < 0.2


def test_float32_input_matches_float64():
    a, b = _rows(20, 6), _rows(20, 6, seed=1) + _rows(20, 6)
    assert cka(a.float(), b.float()) == pytest.approx(cka(a, b), abs=1e-6)
    assert mutual_knn(a.float(), b.float(), k=3) == mutual_knn(a, b, k=3)


def test_modality_gap_and_alignment_score_reuse_geometry():
    assert alignment_module.modality_gap is geometry.modality_gap is modality_gap
    x, y = _rows(10), _rows(10, seed=1)
    assert alignment_score(x, y) == mean_matched_cosine(x, y)
    u = torch.nn.functional.normalize
    want = sum(float(u(x[i], dim=0) @ u(y[i], dim=0)) for i in range(10)) / 10
    assert alignment_score(x, y) == pytest.approx(want, abs=1e-14)


def test_alignment_metrics_collects_every_metric():
    a, b = _rows(30, 8), _rows(30, 8, seed=1) + _rows(30, 8)
    got = alignment_metrics(a, b, k=5, dims=4)
    assert got["mutual_knn"] == mutual_knn(a, b, k=5)
    assert got["cka"] == pytest.approx(cka(a, b), abs=1e-14)
    assert got["cknna"] == pytest.approx(cknna(a, b, k=5), abs=1e-14)
    assert got["svcca"] == pytest.approx(svcca(a, b, dims=4), abs=1e-14)
    assert got["modality_gap"] == pytest.approx(modality_gap(a, b), abs=1e-14)
    assert got["alignment_score"] == pytest.approx(alignment_score(a, b), abs=1e-14)
    assert 0 <= got["R@1"] <= 1
    assert set(alignment_metrics(a, _rows(30, 5), k=5)) == {"mutual_knn", "cka", "cknna", "svcca"}


# ---- bridge retrieval ---------------------------------------------------------------------


def _ref_bridge(src, mid, dst, tau):
    u = [_unit_list(t) for t in (src, mid, dst)]
    n = len(u[0])

    def cos(p, q):
        return sum(x * y for x, y in zip(p, q, strict=True))

    def r1(score):
        return sum(all(score[i][j] < score[i][i] for j in range(n) if j != i) for i in range(n)) / n

    direct = [[cos(u[0][i], u[2][j]) for j in range(n)] for i in range(n)]
    bridge = []
    for i in range(n):
        logits = [cos(u[0][i], u[1][m]) / tau for m in range(n)]
        top = max(logits)
        w = [math.exp(v - top) for v in logits]
        w = [v / sum(w) for v in w]
        bridge.append([sum(w[m] * cos(u[1][m], u[2][j]) for m in range(n)) for j in range(n)])
    return r1(direct), r1(bridge)


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_bridge_retrieval_matches_reference(tau):
    base = _rows(12, 6)
    src, mid, dst = base + 1.2 * _rows(12, 6, 1), base + 0.3 * _rows(12, 6, 2), base + 0.9 * _rows(12, 6, 3)
    got = bridge_retrieval(src, mid, dst, tau=tau)
    direct, bridge = _ref_bridge(src, mid, dst, tau)
    assert got["direct_R@1"] == pytest.approx(direct, abs=1e-15)
    assert got["bridge_R@1"] == pytest.approx(bridge, abs=1e-15)
    assert got["gain_R@1"] == pytest.approx(bridge - direct, abs=1e-15)


def test_bridge_with_src_equal_to_mid_and_a_sharp_softmax_is_mid_to_dst_retrieval():
    base = _rows(20, 6)
    dst = base + 0.5 * _rows(20, 6, 1)
    got = bridge_retrieval(base, 3 * base, dst, tau=1e-4, ks=(1, 5))
    # the first hop picks each item's own middle row, so both routes score S_mid,dst
    assert got["bridge_R@1"] == got["direct_R@1"] and got["bridge_R@5"] == got["direct_R@5"]
    assert set(got) == {f"{p}_R@{k}" for p in ("direct", "bridge", "gain") for k in (1, 5)}


def test_bridge_helps_when_the_middle_is_close_to_both_ends():
    base = _rows(60, 8)
    mid = base + 0.1 * _rows(60, 8, 1)
    src = mid + 0.5 * _rows(60, 8, 2)  # src <-> mid close, src <-> dst far
    dst = base + 0.1 * _rows(60, 8, 3)
    got = bridge_retrieval(src, mid, dst, tau=0.02)
    assert got["bridge_R@1"] >= got["direct_R@1"]


# ---- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mutual_knn(_rows(5), _rows(4)), "mutual_knn: argument 'b' must have 5 rows"),
        (lambda: mutual_knn(_rows(5), _rows(5), k=5), "argument 'k' must be <= N - 1 = 4"),
        (lambda: mutual_knn(_rows(5), _rows(5), k=0), "argument 'k' must be an int >= 1"),
        (lambda: cka(_rows(3), _rows(3)), "cka: arguments 'a' and 'b' need at least 4 rows"),
        (lambda: cka(_rows(5), _rows(5), unbiased="yes"), "'unbiased'"),
        (lambda: cka([[1.0]], _rows(5)), "cka: argument 'a' must be a torch.Tensor"),
        (
            lambda: cka(torch.ones(6, 3, dtype=torch.float64), _rows(6)),
            "self-similarity HSIC of argument 'a'",
        ),
        (lambda: cknna(_rows(6), _rows(6), k=6), "cknna: argument 'k' must be <= N - 1 = 5"),
        (lambda: svcca(_rows(20, 3), _rows(20, 8), dims=4), "svcca: argument 'dims' = 4 exceeds the rank"),
        (lambda: svcca(_rows(20), _rows(20), dims=0), "argument 'dims' must be an int >= 1"),
        (lambda: mutual_knn(_rows(5).fill_(float("nan")), _rows(5)), "argument 'a' contains"),
        (
            lambda: bridge_retrieval(_rows(5), _rows(5, 4), _rows(5)),
            "argument 'mid' must have embedding size 5",
        ),
        (lambda: bridge_retrieval(_rows(5), _rows(5), _rows(4)), "argument 'dst' must have 5 rows"),
        (lambda: bridge_retrieval(_rows(5), _rows(5), _rows(5), tau=0.0), "'tau'"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, match):
    with pytest.raises(InputError, match=match):
        call()
