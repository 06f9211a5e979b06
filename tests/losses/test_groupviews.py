"""C3 group views: the view sampler on hand-checked cases, group_view_nt_xent and the Mixed loss
against float64 loop references of METHODS 3.10 / 1.4."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses.groupviews import group_view_nt_xent, mixed_recommendation_loss, sample_group_views

# ---------------------------------------------------------------- the view sampler


def _kept(view: torch.Tensor) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in view]


def test_small_groups_keep_their_full_list_in_both_views() -> None:
    members = torch.tensor([[3, 4, -1, -1, -1], [5, 6, 7, 8, 9], [1, -1, -1, -1, -1]])
    first, second = sample_group_views(members, 0.2, 5, torch.Generator().manual_seed(0))
    assert torch.equal(first, members) and torch.equal(second, members)


@pytest.mark.parametrize(
    "size, keep, threshold, expected",
    [(10, 0.2, 5, 2), (6, 0.2, 5, 1), (8, 0.2, 5, 1), (5, 0.2, 5, 5), (8, 0.5, 5, 4), (6, 0.1, 5, 1),
     (3, 0.5, 0, 1), (4, 1.0, 2, 4), (20, 0.25, 5, 5)],
)  # fmt: skip
def test_view_sizes(size: int, keep: float, threshold: int, expected: int) -> None:
    # floor(keep * n) for n > threshold (at least 1: keep 0.1 of 6 keeps 1), n otherwise
    members = torch.full((3, 12 if size < 12 else size), -1)
    members[:, :size] = torch.arange(100, 100 + size)
    for view in sample_group_views(members, keep, threshold, torch.Generator().manual_seed(size)):
        kept = _kept(view)
        assert view.shape == (3, expected)
        for row in kept:
            assert len(row) == expected
            assert len(set(row)) == expected  # without replacement
            assert set(row) <= set(range(100, 100 + size))
            assert row == sorted(row)  # members keep their order


def test_mixed_sizes_pad_with_minus_one_to_the_largest_kept_count() -> None:
    members = torch.full((3, 10), -1)
    members[0, :10] = torch.arange(10)  # 2 kept
    members[1, :3] = torch.tensor([20, 21, 22])  # small: 3 kept
    members[2, :7] = torch.arange(30, 37)  # 1 kept
    first, _ = sample_group_views(members, 0.2, 5, torch.Generator().manual_seed(3))
    assert first.shape == (3, 3)
    assert (first >= 0).sum(1).tolist() == [2, 3, 1]
    assert first[1].tolist() == [20, 21, 22]
    assert first[0, 2] == -1 and first[2, 1:].tolist() == [-1, -1]


def test_views_are_deterministic_under_a_generator() -> None:
    members = torch.arange(40).view(4, 10)
    a = sample_group_views(members, 0.3, 5, torch.Generator().manual_seed(7))
    b = sample_group_views(members, 0.3, 5, torch.Generator().manual_seed(7))
    c = sample_group_views(members, 0.3, 5, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_the_two_views_are_independent_uniform_subsets() -> None:
    # 4000 copies of one group of 10, keep 2: each member is kept with probability 0.2 in each
    # view, the two views' indicators are uncorrelated, and they coincide with probability
    # 1 / C(10, 2) = 1/45.
    rows = 4000
    members = torch.arange(10).repeat(rows, 1)
    first, second = sample_group_views(members, 0.2, 5, torch.Generator().manual_seed(11))
    one = torch.zeros(rows, 10).scatter_(1, first, 1.0)
    two = torch.zeros(rows, 10).scatter_(1, second, 1.0)
    assert ((one.mean(0) - 0.2).abs() < 0.03).all() and ((two.mean(0) - 0.2).abs() < 0.03).all()
    covariance = (one * two).mean(0) - one.mean(0) * two.mean(0)
    assert (covariance.abs() < 0.015).all()
    same = (first == second).all(1).double().mean().item()
    assert abs(same - 1 / 45) < 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"members": torch.tensor([[1.0, 2.0]])}, "integer"),
        ({"members": torch.tensor([1, 2])}, r"shape \(B, M\)"),
        ({"members": torch.zeros(0, 3, dtype=torch.long)}, r"shape \(B, M\)"),
        ({"members": torch.tensor([[1, -2]])}, "below -1"),
        ({"members": torch.tensor([[1, 2], [-1, -1]])}, "without members"),
        ({"members": torch.tensor([[1, -1, 2]])}, "padding"),
        ({"keep": 0.0}, "keep"),
        ({"keep": 1.5}, "keep"),
        ({"size_threshold": -1}, "size_threshold"),
        ({"size_threshold": 2.5}, "size_threshold"),
        ({"size_threshold": True}, "size_threshold"),
        ({"generator": 3}, "generator"),
    ],
)
def test_sampler_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"members": torch.tensor([[1, 2, 3], [4, 5, -1]]), "keep": 0.2, "size_threshold": 5}
    args.update(kwargs)
    with pytest.raises(InputError, match=f"sample_group_views.*{match}"):
        sample_group_views(**args)


# ---------------------------------------------------------------- group_view_nt_xent

MEMBERS = torch.tensor(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # n = 10: 2 kept per view
        [2, 5, 7, -1, -1, -1, -1, -1, -1, -1],  # small: full list twice
        [9, 8, 7, 6, 5, 4, 3, -1, -1, -1],  # n = 7: 1 kept
        [1, 3, 5, 7, 9, 0, 2, 4, -1, -1],  # n = 8: 1 kept
        [4, 6, -1, -1, -1, -1, -1, -1, -1, -1],
    ]
)
ITEMS = torch.tensor([0, 2, 1, 2, 3])
OFFSET = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)


def _tables(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    users = torch.randn(10, 4, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    items = torch.randn(4, 4, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return users, items


def _mean_pool_encoder(users: torch.Tensor, items: torch.Tensor):
    """Masked mean of [member rows (padding id -1 -> a zero row); item row] + OFFSET: the
    vectorised encoder (the offset, like a LayerNorm bias, makes unmasked zero rows count)."""

    def encode(ids: torch.Tensor, mask: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        rows = users[ids.clamp(min=0)] * (ids >= 0)[..., None].to(users.dtype)
        tokens = torch.cat([rows, items[item][:, None]], dim=1) + OFFSET.to(users.dtype)
        weights = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1).to(users.dtype)
        return (tokens * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)

    return encode


def _loss(users, items, *, seed=5, faithful=False, temperature=1.0, keep=0.2, members=MEMBERS):
    encode = _mean_pool_encoder(users, items)
    g = torch.Generator().manual_seed(seed)
    return group_view_nt_xent(
        encode, members, ITEMS[: members.shape[0]], keep, 5, temperature, g, faithful_mask=faithful
    )


def ref_group_view_nt_xent(
    users, items, *, seed=5, faithful=False, temperature=1.0, keep=0.2, members=MEMBERS
):
    """Loops: each view's embedding is (sum of kept member rows + item row) / (slots + 1) +
    OFFSET, the slots being the kept members, or the group's n original slots (zero rows for
    the dropped ones) in the release's faithful mask; then NT-Xent over the 2B unit views."""
    views = sample_group_views(members, keep, 5, torch.Generator().manual_seed(seed))
    z = []
    for view in views:
        for b in range(members.shape[0]):
            kept = [int(i) for i in view[b] if i >= 0]
            n = sum(1 for i in members[b] if i >= 0)
            slots = n if faithful else len(kept)
            total = items[int(ITEMS[b])]
            for u in kept:
                total = total + users[u]
            z.append(total / (slots + 1) + OFFSET.to(users.dtype))
    z = [v / torch.sqrt(loop_dot(v, v)) for v in z]
    n_views, half = len(z), len(z) // 2
    losses = []
    for a in range(n_views):
        logits = [loop_dot(z[a], z[c]) / temperature for c in range(n_views) if c != a]
        positive = loop_dot(z[a], z[(a + half) % n_views]) / temperature
        losses.append(loop_lse(logits) - positive)
    return sum(losses) / n_views


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_group_view_nt_xent_matches_loop(faithful: bool, temperature: float) -> None:
    users, items = _tables()
    assert_matches_reference(
        lambda u, i: _loss(u, i, faithful=faithful, temperature=temperature),
        lambda u, i: ref_group_view_nt_xent(u, i, faithful=faithful, temperature=temperature),
        users,
        items,
    )


