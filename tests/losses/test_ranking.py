"""rank_n_contrast against the O(n^3) loop reference of METHODS 1.9."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference
from contrastkit import InputError, rank_n_contrast


def _raw(*shape: int, seed: int, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.requires_grad_() if requires_grad else t


def _int_labels(*shape: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def ref_rnc(
    z: torch.Tensor, y: torch.Tensor | None, temperature: float = 2.0, label_dist: torch.Tensor | None = None
) -> torch.Tensor:
    """L = -1/(n(n-1)) sum_i sum_{j != i} [ s_ij/tau - LSE_{k != i, d_ik >= d_ij} s_ik/tau ].

    s_ij = -||z_i - z_j||_2 on raw features, d_ij = ||y_i - y_j||_1 or label_dist[i, j] of the
    samples; views stacked view-major with labels (distances) repeated.
    """
    n_samples = z.shape[0]
    views = z.shape[1] if z.dim() == 3 else 1
    feats = [z[i, v] if z.dim() == 3 else z[i] for v in range(views) for i in range(n_samples)]
    sample = [i for _ in range(views) for i in range(n_samples)]
    n = len(feats)

    def s(i: int, j: int) -> torch.Tensor:
        return -(feats[i] - feats[j]).pow(2).sum().sqrt() / temperature

    labels = None if y is None else y.to(torch.float64).reshape(n_samples, -1)

    def d(i: int, j: int) -> float:
        a, b = sample[i], sample[j]
        if label_dist is not None:
            return float(label_dist[a, b])
        return float((labels[a] - labels[b]).abs().sum())

    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            denom = [s(i, k) for k in range(n) if k != i and d(i, k) >= d(i, j)]
            total = total + s(i, j) - torch.logsumexp(torch.stack(denom), 0)
    return -total / (n * (n - 1))


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_rnc_continuous_labels_match_loop(temperature: float) -> None:
    z = _raw(8, 3, seed=1)
    y = _raw(8, seed=2, requires_grad=False)
    assert_matches_reference(
        lambda x: rank_n_contrast(x, y, temperature), lambda x: ref_rnc(x, y, temperature), z
    )


def test_rnc_default_temperature_is_2() -> None:
    z, y = _raw(6, 3, seed=3), _raw(6, seed=4, requires_grad=False)
    torch.testing.assert_close(rank_n_contrast(z, y), ref_rnc(z, y, 2.0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("as_float", [False, True])
def test_rnc_integer_labels_with_many_ties_match_loop(as_float: bool) -> None:
    z = _raw(12, 4, seed=5)
    y = _int_labels(12, high=3, seed=6)  # 12 samples over 3 values: every row has large tie groups
    if as_float:
        y = y.to(torch.float64)
    assert_matches_reference(lambda x: rank_n_contrast(x, y, 1.0), lambda x: ref_rnc(x, y, 1.0), z)


def test_rnc_ties_are_in_the_denominator() -> None:
    # With ties, a version that used only strictly-farther k plus j itself differs from the loop.
    z = _raw(6, 2, seed=7)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    got = rank_n_contrast(z, y)

    def strict_ref(zz, yy, tau=2.0):
        n = zz.shape[0]
        total = torch.zeros((), dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                if j == i:
                    continue
                dij = abs(int(yy[i]) - int(yy[j]))
                ks = [k for k in range(n) if k != i and (k == j or abs(int(yy[i]) - int(yy[k])) > dij)]
                den = torch.stack([-(zz[i] - zz[k]).norm() / tau for k in ks])
                total = total - (zz[i] - zz[j]).norm() / tau - torch.logsumexp(den, 0)
        return -total / (n * (n - 1))

    torch.testing.assert_close(got, ref_rnc(z, y), atol=1e-10, rtol=0)
    assert abs(got.item() - strict_ref(z, y).item()) > 1e-3


def test_rnc_vector_labels_match_loop() -> None:
    z = _raw(9, 3, seed=8)
    y = _raw(9, 2, seed=9, requires_grad=False)
    assert_matches_reference(lambda x: rank_n_contrast(x, y), lambda x: ref_rnc(x, y), z)


def test_rnc_integer_vector_labels_with_ties_match_loop() -> None:
    z = _raw(10, 3, seed=10)
    y = _int_labels(10, 3, high=3, seed=11)  # L1 distances collide often
    assert_matches_reference(lambda x: rank_n_contrast(x, y, 0.7), lambda x: ref_rnc(x, y, 0.7), z)


def test_rnc_views_match_loop() -> None:
    z = _raw(5, 2, 3, seed=12)
    y = _raw(5, seed=13, requires_grad=False)
    assert_matches_reference(lambda x: rank_n_contrast(x, y), lambda x: ref_rnc(x, y), z)


def test_rnc_views_with_tied_labels_match_loop() -> None:
    z = _raw(6, 2, 3, seed=14)
    y = torch.tensor([1, 3, 1, 2, 3, 1])
    assert_matches_reference(lambda x: rank_n_contrast(x, y, 1.5), lambda x: ref_rnc(x, y, 1.5), z)


def test_rnc_views_are_view_major() -> None:
    # (N, V, D) must equal the (V*N, D) view-major stack with labels repeated, and differ from
    # a sample-major stack with labels repeated view-major (a mismatched pairing).
    z = _raw(5, 2, 3, seed=15, requires_grad=False)
    y = _raw(5, seed=16, requires_grad=False)
    view_major = z.transpose(0, 1).reshape(10, 3)
    torch.testing.assert_close(
        rank_n_contrast(z, y), rank_n_contrast(view_major, y.repeat(2)), atol=1e-12, rtol=0
    )
    assert abs(rank_n_contrast(z, y).item() - rank_n_contrast(z.reshape(10, 3), y.repeat(2)).item()) > 1e-4


def test_rnc_gradcheck() -> None:
    z = _raw(5, 3, seed=17)
    y = torch.tensor([0.0, 1.0, 1.0, 2.5, -1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rank_n_contrast(x, y, 1.0), (z,))
    zv = _raw(3, 2, 2, seed=18)
    assert torch.autograd.gradcheck(lambda x: rank_n_contrast(x, torch.tensor([0, 1, 1]), 1.0), (zv,))


def test_rnc_two_anchors_is_exactly_zero() -> None:
    # n = 2: the only k != i is j itself, so every term is s_ij - LSE{s_ij} = 0.
    z = torch.tensor([[0.0, 1.0], [3.0, -2.0]], dtype=torch.float64, requires_grad=True)
    loss = rank_n_contrast(z, torch.tensor([0.3, 1.7], dtype=torch.float64))
    assert abs(loss.item()) < 1e-15
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().max().item() < 1e-15


def test_rnc_three_points_hand_value() -> None:
    # 1-D features 0, 1, 3 with labels 0, 1, 3, tau = 2:
    # s_01 = -1, s_02 = -3, s_12 = -2 (symmetric); d equals |difference|.
    #  i=0: j=1 -> -1/2 - LSE(-1/2, -3/2);  j=2 -> 0 (only k=2 is as far)
    #  i=1: j=0 -> -1/2 - LSE(-1/2, -1);    j=2 -> 0
    #  i=2: j=0 -> 0;                       j=1 -> -1 - LSE(-3/2, -1)
    def lse(*v: float) -> float:
        return math.log(sum(math.exp(x) for x in v))

    terms = (-0.5 - lse(-0.5, -1.5)) + (-0.5 - lse(-0.5, -1.0)) + (-1.0 - lse(-1.5, -1.0))
    want = -terms / 6
    z = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    assert abs(rank_n_contrast(z, y).item() - want) < 1e-14


def test_rnc_uses_raw_features() -> None:
    # Not normalised: scaling the features changes the loss.
    z = _raw(6, 3, seed=19, requires_grad=False)
    y = _raw(6, seed=20, requires_grad=False)
    assert abs(rank_n_contrast(z, y).item() - rank_n_contrast(3 * z, y).item()) > 1e-3


def test_rnc_bad_inputs_raise() -> None:
    z = _raw(4, 3, seed=21, requires_grad=False)
    with pytest.raises(InputError):
        rank_n_contrast(z, torch.zeros(5))
    with pytest.raises(InputError):
        rank_n_contrast(z, torch.zeros(4, 2, 1))
    with pytest.raises(InputError):
        rank_n_contrast(z, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(InputError):
        rank_n_contrast(z[:1], torch.zeros(1))
    with pytest.raises(InputError):
        rank_n_contrast(z, torch.tensor([0.0, float("nan"), 1.0, 2.0]))


def test_large_integer_labels_stay_apart() -> None:
    """Labels 2**24 and 2**24 + 1 are equal in float32; the ordering must still see them apart."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 2, generator=g, dtype=torch.float32)
    big = torch.tensor([2**24, 2**24 + 1, 2**24 + 3])
    small = torch.tensor([0, 1, 3])
    torch.testing.assert_close(rank_n_contrast(z, big), rank_n_contrast(z, small), atol=0, rtol=0)


