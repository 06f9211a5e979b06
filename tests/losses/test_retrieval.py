"""mnrl (with mined negatives and GISTEmbed masking) and margin_mse against float64 loops."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_matches_reference
from contrastkit import InputError, margin_mse, mnrl


def _raw(*shape: int, seed: int, requires_grad: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return t.requires_grad_() if requires_grad else t


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())


def _negative_list(negatives: torch.Tensor | None) -> list[torch.Tensor]:
    """Mined negatives as a flat list; every anchor sees all of them (order is irrelevant to
    the value, since the positive of anchor i is always column i of the first block)."""
    if negatives is None:
        return []
    if negatives.dim() == 2:
        return [negatives[k] for k in range(negatives.shape[0])]
    return [negatives[k, m] for m in range(negatives.shape[1]) for k in range(negatives.shape[0])]


# ---------------------------------------------------------------- references


def ref_mnrl(anchors, positives, negatives=None, scale=20.0) -> torch.Tensor:
    """mean_i [ LSE_j scale*cos(a_i, c_j) - scale*cos(a_i, p_i) ] over all p and mined n."""
    b = anchors.shape[0]
    negs = _negative_list(negatives)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        cands = [scale * _cos(anchors[i], positives[j]) for j in range(b)]
        cands += [scale * _cos(anchors[i], n) for n in negs]
        total = total + torch.logsumexp(torch.stack(cands), 0) - scale * _cos(anchors[i], positives[i])
    return total / b


def gist_candidates(anchors, positives, negatives, guide, margin, strategy, scale):
    """For each anchor: (kept student logits, positive logit, number of dropped candidates)."""
    g_a, g_p, g_n = guide
    b = anchors.shape[0]
    negs, g_negs = _negative_list(negatives), _negative_list(g_n)
    rows = []
    for i in range(b):
        g_ii = _cos(g_a[i], g_p[i]).item()
        threshold = g_ii - margin if strategy == "absolute" else g_ii - abs(g_ii) * margin
        pairs = []  # (student logit, guide score, is the true positive)
        for j in range(b):  # a-p
            pairs.append((scale * _cos(anchors[i], positives[j]), _cos(g_a[i], g_p[j]).item(), j == i))
        for n, gn in zip(negs, g_negs, strict=True):  # a-n
            pairs.append((scale * _cos(anchors[i], n), _cos(g_a[i], gn).item(), False))
        for j in range(b):  # a-a, self always dropped
            if j != i:
                pairs.append((scale * _cos(anchors[i], anchors[j]), _cos(g_a[i], g_a[j]).item(), False))
        for j in range(b):  # p-p, self always dropped
            if j != i:
                pairs.append((scale * _cos(positives[i], positives[j]), _cos(g_p[i], g_p[j]).item(), False))
        kept = [s for s, g, is_pos in pairs if is_pos or g <= threshold]
        dropped = len(pairs) - len(kept)
        rows.append((kept, scale * _cos(anchors[i], positives[i]), dropped))
    return rows


def ref_gist(anchors, positives, negatives, guide, margin=0.0, strategy="absolute", scale=20.0):
    rows = gist_candidates(anchors, positives, negatives, guide, margin, strategy, scale)
    total = torch.zeros((), dtype=torch.float64)
    for kept, pos, _ in rows:
        total = total + torch.logsumexp(torch.stack(kept), 0) - pos
    return total / len(rows)


def ref_margin_mse(s_pos, s_neg, t_pos, t_neg) -> torch.Tensor:
    terms = []
    for i in range(s_pos.shape[0]):
        if s_neg.dim() == 1:
            terms.append(((s_pos[i] - s_neg[i]) - (t_pos[i] - t_neg[i])) ** 2)
        else:
            for m in range(s_neg.shape[1]):
                terms.append(((s_pos[i] - s_neg[i, m]) - (t_pos[i] - t_neg[i, m])) ** 2)
    return sum(terms) / len(terms)


# ---------------------------------------------------------------- mnrl


@pytest.mark.parametrize("scale", [20.0, 1.0, 50.0])
def test_mnrl_without_negatives_matches_loop(scale: float) -> None:
    a, p = _raw(6, 5, seed=1), _raw(6, 5, seed=2)
    assert_matches_reference(
        lambda x, y: mnrl(x, y, scale=scale), lambda x, y: ref_mnrl(x, y, None, scale), a, p
    )


def test_mnrl_default_scale_is_20() -> None:
    a, p = _raw(5, 4, seed=3), _raw(5, 4, seed=4)
    torch.testing.assert_close(mnrl(a, p), ref_mnrl(a, p, None, 20.0), atol=1e-10, rtol=0)


def test_mnrl_with_2d_negatives_matches_loop() -> None:
    a, p, n = _raw(5, 4, seed=5), _raw(5, 4, seed=6), _raw(5, 4, seed=7)
    assert_matches_reference(
        lambda x, y, z: mnrl(x, y, z, scale=10.0), lambda x, y, z: ref_mnrl(x, y, z, 10.0), a, p, n
    )


@pytest.mark.parametrize("m", [1, 3])
def test_mnrl_with_3d_negatives_matches_loop(m: int) -> None:
    a, p, n = _raw(4, 5, seed=8), _raw(4, 5, seed=9), _raw(4, m, 5, seed=10)
    assert_matches_reference(
        lambda x, y, z: mnrl(x, y, z, scale=15.0), lambda x, y, z: ref_mnrl(x, y, z, 15.0), a, p, n
    )


def test_mnrl_positives_are_the_first_block() -> None:
    # The target of anchor i is column i = p_i. If negatives were interleaved per anchor
    # ([p_1, n_1, p_2, n_2, ...]) the target of anchor 1 would be n_1. Make p_i == a_i and the
    # negatives far away: the loss is then small only if column i is p_i.
    a = torch.eye(4, dtype=torch.float64)
    n = -torch.eye(4, dtype=torch.float64)[:, None, :].repeat(1, 2, 1)
    loss = mnrl(a, a.clone(), n, scale=20.0)
    assert loss.item() < 1e-6
    torch.testing.assert_close(loss, ref_mnrl(a, a, n, 20.0), atol=1e-12, rtol=0)


def test_mnrl_single_negative_slot_equals_2d() -> None:
    a, p, n = _raw(5, 4, seed=11), _raw(5, 4, seed=12), _raw(5, 4, seed=13)
    torch.testing.assert_close(mnrl(a, p, n[:, None, :]), mnrl(a, p, n), atol=1e-13, rtol=0)


def test_mnrl_tensor_scale_gets_the_reference_gradient() -> None:
    a, p, n = _raw(5, 4, seed=14), _raw(5, 4, seed=15), _raw(5, 2, 4, seed=16)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert_matches_reference(
        lambda x, y, z, s: mnrl(x, y, z, scale=s), lambda x, y, z, s: ref_mnrl(x, y, z, s), a, p, n, scale
    )


def test_mnrl_is_cosine_based() -> None:
    a, p, n = _raw(5, 4, seed=17), _raw(5, 4, seed=18), _raw(5, 4, seed=19)
    factors = torch.tensor([0.1, 2.0, 5.0, 1.0, 30.0], dtype=torch.float64)[:, None]
    base = mnrl(a, p, n)
    torch.testing.assert_close(mnrl(a * factors, p * factors.flip(0), n * factors), base, atol=1e-12, rtol=0)


def test_mnrl_gradcheck() -> None:
    a, p, n = _raw(3, 4, seed=20), _raw(3, 4, seed=21), _raw(3, 2, 4, seed=22)
    assert torch.autograd.gradcheck(lambda x, y, z: mnrl(x, y, z, scale=3.0), (a, p, n))


# ---------------------------------------------------------------- mnrl, symmetric


def ref_mnrl_symmetric(anchors, positives, negatives=None, scale=20.0) -> torch.Tensor:
    """mean_i [ LSE( {scale cos(a_i, c_j)}_j u {scale cos(p_i, a_j)}_j ) - scale cos(a_i, p_i) ]:
    the doc->query columns join the query->doc ones in one softmax."""
    b = anchors.shape[0]
    negs = _negative_list(negatives)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        cands = [scale * _cos(anchors[i], positives[j]) for j in range(b)]
        cands += [scale * _cos(anchors[i], n) for n in negs]
        cands += [scale * _cos(positives[i], anchors[j]) for j in range(b)]
        total = total + torch.logsumexp(torch.stack(cands), 0) - scale * _cos(anchors[i], positives[i])
    return total / b


@pytest.mark.parametrize("chunk_size", [0, 2])
@pytest.mark.parametrize("m", [None, 1, 3])
def test_mnrl_symmetric_matches_loop(m: int | None, chunk_size: int) -> None:
    a, p = _raw(5, 4, seed=23), _raw(5, 4, seed=24)
    n = None if m is None else _raw(5, m, 4, seed=25)
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    assert_matches_reference(
        lambda x, y, s: mnrl(x, y, n, scale=s, symmetric=True, chunk_size=chunk_size),
        lambda x, y, s: ref_mnrl_symmetric(x, y, n, s),
        a,
        p,
        scale,
    )


def test_mnrl_symmetric_differs_from_one_direction_and_hand_case() -> None:
    a, p = _raw(4, 3, seed=26), _raw(4, 3, seed=27)
    assert abs(mnrl(a, p, symmetric=True).item() - mnrl(a, p).item()) > 1e-3
    # identical unit rows, orthogonal: every row sees exp(s) twice (the pair in both directions)
    # and 2(B - 1) columns at logit 0 -> log(2 e^s + 2(B - 1)) - s
    e = torch.eye(4, dtype=torch.float64)
    want = torch.log(torch.tensor(2 * torch.e**2 + 6.0, dtype=torch.float64)) - 2.0
    torch.testing.assert_close(mnrl(e, e.clone(), scale=2.0, symmetric=True), want, atol=1e-12, rtol=0)


def test_mnrl_symmetric_gradcheck_and_precisions() -> None:
    a, p, n = _raw(3, 4, seed=28), _raw(3, 4, seed=29), _raw(3, 2, 4, seed=30)
    assert torch.autograd.gradcheck(lambda x, y, z: mnrl(x, y, z, scale=3.0, symmetric=True), (a, p, n))
    want = mnrl(a, p, n, symmetric=True)
    got32 = mnrl(a.float(), p.float(), n.float(), symmetric=True)
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=0)
    bf16 = mnrl(a.bfloat16(), p.bfloat16(), n.bfloat16(), symmetric=True)
    assert torch.isfinite(bf16) and bf16.dtype == torch.float32


def test_mnrl_symmetric_errors() -> None:
    a, p = _raw(4, 3, seed=31, requires_grad=False), _raw(4, 3, seed=32, requires_grad=False)
    with pytest.raises(InputError, match="symmetric"):
        mnrl(a, p, symmetric="yes")
    with pytest.raises(InputError, match="'symmetric' cannot be combined with 'guide'"):
        mnrl(a, p, guide=(a, p, None), symmetric=True)


# ---------------------------------------------------------------- GISTEmbed


def _gist_inputs(b: int, m: int | None, d: int, g_dim: int, seed: int):
    a, p = _raw(b, d, seed=seed), _raw(b, d, seed=seed + 1)
    n = None if m is None else _raw(b, m, d, seed=seed + 2)
    g_a = _raw(b, g_dim, seed=seed + 3, requires_grad=False)
    # Guide positives close to their anchors, so g_ii is high but not 1.
    g_p = g_a + 0.6 * _raw(b, g_dim, seed=seed + 4, requires_grad=False)
    g_n = None if m is None else _raw(b, m, g_dim, seed=seed + 5, requires_grad=False)
    return a, p, n, (g_a, g_p, g_n)


@pytest.mark.parametrize(
    "strategy, margin", [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.0), ("relative", 0.3)]
)
@pytest.mark.parametrize("m", [None, 2])
def test_gist_masking_matches_loop(strategy: str, margin: float, m: int | None) -> None:
    a, p, n, guide = _gist_inputs(6, m, 5, 3, seed=30)
    rows = gist_candidates(a, p, n, guide, margin, strategy, 20.0)
    dropped = [r[2] for r in rows]
    total = [len(r[0]) + r[2] for r in rows]
    # Precondition: the guide drops some candidates but not all (besides the 2(B-1) self pairs
    # that are never candidates at all).
    assert sum(dropped) > 0 and all(d < t - 1 for d, t in zip(dropped, total, strict=True))
    inputs = (a, p) if n is None else (a, p, n)

    def got(*x):
        return mnrl(
            x[0],
            x[1],
            x[2] if n is not None else None,
            scale=20.0,
            guide=guide,
            margin=margin,
            margin_strategy=strategy,
        )

    def want(*x):
        return ref_gist(x[0], x[1], x[2] if n is not None else None, guide, margin, strategy, 20.0)

    assert_matches_reference(got, want, *inputs)


def test_gist_relative_differs_from_absolute_when_it_should() -> None:
    a, p, n, guide = _gist_inputs(6, 2, 5, 3, seed=40)
    absolute = mnrl(a, p, n, guide=guide, margin=0.3, margin_strategy="absolute")
    relative = mnrl(a, p, n, guide=guide, margin=0.3, margin_strategy="relative")
    torch.testing.assert_close(absolute, ref_gist(a, p, n, guide, 0.3, "absolute"), atol=1e-10, rtol=0)
    torch.testing.assert_close(relative, ref_gist(a, p, n, guide, 0.3, "relative"), atol=1e-10, rtol=0)
    assert abs(absolute.item() - relative.item()) > 1e-6


def test_gist_always_drops_self_pairs_even_if_the_guide_keeps_them() -> None:
    # Guide positives identical to guide anchors: g_ii = 1, so with margin 0 nothing satisfies
    # g_ij > g_ii and the guide masks nothing. The a-a and p-p self pairs (cos = 1 = g_ii, not
    # above it) must still be dropped, or each row would hold its own scale*1 self logit.
    a, p, n, (g_a, _, g_n) = _gist_inputs(5, 2, 4, 3, seed=45)
    guide = (g_a, g_a.clone(), g_n)
    rows = gist_candidates(a, p, n, guide, 0.0, "absolute", 20.0)
    assert [r[2] for r in rows] == [0] * 5
    assert_matches_reference(
        lambda x, y, z: mnrl(x, y, z, guide=guide), lambda x, y, z: ref_gist(x, y, z, guide), a, p, n
    )


def test_gist_relative_margin_uses_the_absolute_value_of_a_negative_guide_score() -> None:
    # Rows whose guide positive score g_ii is negative: the relative threshold is
    # g_ii - |g_ii| m (below g_ii), not g_ii - g_ii m (above it).
    a, p, n, (g_a, g_p, g_n) = _gist_inputs(6, 2, 4, 3, seed=47)
    g_p = g_p.clone()
    g_p[::2] = -g_p[::2]  # anchors 0, 2, 4 get g_ii < 0
    guide = (g_a, g_p, g_n)
    margin = 0.5
    g_ii = torch.nn.functional.cosine_similarity(g_a, g_p, dim=1)
    assert (g_ii[::2] < 0).all()
    # Precondition: some candidate of a negative-g_ii row lies between the two thresholds, so
    # the two readings of "relative" mask different sets.
    between = 0
    for i in range(0, 6, 2):
        lo, hi = g_ii[i] - g_ii[i].abs() * margin, g_ii[i] + g_ii[i].abs() * margin
        sims = torch.cat(
            [
                torch.nn.functional.cosine_similarity(g_a[i][None], g_p, dim=1),
                torch.nn.functional.cosine_similarity(g_a[i][None], g_n.reshape(-1, 3), dim=1),
            ]
        )
        between += int(((sims > lo) & (sims <= hi)).sum())
    assert between > 0
    assert_matches_reference(
        lambda x, y, z: mnrl(x, y, z, guide=guide, margin=margin, margin_strategy="relative"),
        lambda x, y, z: ref_gist(x, y, z, guide, margin, "relative"),
        a,
        p,
        n,
    )


def test_gist_never_masks_the_true_positive() -> None:
    # A huge margin drops every candidate the guide can see except the true positive: each
    # row keeps only its positive, so the loss is exactly 0.
    a, p, n, guide = _gist_inputs(5, 2, 4, 3, seed=50)
    loss = mnrl(a, p, n, guide=guide, margin=10.0)
    assert loss.item() == 0.0
    torch.testing.assert_close(loss, ref_gist(a, p, n, guide, 10.0, "absolute"), atol=1e-12, rtol=0)


def test_gist_false_negative_column_gets_exactly_zero_gradient() -> None:
    b, d = 4, 5
    a, p, n = _raw(b, d, seed=60), _raw(b, d, seed=61), _raw(b, d, seed=62)
    eye = torch.eye(8, dtype=torch.float64)
    g_a = eye[:4]  # e_0..e_3
    g_p = eye[:4] + 2 * eye[4:]  # cos(g_a_i, g_p_i) = 1/sqrt(5) ~ 0.447; orthogonal across i
    g_n = eye[4:].clone().flip(0)  # orthogonal to every g_a_i: never masked
    g_n[2] = eye[:4].sum(0)  # cos(g_a_i, g_n_2) = 0.5 > 0.447 for every anchor: false negative
    guide = (g_a, g_p, g_n)
    rows = gist_candidates(a, p, n, guide, 0.0, "absolute", 20.0)
    assert [r[2] for r in rows] == [1, 1, 1, 1]  # exactly the one column, in every row

    loss = mnrl(a, p, n, guide=guide)
    grad_n = torch.autograd.grad(loss, n)[0]
    assert torch.equal(grad_n[2], torch.zeros(d, dtype=torch.float64))
    assert (grad_n[[0, 1, 3]].abs().sum(1) > 1e-8).all()
    torch.testing.assert_close(loss, ref_gist(a, p, n, guide), atol=1e-10, rtol=0)
    # Control: without the guide, that column does get a gradient.
    assert torch.autograd.grad(mnrl(a, p, n), n)[0][2].abs().sum() > 1e-8


def test_gist_gradcheck() -> None:
    a, p, n, guide = _gist_inputs(3, 2, 4, 3, seed=70)
    assert torch.autograd.gradcheck(lambda x, y, z: mnrl(x, y, z, scale=3.0, guide=guide), (a, p, n))


def test_gist_guide_errors() -> None:
    a, p, n, (g_a, g_p, g_n) = _gist_inputs(4, 2, 5, 3, seed=80)
    with pytest.raises(InputError, match="guide"):
        mnrl(a, p, n, guide=(g_a, g_p))
    with pytest.raises(InputError, match="exactly when"):
        mnrl(a, p, None, guide=(g_a, g_p, g_n))
    with pytest.raises(InputError, match="exactly when"):
        mnrl(a, p, n, guide=(g_a, g_p, None))
    with pytest.raises(InputError, match="guide"):
        mnrl(a, p, n, guide=(g_a, g_p, g_n[:, :1]))  # fewer guide negatives than negatives
    with pytest.raises(InputError, match="guide"):
        mnrl(a, p, n, guide=(g_a[:3], g_p, g_n))
    with pytest.raises(InputError, match="margin_strategy"):
        mnrl(a, p, n, guide=(g_a, g_p, g_n), margin_strategy="percent")
    with pytest.raises(InputError, match="margin"):
        mnrl(a, p, n, guide=(g_a, g_p, g_n), margin=-0.1)


# ---------------------------------------------------------------- mnrl bad shapes


@pytest.mark.parametrize(
    "shapes",
    [
        ((4,), (4, 3), None),  # 1-D anchors
        ((4, 3), (5, 3), None),  # row mismatch
        ((4, 3), (4, 2), None),  # dim mismatch
        ((4, 3), (4, 3), (5, 3)),  # negatives rows
        ((4, 3), (4, 3), (4, 2)),  # negatives dim
        ((4, 3), (4, 3), (4, 2, 2)),  # 3-D negatives dim
        ((4, 3), (4, 3), (4, 1, 1, 3)),  # 4-D negatives
        ((4, 3), (4, 3), (3,)),  # 1-D negatives
    ],
)
def test_mnrl_bad_shapes_raise(shapes) -> None:
    tensors = [
        None if s is None else torch.randn(*s, generator=torch.Generator().manual_seed(0)) for s in shapes
    ]
    with pytest.raises(InputError):
        mnrl(*tensors)


# ---------------------------------------------------------------- margin_mse


def test_margin_mse_single_negative_matches_loop() -> None:
    s_pos, s_neg, t_pos, t_neg = (_raw(6, seed=90 + k) for k in range(4))
    assert_matches_reference(margin_mse, ref_margin_mse, s_pos, s_neg, t_pos, t_neg)


def test_margin_mse_several_negatives_matches_loop() -> None:
    s_pos, t_pos = _raw(5, seed=94), _raw(5, seed=95)
    s_neg, t_neg = _raw(5, 3, seed=96), _raw(5, 3, seed=97)
    assert_matches_reference(margin_mse, ref_margin_mse, s_pos, s_neg, t_pos, t_neg)


def test_margin_mse_hand_case() -> None:
    s_pos = torch.tensor([3.0, 1.0], dtype=torch.float64)
    s_neg = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    t_pos = torch.tensor([2.0, 2.0], dtype=torch.float64)
    t_neg = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    # margins: student [[2, 3], [-1, 0]], teacher [[1, 1], [2, 0]] -> errors 1, 2, -3, 0
    assert margin_mse(s_pos, s_neg, t_pos, t_neg).item() == pytest.approx((1 + 4 + 9 + 0) / 4, abs=1e-15)


def test_margin_mse_zero_when_margins_match_and_not_otherwise() -> None:
    t_pos, t_neg = _raw(4, seed=98, requires_grad=False), _raw(4, 2, seed=99, requires_grad=False)
    shift = 3.5  # a common shift of both student scores keeps the margins
    assert margin_mse(t_pos + shift, t_neg + shift, t_pos, t_neg).item() < 1e-28
    assert margin_mse(t_pos + shift, t_neg, t_pos, t_neg).item() == pytest.approx(shift**2, rel=1e-12)


def test_margin_mse_gradcheck() -> None:
    s_pos, t_pos = _raw(3, seed=100), _raw(3, seed=101)
    s_neg, t_neg = _raw(3, 2, seed=102), _raw(3, 2, seed=103)
    assert torch.autograd.gradcheck(margin_mse, (s_pos, s_neg, t_pos, t_neg))


@pytest.mark.parametrize(
    "shapes",
    [
        ((4, 1), (4,), (4, 1), (4,)),  # 2-D s_pos
        ((0,), (0,), (0,), (0,)),  # empty
        ((4,), (5,), (4,), (5,)),  # s_neg rows
        ((4,), (4, 2, 1), (4,), (4, 2, 1)),  # 3-D s_neg
        ((4,), (4, 0), (4,), (4, 0)),  # no negatives
        ((4,), (4,), (3,), (4,)),  # t_pos shape
        ((4,), (4, 2), (4,), (4, 3)),  # t_neg shape
        ((4,), (4, 2), (4,), (4,)),  # t_neg rank
    ],
)
def test_margin_mse_bad_shapes_raise(shapes) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(InputError):
        margin_mse(*(torch.randn(*s, generator=g) for s in shapes))