def test_faithful_mask_differs_only_for_subsampled_groups() -> None:
    users, items = _tables()
    assert abs(_loss(users, items).item() - _loss(users, items, faithful=True).item()) > 1e-3
    small = MEMBERS[[1, 4]]  # no group above the threshold: the masks agree
    torch.testing.assert_close(
        _loss(users, items, members=small), _loss(users, items, members=small, faithful=True), rtol=0, atol=0
    )


def test_encoder_gets_the_padding_convention() -> None:
    seen = []

    def encode(ids, mask, item):
        seen.append((ids.clone(), mask.clone(), item.clone()))
        return torch.randn(ids.shape[0], 3, generator=torch.Generator().manual_seed(len(seen)))

    group_view_nt_xent(encode, MEMBERS, ITEMS, generator=torch.Generator().manual_seed(0))
    group_view_nt_xent(encode, MEMBERS, ITEMS, generator=torch.Generator().manual_seed(0), faithful_mask=True)
    (ids, mask, item), (ids2, _, _), (fids, fmask, _), _ = seen
    assert ids.shape == (5, 3) and torch.equal(mask, ids >= 0) and torch.equal(item, ITEMS)
    assert not torch.equal(ids, ids2)  # the two views were drawn independently
    lengths = (MEMBERS >= 0).sum(1)
    assert fids.shape == (5, 10) and torch.equal(fids[:, :3], ids)
    assert torch.equal(fmask, torch.arange(10)[None, :] < lengths[:, None])