def test_rnc_label_dist_from_labels_equals_y() -> None:
    z = _raw(6, 2, 3, seed=22, requires_grad=False)
    y = _int_labels(6, 2, high=4, seed=23)
    label_dist = torch.cdist(y.double(), y.double(), p=1)
    torch.testing.assert_close(
        rank_n_contrast(z, label_dist=label_dist), rank_n_contrast(z, y), atol=0, rtol=0
    )


@pytest.mark.parametrize("views", [1, 2])
def test_rnc_asymmetric_label_dist_matches_loop(views: int) -> None:
    # Any real matrix orders each row: asymmetric, with ties and negative entries.
    z = _raw(5, views, 3, seed=24) if views > 1 else _raw(5, 3, seed=24)
    label_dist = _int_labels(5, 5, high=3, seed=25) - 1
    assert_matches_reference(
        lambda x: rank_n_contrast(x, temperature=1.0, label_dist=label_dist),
        lambda x: ref_rnc(x, None, 1.0, label_dist=label_dist),
        z,
    )
    zz = _raw(4, 2, seed=26)
    assert torch.autograd.gradcheck(
        lambda x: rank_n_contrast(x, label_dist=label_dist[:4, :4].double()), (zz,)
    )


def test_rnc_label_dist_diagonal_is_ignored() -> None:
    z = _raw(5, 3, seed=27, requires_grad=False)
    label_dist = _raw(5, 5, seed=28, requires_grad=False).abs()
    other = label_dist.clone().fill_diagonal_(-7.0)
    torch.testing.assert_close(
        rank_n_contrast(z, label_dist=other), rank_n_contrast(z, label_dist=label_dist), atol=0, rtol=0
    )


