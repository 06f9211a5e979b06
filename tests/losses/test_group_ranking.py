"""group_rank_n_contrast and sample_per_group against loop references (METHODS 1.9, 3.13)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses.ranking import group_rank_n_contrast, rank_n_contrast, sample_per_group

# Three parts: 0 and 1 semantically near (0.4), 2 far from both (1.0); many tied distances.
DIST = torch.tensor([[0.0, 0.4, 1.0], [0.4, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


def _raw(*shape: int, seed: int, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.requires_grad_() if requires_grad else t


def _groups(n: int, seed: int, high: int = 3) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


def ref_direction(fa, fb, ga, gb, dist, tau, strict=False):
    """-1/(|A||B|) sum_{i in A} sum_{j in B} [ s_ij/tau - LSE_{k in B: d_ik >= d_ij} s_ik/tau ];
    ``strict`` keeps only j and the k strictly farther (ties dropped), to show ties matter."""

    def s(i: int, j: int) -> torch.Tensor:
        return -(fa[i] - fb[j]).pow(2).sum().sqrt() / tau

    def d(i: int, j: int) -> float:
        return float(dist[int(ga[i]), int(gb[j])])

    total = torch.zeros((), dtype=torch.float64)
    for i in range(fa.shape[0]):
        for j in range(fb.shape[0]):
            if strict:
                ks = [k for k in range(fb.shape[0]) if k == j or d(i, k) > d(i, j)]
            else:
                ks = [k for k in range(fb.shape[0]) if d(i, k) >= d(i, j)]
            total = total + s(i, j) - loop_lse([s(i, k) for k in ks])
    return -total / (fa.shape[0] * fb.shape[0])


def ref_group_rnc(fx, fy, gx, gy, dist, tau=2.0, strict=False):
    """L = (L_XY + L_YX) / 2 over cross-shape pairs only, every point an anchor."""
    return (
        ref_direction(fx, fy, gx, gy, dist, tau, strict) + ref_direction(fy, fx, gy, gx, dist, tau, strict)
    ) / 2


@pytest.mark.parametrize("tau", [2.0, 0.5])
def test_matches_loop_reference_values_and_gradients(tau: float) -> None:
    fx, fy = _raw(7, 3, seed=1), _raw(5, 3, seed=2)
    gx, gy = _groups(7, seed=3), _groups(5, seed=4)
    assert_matches_reference(
        lambda a, b: group_rank_n_contrast(a, b, gx, gy, DIST, tau, anchors_per_group=None),
        lambda a, b: ref_group_rnc(a, b, gx, gy, DIST, tau),
        fx,
        fy,
    )


def test_default_temperature_is_2_and_default_keeps_small_groups_whole() -> None:
    fx, fy = _raw(6, 2, seed=5), _raw(6, 2, seed=6)
    gx, gy = _groups(6, seed=7), _groups(6, seed=8)  # every group < 64 points: no sampling
    torch.testing.assert_close(
        group_rank_n_contrast(fx, fy, gx, gy, DIST), ref_group_rnc(fx, fy, gx, gy, DIST), atol=1e-12, rtol=0
    )


def test_gradcheck() -> None:
    fx, fy = _raw(4, 2, seed=9), _raw(3, 2, seed=10)
    gx, gy = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 0, 0])
    assert torch.autograd.gradcheck(
        lambda a, b: group_rank_n_contrast(a, b, gx, gy, DIST, 1.0, anchors_per_group=None), (fx, fy)
    )


def test_identical_features_hand_value() -> None:
    # All s = 0: the term of (i, j) is -log #{k : d_ik >= d_ij}. x groups [0, 1], y groups [0, 1, 1]
    # with Dist [[0, 1], [1, 0]]: x->y sums -(3 log 3 + 2 log 2), y->x sums -3 log 2, over 6 pairs each.
    want = (3 * math.log(3) + 5 * math.log(2)) / 12
    dist = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    got = group_rank_n_contrast(
        torch.ones(2, 3), torch.ones(3, 3), torch.tensor([0, 1]), torch.tensor([0, 1, 1]), dist
    )
    assert abs(got.item() - want) < 1e-6


def test_ties_are_in_the_denominator() -> None:
    fx, fy = _raw(6, 2, seed=11, requires_grad=False), _raw(6, 2, seed=12, requires_grad=False)
    gx, gy = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    got = group_rank_n_contrast(fx, fy, gx, gy, DIST, anchors_per_group=None)
    torch.testing.assert_close(got, ref_group_rnc(fx, fy, gx, gy, DIST), atol=1e-12, rtol=0)
    assert abs(got.item() - ref_group_rnc(fx, fy, gx, gy, DIST, strict=True).item()) > 1e-2


def test_only_cross_shape_pairs_are_ranked() -> None:
    # Not RnC over the union of both shapes (which would also rank pairs within a shape) ...
    fx, fy = _raw(5, 2, seed=13, requires_grad=False), _raw(4, 2, seed=14, requires_grad=False)
    gx, gy = _groups(5, seed=15), _groups(4, seed=16)
    union = torch.cat([gx, gy])
    within_too = rank_n_contrast(torch.cat([fx, fy]), label_dist=DIST[union[:, None], union[None, :]])
    got = group_rank_n_contrast(fx, fy, gx, gy, DIST, anchors_per_group=None)
    assert abs(got.item() - within_too.item()) > 1e-3
    # ... and symmetric in the two shapes; moving x's points relative to each other while keeping
    # every cross distance (a reflection of x through y's line) leaves it unchanged.
    swapped = group_rank_n_contrast(fy, fx, gy, gx, DIST, anchors_per_group=None)
    torch.testing.assert_close(got, swapped, atol=1e-12, rtol=0)
    line_y = torch.cat([torch.zeros(4, 1, dtype=torch.float64), _raw(4, 1, seed=17, requires_grad=False)], 1)
    mirrored = fx * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        group_rank_n_contrast(mirrored, line_y, gx, gy, DIST, anchors_per_group=None),
        group_rank_n_contrast(fx, line_y, gx, gy, DIST, anchors_per_group=None),
        atol=1e-12,
        rtol=0,
    )


def test_sampled_anchors_equal_the_loss_on_the_drawn_subsets() -> None:
    fx, fy = _raw(30, 3, seed=18, requires_grad=False), _raw(24, 3, seed=19, requires_grad=False)
    gx, gy = _groups(30, seed=20), _groups(24, seed=21)
    got = group_rank_n_contrast(
        fx, fy, gx, gy, DIST, anchors_per_group=4, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    kx, ky = sample_per_group(gx, 4, g), sample_per_group(gy, 4, g)  # x drawn first, then y
    want = ref_group_rnc(fx[kx], fy[ky], gx[kx], gy[ky], DIST)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    again = group_rank_n_contrast(
        fx, fy, gx, gy, DIST, anchors_per_group=4, generator=torch.Generator().manual_seed(5)
    )
    other = group_rank_n_contrast(
        fx, fy, gx, gy, DIST, anchors_per_group=4, generator=torch.Generator().manual_seed(6)
    )
    assert got.item() == again.item() and got.item() != other.item()


def test_sample_per_group_keeps_at_most_k_distinct_indices_per_group() -> None:
    groups = torch.tensor([2, 0, 2, 2, 1, 2, 0, 2, 5, 2])
    for seed in range(5):
        kept = sample_per_group(groups, 3, torch.Generator().manual_seed(seed))
        assert torch.equal(kept, kept.unique())  # sorted, no repeats
        counts = torch.bincount(groups[kept], minlength=6)
        assert counts.tolist() == [2, 1, 3, 0, 0, 1]
    draws = {tuple(sample_per_group(groups, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 1  # group 2 (6 points) is subsampled at random
    assert torch.equal(sample_per_group(groups, None), torch.arange(10))
    assert torch.equal(sample_per_group(groups, 6), torch.arange(10))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "64"])
def test_bad_anchors_per_group_raises(bad) -> None:
    f, g = _raw(4, 2, seed=22, requires_grad=False), _groups(4, seed=23)
    with pytest.raises(InputError, match="'anchors_per_group' must be an int >= 1 or None"):
        group_rank_n_contrast(f, f, g, g, DIST, anchors_per_group=bad)
    with pytest.raises(InputError, match="'per_group' must be an int >= 1 or None"):
        sample_per_group(g, bad)


def test_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    fx, fy = _raw(40, 8, seed=24, requires_grad=False), _raw(36, 8, seed=25, requires_grad=False)
    gx, gy = _groups(40, seed=26), _groups(36, seed=27)
    want = group_rank_n_contrast(fx, fy, gx, gy, DIST)
    got = group_rank_n_contrast(fx.float(), fy.float(), gx, gy, DIST.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
    half = fx.bfloat16().requires_grad_()
    loss = group_rank_n_contrast(half, fy.bfloat16(), gx, gy, DIST)
    (grad,) = torch.autograd.grad(loss, half)
    assert torch.isfinite(loss) and grad.dtype == torch.bfloat16 and bool(torch.isfinite(grad).all())


def _bad_calls():
    grnc = group_rank_n_contrast
    f4, f3 = torch.randn(4, 2), torch.randn(3, 2)
    g4, g3 = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2])
    asym = DIST.clone()
    asym[0, 1] = 0.5
    diag = DIST.clone()
    diag[2, 2] = 0.1
    nan_dist = DIST.clone()
    nan_dist[0, 2] = nan_dist[2, 0] = float("nan")
    nan_feat = f4.clone()
    nan_feat[1, 0] = float("nan")
    return [
        (
            lambda: group_rank_n_contrast(f4, f3, torch.tensor([0, 1, 3, 0]), g3, DIST),
            "'grp_x' must hold ids in \\[0, 3\\)",
        ),
        (lambda: grnc(f4, f3, g4, torch.tensor([0, -1, 2]), DIST), "'grp_y' must hold ids"),
        (
            lambda: group_rank_n_contrast(f4, f3, g4, g3, DIST[:, :2]),
            "'group_dist' must be a non-empty square",
        ),
        (lambda: grnc(f4, f3, g4, g3, DIST[0]), "'group_dist' must be a non-empty square"),
        (lambda: grnc(f4, f3, g4, g3, asym), "'group_dist' must be symmetric"),
        (lambda: grnc(f4, f3, g4, g3, -DIST), "'group_dist' must be >= 0"),
        (lambda: grnc(f4, f3, g4, g3, diag), "'group_dist' must have a zero diagonal"),
        (lambda: grnc(f4, f3, g4, g3, nan_dist), "'group_dist' contains 2 NaN/inf"),
        (lambda: grnc(f4, f3, g4, g3, DIST.bool()), "'group_dist' must hold real numbers"),
        (
            lambda: group_rank_n_contrast(f4, torch.randn(3, 5), g4, g3, DIST),
            "'feat_y' must have embedding size 2",
        ),
        (lambda: grnc(f4[:, 0], f3, g4, g3, DIST), "'feat_x' must have shape \\(Nx, D\\)"),
        (lambda: grnc(f4, f3[:0], g4, g3[:0], DIST), "'feat_y' is empty"),
        (lambda: grnc(nan_feat, f3, g4, g3, DIST), "'feat_x' contains 1 NaN/inf"),
        (lambda: grnc(f4, f3[:1], g4, g3[:1], DIST), "'feat_y' needs at least 2 points"),
        (lambda: grnc(f4, f3, g3, g3, DIST), "'grp_x' must have shape \\(4,\\)"),
        (lambda: grnc(f4, f3, g4.float(), g3, DIST), "'grp_x' must be an integer tensor"),
        (
            lambda: grnc(f4, f3, g4, g3 * 0, DIST, 2.0, 1),
            "'feat_y' needs at least 2 points to rank \\(after drawing",
        ),
        (
            lambda: group_rank_n_contrast(f4, f3, g4, g3, DIST, 0.0),
            "'temperature' must be a finite float > 0",
        ),
        (lambda: grnc(f4, f3, g4, g3, DIST.to("meta")), "one device.*'group_dist' on meta"),
        (lambda: sample_per_group(torch.zeros(2, 2, dtype=torch.long), 3), "'groups' must have shape"),
        (
            lambda: grnc(f4, f3, g4, g3, DIST, generator=3),
            "group_rank_n_contrast: argument 'generator' must be",
        ),
        (lambda: sample_per_group(g4, 2, "seed"), "sample_per_group: argument 'generator' must be"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_inputs_raise_input_error_naming_the_argument(index: int) -> None:
    call, message = _bad_calls()[index]
    with pytest.raises(InputError, match=message):
        call()