def test_identical_encodings_give_log_2b_minus_1() -> None:
    loss = group_view_nt_xent(lambda ids, mask, item: torch.ones(ids.shape[0], 3), MEMBERS, ITEMS)
    assert abs(loss.item() - math.log(2 * 5 - 1)) < 1e-6


def test_group_view_nt_xent_gradcheck() -> None:
    users, items = _tables(seed=1)
    assert torch.autograd.gradcheck(lambda u, i: _loss(u, i, seed=2), (users, items))
    assert torch.autograd.gradcheck(lambda u, i: _loss(u, i, seed=2, faithful=True, keep=0.5), (users, items))


def test_group_view_nt_xent_float32_agrees_with_float64() -> None:
    users, items = _tables()
    low = _loss(*(t.detach().float() for t in (users, items)))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), _loss(users, items).detach(), rtol=1e-4, atol=0)


def test_group_view_nt_xent_bf16_is_finite() -> None:
    users, items = (t.detach().bfloat16().requires_grad_() for t in _tables())
    loss = _loss(users, items)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(users.grad.float()).all()


def _constant_encoder(ids, mask, item):
    return torch.randn(ids.shape[0], 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encode_fn": "encoder"}, "encode_fn.*callable"),
        ({"members": torch.tensor([[1, -1, 2], [1, 2, 3]])}, "members.*padding"),
        ({"item": torch.tensor([0, 1, 2])}, r"item.*shape \(2,\)"),
        ({"item": torch.tensor([0.0, 1.0])}, "item.*integer"),
        ({"keep": -0.1}, "keep"),
        ({"size_threshold": "5"}, "size_threshold"),
        ({"temperature": 0.0}, "temperature"),
        ({"faithful_mask": "no"}, "faithful_mask"),
        ({"generator": 0}, "generator"),
        ({"members": torch.tensor([[1, 2]]), "item": torch.tensor([0])}, "B=1"),
        ({"encode_fn": lambda ids, mask, item: torch.ones(3, 4)}, r"encode_fn output \(view 1\).*2 rows"),
        ({"encode_fn": lambda ids, mask, item: torch.full((2, 4), math.nan)}, "encode_fn output.*NaN"),
        ({"encode_fn": lambda ids, mask, item: torch.ones(2)}, "encode_fn output"),
        ({"encode_fn": lambda ids, mask, item: torch.zeros(2, 4)}, r"encode_fn output \(view 1\).*all-zero"),
    ],
)
def test_group_view_nt_xent_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {
        "encode_fn": _constant_encoder,
        "members": torch.tensor([[1, 2, 3], [4, 5, -1]]),
        "item": torch.tensor([0, 1]),
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=f"group_view_nt_xent.*{match}"):
        group_view_nt_xent(**args)