def test_rnc_label_dist_bad_inputs_raise() -> None:
    z = _raw(4, 3, seed=29, requires_grad=False)
    good = torch.zeros(4, 4)
    with pytest.raises(InputError, match="exactly one of 'y'"):
        rank_n_contrast(z)
    with pytest.raises(InputError, match="exactly one of 'y'"):
        rank_n_contrast(z, torch.zeros(4), label_dist=good)
    with pytest.raises(InputError, match=r"'label_dist' must have shape \(4, 4\)"):
        rank_n_contrast(z, label_dist=torch.zeros(4, 5))
    with pytest.raises(InputError, match="'label_dist'"):
        rank_n_contrast(z, label_dist=good.bool())
    bad = good.clone()
    bad[0, 1] = float("inf")
    with pytest.raises(InputError, match="'label_dist' contains 1 NaN/inf"):
        rank_n_contrast(z, label_dist=bad)


def test_rnc_label_dist_diagonal_is_the_distance_between_views_of_one_sample() -> None:
    # With V > 1 views, label_dist[i, i] orders the pair (view 1 of i, view 2 of i): not ignored.
    z = _raw(5, 2, 3, seed=30, requires_grad=False)
    label_dist = _raw(5, 5, seed=31, requires_grad=False).abs()
    far = label_dist.clone().fill_diagonal_(7.0)
    torch.testing.assert_close(rank_n_contrast(z, label_dist=far), ref_rnc(z, None, label_dist=far))
    assert (
        abs(rank_n_contrast(z, label_dist=far).item() - rank_n_contrast(z, label_dist=label_dist).item())
        > 1e-3
    )
