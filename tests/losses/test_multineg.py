"""multi_negative_info_nce and split_embedding_similarity against float64 loop references (METHODS 3.7)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.infonce import info_nce
from contrastkit.losses.multineg import multi_negative_info_nce, split_embedding_similarity


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def _inputs(b: int = 4, k: int = 5, d: int = 6, seed: int = 0):
    return _rand(b, d, seed=seed), _rand(b, d, seed=seed + 1), _rand(b, k, d, seed=seed + 2)


# ---------------------------------------------------------------- loop references


def ref_dot(x: torch.Tensor, y: torch.Tensor, blank: bool = False) -> torch.Tensor:
    return loop_dot(x, y)


def ref_split(x: torch.Tensor, y: torch.Tensor, blank: bool) -> torch.Tensor:
    """1/2(1+beta)<x0,y0>/(|x0||y0|) + 1/2(1-beta)<x1,y1>/(|x1||y1|), element by element."""
    half = x.shape[0] // 2
    beta = 1.0 if blank else 0.0
    total = 0.0
    for part, weight in ((slice(0, half), 0.5 * (1 + beta)), (slice(half, 2 * half), 0.5 * (1 - beta))):
        xs, ys = x[part], y[part]
        norm_x = torch.sqrt(sum(xs[i] ** 2 for i in range(half)))
        norm_y = torch.sqrt(sum(ys[i] ** 2 for i in range(half)))
        total = total + weight * sum(xs[i] * ys[i] for i in range(half)) / (norm_x * norm_y)
    return total


def ref_loss(a, p, n, tau, sim=ref_dot, blank=None, mask=None, reduction="mean"):
    """l_i = -log(e^{s(a,p)/tau} / (e^{s(a,p)/tau} + sum_k e^{s(a,n_k)/tau})), loops over i and k."""
    per_anchor: list[torch.Tensor | None] = []
    for i in range(a.shape[0]):
        negs = n[i] if n.dim() == 3 else n
        flags = [False] * (1 + negs.shape[0]) if blank is None else [bool(f) for f in blank[i]]
        pos = sim(a[i], p[i], flags[0]) / tau
        terms = [pos]
        for k in range(negs.shape[0]):
            if mask is None or bool(mask[i, k]):
                terms.append(sim(a[i], negs[k], flags[k + 1]) / tau)
        per_anchor.append(loop_lse(terms) - pos if len(terms) > 1 else None)
    return loop_reduce(per_anchor, reduction)


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("tau", [0.07, 0.1, 0.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_loop_reference(tau: float, reduction: str) -> None:
    a, p, n = _inputs()

    def got(a, p, n):
        out = multi_negative_info_nce(a, p, n, tau, reduction=reduction)
        return out if reduction != "none" else out.sum()

    def want(a, p, n):
        out = ref_loss(a, p, n, tau, reduction=reduction)
        return out if reduction != "none" else out.sum()

    assert_matches_reference(got, want, a, p, n, atol=0, rtol=1e-6)
    if reduction == "none":
        torch.testing.assert_close(
            multi_negative_info_nce(a, p, n, tau, reduction="none"),
            ref_loss(a, p, n, tau, reduction="none"),
            atol=0,
            rtol=1e-6,
        )


def test_shared_negatives_equal_expanded_ones() -> None:
    a, p, _ = _inputs()
    shared = _rand(7, 6, seed=9)
    assert_matches_reference(
        lambda a, p, n: multi_negative_info_nce(a, p, n),
        lambda a, p, n: ref_loss(a, p, n, 0.1),
        a,
        p,
        shared,
        atol=0,
        rtol=1e-6,
    )
    expanded = shared.detach().expand(4, -1, -1)
    torch.testing.assert_close(
        multi_negative_info_nce(a, p, shared), multi_negative_info_nce(a, p, expanded), atol=1e-12, rtol=0
    )


def test_gradcheck() -> None:
    a, p, n = _inputs(b=3, k=4, d=4, seed=3)
    assert torch.autograd.gradcheck(lambda a, p, n: multi_negative_info_nce(a, p, n, 0.3), (a, p, n))
    blank = torch.tensor([[True], [False], [False]])
    sim = functools.partial(split_embedding_similarity, blank=blank)
    assert torch.autograd.gradcheck(
        lambda a, p, n: multi_negative_info_nce(a, p, n, 0.3, similarity=sim), (a, p, n)
    )


def test_equals_info_nce_with_per_query_negatives_only() -> None:
    # Dot-product s: the loss is info_nce with the positives as keys, the other keys ignored and
    # the K negatives as per-query extra negatives.
    a, p, n = _inputs(b=5, k=6, d=8, seed=4)
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    want = info_nce(a, p, 1 / 0.1, extra_negatives=n, ignore_mask=off_diagonal)
    torch.testing.assert_close(multi_negative_info_nce(a, p, n, 0.1), want, atol=1e-12, rtol=0)
    # ... and differs from plain info_nce, whose in-batch keys are negatives too
    plain = info_nce(a, p, 1 / 0.1, extra_negatives=n)
    assert abs(plain.item() - want.item()) > 1e-3


def test_hand_computed_equal_scores_give_log_of_candidates() -> None:
    a = F.normalize(torch.ones(3, 4, dtype=torch.float64), dim=1)
    loss = multi_negative_info_nce(a, a, a[:, None, :].expand(3, 9, 4), 0.1)
    assert abs(loss.item() - math.log(10)) < 1e-12


def test_custom_similarity_matches_loop() -> None:
    a, p, n = _inputs(b=3, k=4, d=4, seed=5)

    def negative_sq_distance(x, c):  # (B, D), (B, C, D) -> (B, C)
        return -((x[:, None, :] - c) ** 2).sum(-1)

    def ref_distance(x, y, blank=False):
        return -sum((x[i] - y[i]) ** 2 for i in range(x.shape[0]))

    assert_matches_reference(
        lambda a, p, n: multi_negative_info_nce(a, p, n, 0.5, similarity=negative_sq_distance),
        lambda a, p, n: ref_loss(a, p, n, 0.5, sim=ref_distance),
        a,
        p,
        n,
        atol=0,
        rtol=1e-6,
    )


def test_negative_mask_variable_count() -> None:
    a, p, n = _inputs(b=4, k=5, seed=6)
    mask = torch.tensor(
        [[True] * 5, [True, False, True, False, False], [False] * 5, [False, False, False, False, True]]
    )
    assert_matches_reference(
        lambda a, p, n: multi_negative_info_nce(a, p, n, negative_mask=mask),
        lambda a, p, n: ref_loss(a, p, n, 0.1, mask=mask),
        a,
        p,
        n,
        atol=0,
        rtol=1e-6,
    )
    per_anchor = multi_negative_info_nce(a, p, n, negative_mask=mask, reduction="none")
    assert torch.isnan(per_anchor[2]) and torch.isfinite(per_anchor[[0, 1, 3]]).all()
    # a masked negative does not matter, whatever its value
    moved = n.detach().clone()
    moved[1, 1] += 100.0
    torch.testing.assert_close(
        multi_negative_info_nce(a, p, moved, negative_mask=mask),
        multi_negative_info_nce(a, p, n, negative_mask=mask),
    )


def test_all_negatives_masked_raises() -> None:
    a, p, n = _inputs()
    with pytest.raises(NoPositivePairsError, match="multi_negative_info_nce"):
        multi_negative_info_nce(a, p, n, negative_mask=torch.zeros(4, 5, dtype=torch.bool))


# ---------------------------------------------------------------- split similarity


def test_split_similarity_matches_loop_for_blank_and_text_pairs() -> None:
    a, _, c = _inputs(b=3, k=4, d=6, seed=7)
    blank = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    got = split_embedding_similarity(a, c, blank)
    for i in range(3):
        for j in range(4):
            want = ref_split(a[i], c[i, j], bool(blank[i, j]))
            torch.testing.assert_close(got[i, j], want, atol=0, rtol=1e-6)
    # blank pairs: the background half only; text pairs: the mean of both half cosines
    cos0 = F.cosine_similarity(a[:, None, :3], c[..., :3], dim=-1)
    cos1 = F.cosine_similarity(a[:, None, 3:], c[..., 3:], dim=-1)
    torch.testing.assert_close(got[2], cos0[2])
    torch.testing.assert_close(got[1], 0.5 * (cos0[1] + cos1[1]))


def test_split_similarity_pairwise_and_broadcast_flags() -> None:
    a, p, c = _inputs(b=3, k=4, d=6, seed=8)
    pairwise = split_embedding_similarity(a, p, torch.tensor([True, False, True]))
    for i in range(3):
        torch.testing.assert_close(pairwise[i], ref_split(a[i], p[i], i != 1), atol=0, rtol=1e-6)
    per_anchor = torch.tensor([[True], [False], [False]])
    torch.testing.assert_close(
        split_embedding_similarity(a, c, per_anchor),
        split_embedding_similarity(a, c, per_anchor.expand(3, 4)),
    )
    torch.testing.assert_close(
        split_embedding_similarity(a, c, False), split_embedding_similarity(a, c, torch.zeros(3, 4).bool())
    )


def test_loss_with_split_similarity_matches_loop() -> None:
    a, p, n = _inputs(b=3, k=4, d=6, seed=10)
    blank = torch.tensor([[True] * 5, [False, True, False, False, True], [False] * 5])
    sim = functools.partial(split_embedding_similarity, blank=blank)
    assert_matches_reference(
        lambda a, p, n: multi_negative_info_nce(a, p, n, 0.1, similarity=sim),
        lambda a, p, n: ref_loss(a, p, n, 0.1, sim=ref_split, blank=blank),
        a,
        p,
        n,
        atol=0,
        rtol=1e-6,
    )


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("split", [False, True])
def test_float32_agrees_with_float64(split: bool) -> None:
    a, p, n = (t.detach() for t in _inputs(b=6, k=16, d=12, seed=11))
    blank = torch.rand(6, 17, generator=torch.Generator().manual_seed(0)) < 0.3
    sim = functools.partial(split_embedding_similarity, blank=blank) if split else None
    want = multi_negative_info_nce(a, p, n, similarity=sim)
    got = multi_negative_info_nce(a.float(), p.float(), n.float(), similarity=sim)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=0, rtol=1e-4)


@pytest.mark.parametrize("split", [False, True])
def test_bfloat16_is_finite_with_gradients(split: bool) -> None:
    a, p, n = (F.normalize(t.detach(), dim=-1).bfloat16().requires_grad_() for t in _inputs(seed=12))
    sim = functools.partial(split_embedding_similarity, blank=torch.tensor(True)) if split else None
    loss = multi_negative_info_nce(a, p, n, similarity=sim)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(t.grad.float()).all() for t in (a, p, n))


# ---------------------------------------------------------------- errors


def test_input_errors() -> None:
    a, p, n = (t.detach() for t in _inputs())
    cases = [
        (dict(a=a[0]), "'a' must have shape"),
        (dict(p=p[:3]), "'p' must have 4 rows"),
        (dict(negatives=n[:3]), "per-anchor 'negatives'"),
        (dict(negatives=n[..., :5]), "'negatives' must have embedding size 6"),
        (dict(negatives=n[:, :0]), "'negatives' is empty"),
        (dict(a=a.new_zeros(0, 6)), "'a' is empty"),
        (dict(p=torch.where(p > 0, float("nan"), p)), "NaN/inf"),
        (dict(temperature=0.0), "'temperature'"),
        (dict(reduction="avg"), "'reduction'"),
        (dict(similarity="dot"), "'similarity' must be a callable"),
        (dict(similarity=lambda x, c: c.sum(-1)[:, :2]), "must return"),
        (dict(similarity=lambda x, c: c.sum(-1) / 0), "NaN/inf scores"),
        (dict(negative_mask=torch.ones(4, 5)), "'negative_mask' must be a bool"),
        (dict(negative_mask=torch.ones(4, 4, dtype=torch.bool)), "'negative_mask' must have shape"),
    ]
    for override, message in cases:
        kwargs = dict(a=a, p=p, negatives=n) | override
        with pytest.raises(InputError, match=message) as info:
            multi_negative_info_nce(**kwargs)
        assert "multi_negative_info_nce" in str(info.value)


def test_split_similarity_errors() -> None:
    a, _, c = (t.detach() for t in _inputs(d=6))
    with pytest.raises(InputError, match="must be even"):
        split_embedding_similarity(a[:, :5], c[..., :5], True)
    with pytest.raises(InputError, match="'blank' must be a bool"):
        split_embedding_similarity(a, c, torch.ones(4, 5))
    with pytest.raises(InputError, match="must broadcast"):
        split_embedding_similarity(a, c, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="'c' must have 4 rows"):
        split_embedding_similarity(a, c[:2], True)
    zero_half = a.clone()
    zero_half[1, 3:] = 0
    with pytest.raises(InputError, match="foreground half"):
        split_embedding_similarity(zero_half, c, True)