# ---------------------------------------------------------------- the Mixed loss


def ref_mixed(pos: torch.Tensor, neg: torch.Tensor, alpha: float, margin: float) -> torch.Tensor:
    total = 0
    for s_pos, s_neg in zip(pos, neg, strict=True):
        p_pos, p_neg = 1 / (1 + torch.exp(-s_pos)), 1 / (1 + torch.exp(-s_neg))
        likelihood = -torch.log(p_pos) + (torch.exp(p_neg) - 1)
        hinge = margin - (p_pos - p_neg)
        hinge = hinge if hinge > 0 else hinge * 0
        total = total + alpha * likelihood + (1 - alpha) * hinge
    return total / pos.shape[0]


def _scores(n: int = 7, seed: int = 0, scale: float = 3.0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    pos = (scale * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    neg = (scale * torch.randn(n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    return pos, neg


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_mixed_loss_matches_loop(alpha: float, margin: float) -> None:
    pos, neg = _scores(seed=int(10 * alpha))
    if margin < 1:  # check the hinge is inactive somewhere and active elsewhere
        gap = torch.sigmoid(pos) - torch.sigmoid(neg)
        assert bool((gap > margin).any()) and bool((gap < margin).any())
    assert_matches_reference(
        lambda p, n: mixed_recommendation_loss(p, n, alpha, margin),
        lambda p, n: ref_mixed(p, n, alpha, margin),
        pos,
        neg,
    )


def test_mixed_loss_hand_value_and_no_log_cap() -> None:
    zero = torch.zeros(1, dtype=torch.float64)
    want = 0.5 * (math.log(2) + math.exp(0.5) - 1) + 0.5 * 1.0
    assert abs(mixed_recommendation_loss(zero, zero).item() - want) < 1e-12
    # -log sigmoid(-40) = 40 + log(1 + e^-40); the release's log(p + 1e-10) would cap it at 23.03
    pos, neg = torch.tensor([-40.0], dtype=torch.float64), torch.tensor([-40.0], dtype=torch.float64)
    got = mixed_recommendation_loss(pos, neg, alpha=1.0).item()
    assert abs(got - (40 + math.expm1(1 / (1 + math.exp(40))))) < 1e-9


def test_mixed_loss_gradcheck_and_precisions() -> None:
    pos, neg = _scores(5, seed=3, scale=1.0)
    assert torch.autograd.gradcheck(lambda p, n: mixed_recommendation_loss(p, n, 0.3, 0.6), (pos, neg))
    low = mixed_recommendation_loss(pos.detach().float(), neg.detach().float())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), mixed_recommendation_loss(pos, neg).detach(), rtol=1e-4, atol=0)
    half_pos, half_neg = (t.detach().bfloat16().requires_grad_() for t in (pos, neg))
    loss = mixed_recommendation_loss(half_pos, half_neg)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(half_pos.grad.float()).all() and torch.isfinite(half_neg.grad.float()).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pos_scores": torch.zeros(3, 1)}, r"pos_scores.*shape \(B,\)"),
        ({"neg_scores": torch.zeros(4)}, "neg_scores.*3 rows"),
        ({"pos_scores": torch.zeros(0), "neg_scores": torch.zeros(0)}, "pos_scores.*empty"),
        ({"neg_scores": torch.tensor([0.0, math.inf, 1.0])}, "neg_scores.*NaN/inf"),
        ({"pos_scores": torch.tensor([1, 2, 3])}, "pos_scores.*floating"),
        ({"alpha": 1.5}, "alpha"),
        ({"margin": -1.0}, "margin"),
        ({"margin": math.inf}, "margin"),
    ],
)
def test_mixed_loss_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"pos_scores": torch.zeros(3), "neg_scores": torch.zeros(3)}
    args.update(kwargs)
    with pytest.raises(InputError, match=f"mixed_recommendation_loss.*{match}"):
        mixed_recommendation_loss(**args)
