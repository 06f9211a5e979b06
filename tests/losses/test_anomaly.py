"""anomaly_window_info_nce (VETime AWCL) against a float64 loop reference of METHODS 3.19."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses.anomaly import anomaly_window_info_nce


def _tokens(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1).requires_grad_()


def _labels(n: int, *runs: tuple[int, int]) -> torch.Tensor:
    labels = torch.zeros(n, dtype=torch.long)
    for s, e in runs:
        labels[s:e] = 1
    return labels


# ---------------------------------------------------------------- loop reference


def ref_awcl(za, zb, labels, tau=0.1, n_bg=10, max_tries=50, symmetric=False, seed=0):
    """Loops over rows, segments, windows and patches; backgrounds drawn as the docstring says."""
    g = torch.Generator().manual_seed(seed)
    if za.dim() == 2:
        za, zb, labels = za[None], zb[None], labels[None]
    n = za.shape[1]
    views = (za, zb)

    def mean(view, row, s, e):
        return sum(views[view][row, t] for t in range(s, e)) / (e - s)

    def term(anchor, positive, negatives):
        logits = [loop_dot(anchor, positive) / tau] + [loop_dot(anchor, x) / tau for x in negatives]
        return loop_lse(logits) - logits[0]

    total, n_segments = 0.0, 0
    for row in range(za.shape[0]):
        lab = [int(v) for v in labels[row]]
        t = 0
        while t < n:
            if not lab[t]:
                t += 1
                continue
            s = t
            while t < n and lab[t]:
                t += 1
            e, length = t, t - s
            n_segments += 1
            orientations = [(0, 1)] + ([(1, 0)] if symmetric else [])
            for pos_view, anc_view in orientations:  # intra: anchor z_b, positive and negatives z_a
                negs = [views[pos_view][row, i] for i in (s - 1, e) if 0 <= i < n and lab[i] == 0]
                for ws, we in ((max(0, s - length), s), (e, min(n, e + length))):
                    if we > ws:
                        negs.append(mean(pos_view, row, ws, we))
                total = total + term(mean(anc_view, row, s, e), mean(pos_view, row, s, e), negs)
            if length > 1:
                ws, we = max(0, s - length), min(n, e + length)
                width = we - ws
                starts = torch.randint(0, n - width + 1, (max_tries,), generator=g).tolist()
                kept = []
                for b in starts:
                    if len(kept) == n_bg:
                        break
                    normal = all(lab[i] == 0 for i in range(b, b + width))
                    if normal and all(b + width <= k or b >= k + width for k in kept):
                        kept.append(b)
                for anc_view, pos_view in orientations:  # inter: anchor z_a, positive z_b
                    negs = [mean(pos_view, row, b, b + width) for b in kept]
                    total = total + term(mean(anc_view, row, ws, we), mean(pos_view, row, ws, we), negs)
    return total / n_segments


def _loss(labels, seed=0, **kw):
    def fn(za, zb):
        return anomaly_window_info_nce(
            za, zb, labels, generator=torch.Generator().manual_seed(seed), **kw
        ).loss

    return fn


def _ref(labels, seed=0, **kw):
    return lambda za, zb: ref_awcl(za, zb, labels, seed=seed, **kw)


# ---------------------------------------------------------------- values and gradients

BATCH_LABELS = torch.stack(
    [
        _labels(40, (0, 3), (10, 11), (12, 16), (38, 40)),  # start, L = 1, one-patch gap, end
        _labels(40, (1, 3), (5, 9), (20, 21)),  # z_a[s-1] at index 0
        _labels(40),  # no segment in this row
    ]
)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_reference_batched(symmetric: bool, tau: float) -> None:
    za, zb = _tokens(3, 40, 6, seed=1), _tokens(3, 40, 6, seed=2)
    kw = {"temperature": tau, "symmetric": symmetric}
    ref_kw = {"tau": tau, "symmetric": symmetric}
    assert_matches_reference(_loss(BATCH_LABELS, **kw), _ref(BATCH_LABELS, **ref_kw), za, zb, rtol=1e-6)


def test_matches_reference_single_series_and_small_budgets() -> None:
    labels = _labels(30, (4, 7), (8, 10), (25, 27)).bool()
    za, zb = _tokens(30, 5, seed=3), _tokens(30, 5, seed=4)
    assert_matches_reference(
        _loss(labels, n_background=2, max_tries=5),
        _ref(labels, n_bg=2, max_tries=5),
        za,
        zb,
        rtol=1e-6,
    )


def test_gradcheck() -> None:
    labels = _labels(12, (0, 2), (5, 6), (8, 10))
    za, zb = _tokens(12, 3, seed=5), _tokens(12, 3, seed=6)
    assert torch.autograd.gradcheck(_loss(labels, n_background=3, symmetric=True), (za, zb))


def test_identical_tokens_give_log_of_the_candidate_count() -> None:
    # every logit equal: a term is log(1 + #negatives)
    za = F.normalize(torch.ones(20, 4, dtype=torch.float64), dim=-1)
    one_middle = anomaly_window_info_nce(za, za, _labels(20, (9, 10)))
    assert one_middle.n_inter == 0 and one_middle.n_segments == 1  # L = 1: intra only
    torch.testing.assert_close(one_middle.loss, torch.tensor(math.log(5.0), dtype=torch.float64))
    at_start = anomaly_window_info_nce(za, za, _labels(20, (0, 1)))  # no z_a[s-1], no left window
    torch.testing.assert_close(at_start.loss, torch.tensor(math.log(3.0), dtype=torch.float64))
    # L = 2 in [9, 11): W = [7, 13) of length 6; all-normal length-6 windows fit only in [0, 7)
    # or [13, 20) -> at most 2 backgrounds (one on each side), found with 50 tries
    two = anomaly_window_info_nce(za, za, _labels(20, (9, 11)), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(two.loss, torch.tensor(math.log(5.0) + math.log(3.0), dtype=torch.float64))


def test_no_room_for_background_windows_leaves_the_inter_term_out() -> None:
    za, zb = _tokens(10, 4, seed=7), _tokens(10, 4, seed=8)
    labels = _labels(10, (3, 6))  # W = [0, 9): no all-normal window of length 9 exists
    got = anomaly_window_info_nce(za, zb, labels, generator=torch.Generator().manual_seed(0))
    assert got.n_segments == 1 and got.n_inter == 0
    torch.testing.assert_close(got.loss, ref_awcl(za, zb, labels, seed=0), rtol=1e-6, atol=0)


def test_l1_segments_draw_nothing_from_the_generator() -> None:
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    anomaly_window_info_nce(
        _tokens(16, 4, seed=9), _tokens(16, 4, seed=10), _labels(16, (3, 4), (9, 10)), generator=g
    )
    assert torch.equal(g.get_state(), before)


def test_same_seed_same_loss_other_seed_other_backgrounds() -> None:
    za, zb = _tokens(60, 4, seed=11), _tokens(60, 4, seed=12)
    labels = _labels(60, (20, 23))
    a = anomaly_window_info_nce(za, zb, labels, n_background=3, generator=torch.Generator().manual_seed(1))
    b = anomaly_window_info_nce(za, zb, labels, n_background=3, generator=torch.Generator().manual_seed(1))
    c = anomaly_window_info_nce(za, zb, labels, n_background=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.loss, b.loss) and not torch.equal(a.loss, c.loss)


def test_no_segments_is_a_flagged_graph_connected_zero() -> None:
    za, zb = _tokens(2, 8, 4, seed=13), _tokens(2, 8, 4, seed=14)
    got = anomaly_window_info_nce(za, zb, torch.zeros(2, 8, dtype=torch.bool))
    assert got.no_segments and got.n_segments == 0 and float(got.loss.detach()) == 0.0
    got.loss.backward()
    assert za.grad is not None and torch.equal(za.grad, torch.zeros_like(za))


# ---------------------------------------------------------------- precision


def test_float32_agrees_with_float64() -> None:
    za, zb = _tokens(3, 40, 6, seed=1), _tokens(3, 40, 6, seed=2)
    want = _loss(BATCH_LABELS, symmetric=True)(za, zb)
    got = _loss(BATCH_LABELS, symmetric=True)(za.detach().float(), zb.detach().float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)


def test_bfloat16_input_is_finite_with_finite_gradients() -> None:
    za = _tokens(3, 40, 6, seed=1, dtype=torch.bfloat16)
    zb = _tokens(3, 40, 6, seed=2, dtype=torch.bfloat16)
    loss = _loss(BATCH_LABELS)(za, zb)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert za.grad.dtype == torch.bfloat16 and bool(torch.isfinite(za.grad).all())


# ---------------------------------------------------------------- errors

Z = torch.randn(2, 8, 4)
LAB = torch.zeros(2, 8, dtype=torch.long)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z_a": torch.randn(8)}, "'z_a' must have shape"),
        ({"z_b": torch.randn(2, 8, 5)}, "'z_a' and 'z_b' must have the same shape"),
        ({"z_a": torch.full((2, 8, 4), float("nan"))}, "'z_a' contains"),
        ({"z_b": torch.randn(0, 4)}, "'z_b' is empty"),
        ({"patch_labels": torch.zeros(2, 8)}, "'patch_labels' must be a bool or integer"),
        ({"patch_labels": torch.zeros(2, 7, dtype=torch.long)}, r"'patch_labels' must have shape \(2, 8\)"),
        ({"patch_labels": torch.full((2, 8), 3)}, "'patch_labels' must hold only 0 and 1"),
        ({"temperature": 0.0}, "'temperature'"),
        ({"n_background": -1}, "'n_background' must be an int >= 0"),
        ({"max_tries": 2.5}, "'max_tries' must be an int >= 0"),
        ({"symmetric": "yes"}, "'symmetric' must be True or False"),
        ({"generator": 0}, "'generator' must be a torch.Generator"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    args = {"z_a": Z, "z_b": Z, "patch_labels": LAB} | kwargs
    with pytest.raises(InputError, match=f"anomaly_window_info_nce: .*{match}"):
        anomaly_window_info_nce(**args)
