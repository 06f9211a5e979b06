"""clip_loss_extra_negatives and anchor_hinge (BindCLIP, METHODS 3.14) against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.decoys import anchor_hinge, clip_loss_extra_negatives

B, E, D = 6, 4, 5


def _per_query(b: int, e: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, e, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


# ---------------------------------------------------------------- loop references


def ref_clip_extra(q, k, extra, scale, duplicate_mask=None, reduction="mean"):
    """1/2 CE(q_i -> [k ; extra]) + 1/2 CE(k_j -> q), duplicates (off the diagonal) dropped."""
    b = q.shape[0]

    def dropped(i: int, j: int) -> bool:
        return i != j and duplicate_mask is not None and bool(duplicate_mask[i, j])

    def extras_of(i: int) -> list[torch.Tensor]:
        if extra is None:
            return []
        rows = extra if extra.dim() == 2 else extra[i]
        return [rows[e] for e in range(rows.shape[0])]

    to_keys: list[torch.Tensor | None] = []
    for i in range(b):
        cands = [scale * loop_dot(q[i], k[j]) for j in range(b) if not dropped(i, j)]
        cands += [scale * loop_dot(q[i], c) for c in extras_of(i)]
        to_keys.append(loop_lse(cands) - scale * loop_dot(q[i], k[i]) if len(cands) > 1 else None)
    to_queries: list[torch.Tensor | None] = []
    for j in range(b):
        cands = [scale * loop_dot(k[j], q[i]) for i in range(b) if not dropped(i, j)]
        to_queries.append(loop_lse(cands) - scale * loop_dot(k[j], q[j]) if len(cands) > 1 else None)
    return 0.5 * (loop_reduce(to_keys, reduction) + loop_reduce(to_queries, reduction))


def ref_anchor_hinge(anchor, hard, batch, valid, margin=0.0, reduction="mean"):
    b = anchor.shape[0]
    m, ref = anchor.detach(), batch.detach()
    out: list[torch.Tensor | None] = []
    for i in range(b):
        if not bool(valid[i]):
            out.append(None)
            continue
        h = loop_dot(m[i], hard[i])
        a = sum(loop_dot(m[i], ref[j]) for j in range(b) if j != i) / (b - 1)
        out.append(torch.relu(a - h + margin))
    return loop_reduce(out, reduction)


# ---------------------------------------------------------------- clip_loss_extra_negatives


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("form", ["shared", "per_query"])
def test_extra_negatives_match_loop(reduction: str, form: str) -> None:
    q, k = unit_rows(B, D, seed=1), unit_rows(B, D, seed=2)
    extra = unit_rows(E, D, seed=3) if form == "shared" else _per_query(B, E, D, seed=3)
    assert_matches_reference(
        lambda a, b, c: clip_loss_extra_negatives(a, b, c, 14.0, reduction=reduction),
        lambda a, b, c: ref_clip_extra(a, b, c, 14.0, reduction=reduction),
        q,
        k,
        extra,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_duplicate_mask_matches_loop(reduction: str) -> None:
    q, k, extra = unit_rows(B, D, seed=4), unit_rows(B, D, seed=5), unit_rows(B, D, seed=6)
    ids = torch.tensor([0, 1, 0, 2, 1, 3])  # pairs 0/2 and 1/4 share a pocket
    duplicate = ids[:, None] == ids[None, :]  # diagonal True: it must not drop the positive
    assert_matches_reference(
        lambda a, b, c: clip_loss_extra_negatives(a, b, c, duplicate_mask=duplicate, reduction=reduction),
        lambda a, b, c: ref_clip_extra(a, b, c, 14.0, duplicate, reduction),
        q,
        k,
        extra,
    )
    plain = clip_loss_extra_negatives(q, k, extra, reduction=reduction)
    assert (plain - clip_loss_extra_negatives(q, k, extra, duplicate_mask=duplicate)).abs() > 1e-3


def test_duplicate_mask_acts_in_both_directions() -> None:
    # An asymmetric mask: (0, 1) drops k_1 from q_0's candidates and q_0 from k_1's.
    q, k = unit_rows(4, D, seed=7), unit_rows(4, D, seed=8)
    duplicate = torch.zeros(4, 4, dtype=torch.bool)
    duplicate[0, 1] = True
    got = clip_loss_extra_negatives(q, k, None, 10.0, duplicate_mask=duplicate)
    torch.testing.assert_close(got, ref_clip_extra(q, k, None, 10.0, duplicate), atol=1e-10, rtol=0)
    rows = clip_loss(q, k, 10.0, ignore_mask=duplicate)  # clip_loss's ignore_mask: same convention
    torch.testing.assert_close(got, rows, atol=1e-10, rtol=0)


def test_a_molecule_left_without_negatives_is_left_out() -> None:
    q, k = unit_rows(3, D, seed=9), unit_rows(3, D, seed=10)
    duplicate = torch.zeros(3, 3, dtype=torch.bool)
    duplicate[0, 2] = duplicate[1, 2] = True  # molecule 2 has no pocket left to contrast
    got = clip_loss_extra_negatives(q, k, unit_rows(2, D, seed=11), duplicate_mask=duplicate)
    want = ref_clip_extra(q, k, unit_rows(2, D, seed=11), 14.0, duplicate)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("empty", ["none", "shared", "per_query"])
def test_without_extra_negatives_it_is_clip_loss(empty: str) -> None:
    q, k = unit_rows(B, D, seed=12), unit_rows(B, D, seed=13)
    extra = {
        "none": None,
        "shared": torch.zeros(0, D, dtype=torch.float64),
        "per_query": torch.zeros(B, 0, D, dtype=torch.float64),
    }[empty]
    assert_matches_reference(
        lambda a, b: clip_loss_extra_negatives(a, b, extra, 14.0),
        lambda a, b: clip_loss(a, b, 14.0),
        q,
        k,
    )


def test_fixed_and_tensor_scale() -> None:
    q, k, extra = unit_rows(B, D, seed=14), unit_rows(B, D, seed=15), unit_rows(E, D, seed=16)
    fixed = clip_loss_extra_negatives(q, k, extra, 14.0)
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    learnable = clip_loss_extra_negatives(q, k, extra, scale)
    torch.testing.assert_close(fixed, learnable, atol=1e-12, rtol=0)
    (got,) = torch.autograd.grad(learnable, scale)
    s = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(ref_clip_extra(q, k, extra, s), s)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-6)
    assert got.abs() > 1e-6
    # the default is the paper's fixed 14, and another scale gives another loss
    torch.testing.assert_close(clip_loss_extra_negatives(q, k, extra), fixed)
    assert (clip_loss_extra_negatives(q, k, extra, 5.0) - fixed).abs() > 1e-3


def test_identical_embeddings_give_log_counts() -> None:
    v = F.normalize(torch.ones(1, D, dtype=torch.float64), dim=1)
    q, k, extra = v.repeat(B, 1), v.repeat(B, 1), v.repeat(E, 1)
    got = clip_loss_extra_negatives(q, k, extra, 14.0)
    torch.testing.assert_close(got, torch.tensor(0.5 * (math.log(B + E) + math.log(B)), dtype=torch.float64))
    got_sum = clip_loss_extra_negatives(q, k, extra, 14.0, reduction="sum")
    torch.testing.assert_close(
        got_sum, torch.tensor(0.5 * B * (math.log(B + E) + math.log(B)), dtype=torch.float64)
    )


def test_extra_negatives_gradcheck() -> None:
    q, k = unit_rows(4, 3, seed=17), unit_rows(4, 3, seed=18)
    extra = _per_query(4, 2, 3, seed=19)
    duplicate = torch.zeros(4, 4, dtype=torch.bool)
    duplicate[1, 3] = duplicate[3, 1] = True
    assert torch.autograd.gradcheck(
        lambda a, b, c: clip_loss_extra_negatives(a, b, c, 3.0, duplicate_mask=duplicate), (q, k, extra)
    )


def test_extra_negatives_precision() -> None:
    q, k, extra = unit_rows(16, 8, seed=20), unit_rows(16, 8, seed=21), unit_rows(16, 8, seed=22)
    want = clip_loss_extra_negatives(q, k, extra)
    got = clip_loss_extra_negatives(q.float(), k.float(), extra.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = [t.detach().bfloat16().requires_grad_() for t in (q, k, extra)]
    loss = clip_loss_extra_negatives(*half)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in half)


def _three(seed: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return unit_rows(B, D, seed=seed), unit_rows(B, D, seed=seed + 1), unit_rows(E, D, seed=seed + 2)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda q, k, e: (q.detach().numpy(), k, e, {}), "'q' must be a torch.Tensor"),
        (lambda q, k, e: (q, k[:-1], e, {}), "'k' must have 6 rows"),
        (lambda q, k, e: (q, k[:, :-1], e, {}), "'k' must have embedding size 5"),
        (lambda q, k, e: (q[:0], k[:0], e, {}), "'q' is empty"),
        (lambda q, k, e: (q, k, e[:, :-1], {}), "'k_extra' must have shape (E, D=5)"),
        (lambda q, k, e: (q, k, e[None].repeat(2, 1, 1), {}), "per-query 'k_extra'"),
        (lambda q, k, e: (q, k, e.detach().clone().fill_(math.nan), {}), "'k_extra' contains"),
        (lambda q, k, e: (q.detach().clone().fill_(math.inf), k, e, {}), "'q' contains"),
        (lambda q, k, e: (q[:1], k[:1], e, {}), "B >= 2"),
        (lambda q, k, e: (q, k, e, {"scale": -1.0}), "'scale' must be finite and >= 0"),
        (lambda q, k, e: (q, k, e, {"reduction": "none"}), "'reduction' must be one of"),
        (lambda q, k, e: (q, k, e, {"duplicate_mask": torch.eye(B)}), "'duplicate_mask' must be a bool"),
        (
            lambda q, k, e: (q, k, e, {"duplicate_mask": torch.eye(B + 1, dtype=torch.bool)}),
            "'duplicate_mask' must have shape (6, 6)",
        ),
    ],
)
def test_extra_negatives_errors(change, needle: str) -> None:
    q, k, e, options = change(*_three())
    with pytest.raises(InputError, match="clip_loss_extra_negatives") as info:
        clip_loss_extra_negatives(q, k, e, **options)
    assert needle in str(info.value)


def test_extra_negatives_all_duplicates_raise() -> None:
    q, k, e = _three()
    with pytest.raises(NoPositivePairsError, match="clip_loss_extra_negatives: 'duplicate_mask'"):
        clip_loss_extra_negatives(q, k, e, duplicate_mask=torch.ones(B, B, dtype=torch.bool))


# ---------------------------------------------------------------- anchor_hinge


VALID = torch.tensor([True, False, True, True, True, False])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_anchor_hinge_matches_loop(reduction: str, margin: float) -> None:
    anchor, hard, ref = unit_rows(B, D, seed=40), unit_rows(B, D, seed=41), unit_rows(B, D, seed=42)
    weights = torch.linspace(0.5, 1.5, B, dtype=torch.float64)  # "none": compare a weighted sum

    def scalar(loss: torch.Tensor) -> torch.Tensor:
        return loss if reduction != "none" else (loss.nan_to_num() * weights).sum()

    assert_matches_reference(
        lambda a, h, r: scalar(anchor_hinge(a, h, r, VALID, margin, reduction)),
        lambda a, h, r: scalar(ref_anchor_hinge(a, h, r, VALID, margin, reduction)),
        anchor,
        hard,
        ref,
    )
    # some rows are inside the hinge and some outside, so the relu is exercised both ways
    per_row = anchor_hinge(anchor, hard, ref, VALID, margin, "none")[VALID]
    assert bool((per_row > 0).any()) and (margin > 0 or bool((per_row == 0).any()))


def test_anchor_hinge_gradient_reaches_only_the_hard_negative() -> None:
    anchor, hard, ref = unit_rows(B, D, seed=43), unit_rows(B, D, seed=44), unit_rows(B, D, seed=45)
    loss = anchor_hinge(anchor, hard, ref, VALID, margin=2.0)  # margin 2: every valid row active
    g_anchor, g_hard, g_ref = torch.autograd.grad(loss, (anchor, hard, ref), allow_unused=True)
    assert g_anchor is None and g_ref is None
    want = torch.where(VALID[:, None], -anchor.detach() / int(VALID.sum()), 0.0)
    torch.testing.assert_close(g_hard, want, atol=1e-12, rtol=0)


def test_anchor_hinge_shared_batch_is_detached() -> None:
    # BindCLIP passes the molecules as both anchor and batch: still no gradient to them.
    mols, decoys = unit_rows(B, D, seed=46), unit_rows(B, D, seed=47)
    loss = anchor_hinge(mols, decoys, mols, torch.ones(B, dtype=torch.bool), margin=1.0)
    g_mols, g_decoys = torch.autograd.grad(loss, (mols, decoys), allow_unused=True)
    assert g_mols is None and g_decoys is not None and g_decoys.abs().sum() > 0


def test_anchor_hinge_hand_case() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    hard = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    valid = torch.ones(3, dtype=torch.bool)
    # a = [(0 + 1)/2, (1 + 0)/2, (1 + 0)/2] = 0.5 each; h = [0, 1, 0.6] -> relu = [0.5, 0, 0]
    got = anchor_hinge(anchor, hard, anchor, valid, reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        anchor_hinge(anchor, hard, anchor, valid), torch.tensor(0.5 / 3, dtype=torch.float64)
    )


def test_anchor_hinge_gradcheck() -> None:
    anchor, ref = unit_rows(4, 3, seed=48).detach(), unit_rows(4, 3, seed=49).detach()
    hard = unit_rows(4, 3, seed=50)
    valid = torch.tensor([True, True, False, True])
    assert torch.autograd.gradcheck(lambda h: anchor_hinge(anchor, h, ref, valid, 0.5), (hard,))


def test_anchor_hinge_precision() -> None:
    anchor, hard, ref = unit_rows(16, 8, seed=51), unit_rows(16, 8, seed=52), unit_rows(16, 8, seed=53)
    valid = torch.ones(16, dtype=torch.bool)
    want = anchor_hinge(anchor, hard, ref, valid, 0.2)
    got = anchor_hinge(anchor.float(), hard.float(), ref.float(), valid, 0.2)
    assert got.dtype == torch.float32 and want > 0
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = hard.detach().bfloat16().requires_grad_()
    loss = anchor_hinge(anchor.bfloat16(), half, ref.bfloat16(), valid, 0.2)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(half.grad).all()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda a, h, r, v: (a, h[:-1], r, v, {}), "'hard_negative' must have 6 rows"),
        (lambda a, h, r, v: (a, h, r[:, :-1], v, {}), "'batch' must have embedding size 5"),
        (lambda a, h, r, v: (a[:0], h, r, v, {}), "'anchor' is empty"),
        (lambda a, h, r, v: (a, h.detach().clone().fill_(math.nan), r, v, {}), "'hard_negative' contains"),
        (lambda a, h, r, v: (a, h, r, v.float(), {}), "'valid' must be a bool tensor"),
        (lambda a, h, r, v: (a, h, r, v[:-1], {}), "'valid' must have shape (6,)"),
        (lambda a, h, r, v: (a, h, r, v, {"margin": -0.1}), "'margin' must be in [0.0, inf]"),
        (lambda a, h, r, v: (a, h, r, v, {"reduction": "max"}), "'reduction' must be one of"),
        (lambda a, h, r, v: (a[:1], h[:1], r[:1], v[:1], {}), "B >= 2"),
    ],
)
def test_anchor_hinge_errors(change, needle: str) -> None:
    a, h, r = unit_rows(B, D, seed=54), unit_rows(B, D, seed=55), unit_rows(B, D, seed=56)
    a, h, r, v, options = change(a, h, r, VALID)
    with pytest.raises(InputError, match="anchor_hinge") as info:
        anchor_hinge(a, h, r, v, **options)
    assert needle in str(info.value)


def test_anchor_hinge_no_valid_row_raises() -> None:
    a, h = unit_rows(B, D, seed=57), unit_rows(B, D, seed=58)
    with pytest.raises(NoPositivePairsError, match="anchor_hinge: 'valid' marks no row"):
        anchor_hinge(a, h, a, torch.zeros(B, dtype=torch.bool), reduction="sum")
