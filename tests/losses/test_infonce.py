"""info_nce and hard_negative_info_nce against float64 loop references (METHODS.md 1.1, 1.10).

The references loop over anchors and candidates with 0-d tensors, so that autograd gives the
reference gradients for q, k, the extra negatives and a tensor scale.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit import InputError, NoPositivePairsError, hard_negative_info_nce, info_nce

B, D = 5, 4
ATOL = 1e-10


# --------------------------------------------------------------------------------------------
# loop references
# --------------------------------------------------------------------------------------------


def ref_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    positive_mask: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    mode: str = "mean",
    reduction: str = "mean",
) -> torch.Tensor:
    n_q, n_k = q.shape[0], k.shape[0]
    per_anchor: list[torch.Tensor | None] = []
    for i in range(n_q):
        pos, neg = [], []
        for j in range(n_k):
            if ignore_mask is not None and bool(ignore_mask[i, j]):
                continue
            logit = scale * loop_dot(q[i], k[j])
            is_pos = bool(positive_mask[i, j]) if positive_mask is not None else i == j
            (pos if is_pos else neg).append(logit)
        if extra is not None:
            rows = extra if extra.dim() == 2 else extra[i]
            for e in range(rows.shape[0]):
                neg.append(scale * loop_dot(q[i], rows[e]))
        if not pos:
            per_anchor.append(None)
            continue
        lse_all = loop_lse(pos + neg)
        if mode == "mean":
            loss = lse_all - sum(pos) / len(pos)
        elif mode == "lse":
            loss = lse_all - loop_lse(pos)
        else:  # exclusive
            loss = sum(loop_lse([p] + neg) - p for p in pos) / len(pos)
        per_anchor.append(loss)
    return loop_reduce(per_anchor, reduction)


def ref_hcl(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    beta: float,
    tau_plus: float,
    symmetric: bool,
    reduction: str = "mean",
    floor_log: list[bool] | None = None,
) -> torch.Tensor:
    """HCL straight from the formula (no log-space tricks; fine for these small logits)."""
    n = q.shape[0]
    if symmetric:
        z = [q[i] for i in range(n)] + [k[i] for i in range(n)]
        anchors = []
        for a in range(2 * n):
            partner = (a + n) % (2 * n)
            anchors.append((a, z[a], partner, [b for b in range(2 * n) if b not in (a, partner)]))
        cand = z
    else:
        anchors = [(i, q[i], i, [j for j in range(n) if j != i]) for i in range(n)]
        cand = [k[j] for j in range(n)]
    per_anchor = []
    s = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale), dtype=torch.float64)
    for _, anchor, pos_idx, neg_idx in anchors:
        l_pos = s * loop_dot(anchor, cand[pos_idx])
        l_neg = [s * loop_dot(anchor, cand[j]) for j in neg_idx]
        n_neg = len(l_neg)
        reweighted = (
            n_neg * sum(torch.exp((1 + beta) * v) for v in l_neg) / sum(torch.exp(beta * v) for v in l_neg)
        )
        raw = (reweighted - tau_plus * n_neg * torch.exp(l_pos)) / (1 - tau_plus)
        floor = n_neg * torch.exp(-s)
        use_floor = float(raw.detach()) < float(floor.detach())
        if floor_log is not None:
            floor_log.append(use_floor)
        ng = floor if use_floor else raw
        per_anchor.append(-torch.log(torch.exp(l_pos) / (torch.exp(l_pos) + ng)))
    return loop_reduce(per_anchor, reduction)


def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent over 2N views (METHODS.md 1.4), by a loop."""
    n = z1.shape[0]
    z = [z1[i] for i in range(n)] + [z2[i] for i in range(n)]
    total = 0.0
    for a in range(2 * n):
        logits = {b: loop_dot(z[a], z[b]) / temperature for b in range(2 * n) if b != a}
        total = total + loop_lse(list(logits.values())) - logits[(a + n) % (2 * n)]
    return total / (2 * n)


# --------------------------------------------------------------------------------------------
# comparison helper: value and gradients w.r.t. every input that requires grad
# --------------------------------------------------------------------------------------------


def _compare(got: torch.Tensor, want: torch.Tensor, wrt: list[torch.Tensor], atol: float = ATOL) -> None:
    assert got.dtype == torch.float64
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=0, equal_nan=True)
    if got.dim() > 0:  # reduction="none": weight the finite entries differently
        fin = torch.isfinite(want)
        assert torch.equal(fin, torch.isfinite(got))
        w = torch.arange(1, got.numel() + 1, dtype=torch.float64)
        got, want = (got[fin] * w[fin]).sum(), (want[fin] * w[fin]).sum()
    got_g = torch.autograd.grad(got, wrt, allow_unused=True)
    want_g = torch.autograd.grad(want, wrt, allow_unused=True)
    for i, (g, w_) in enumerate(zip(got_g, want_g, strict=True)):
        assert g is not None and w_ is not None, f"gradient {i} missing"
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w_, atol=atol, rtol=0, msg=lambda m, i=i: f"grad {i}: {m}")


def _scale(value: float = 4.0) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def _mask(rows: int, cols: int, p: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(rows, cols, generator=g) < p


# --------------------------------------------------------------------------------------------
# info_nce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_info_nce_default_diagonal(reduction: str) -> None:
    q, k, s = unit_rows(B, D, seed=1), unit_rows(B, D, seed=2), _scale(5.0)
    got = info_nce(q, k, s, reduction=reduction)
    want = ref_info_nce(q, k, s, reduction=reduction)
    assert got.shape == (() if reduction != "none" else (B,))
    _compare(got, want, [q, k, s])


def test_info_nce_float_scale() -> None:
    q, k = unit_rows(B, D, seed=3), unit_rows(B, D, seed=4)
    _compare(info_nce(q, k, 7.5), ref_info_nce(q, k, 7.5), [q, k])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_more_keys_than_queries(reduction: str) -> None:
    q, k, s = unit_rows(B, D, seed=5), unit_rows(B + 3, D, seed=6), _scale(6.0)
    got = info_nce(q, k, s, reduction=reduction)
    _compare(got, ref_info_nce(q, k, s, reduction=reduction), [q, k, s])


def _multi_positive_mask(n_q: int, n_k: int, seed: int) -> torch.Tensor:
    """Several positives per query; query 2 has none (so it is invalid)."""
    mask = _mask(n_q, n_k, 0.35, seed)
    mask[0, [0, 3, 5]] = True
    mask[1, [1, 2]] = True
    mask[2] = False
    mask[3, 6] = True
    mask[4, 4] = True
    return mask


@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_info_nce_positive_mask_modes(mode: str, reduction: str) -> None:
    n_k = 7
    q, k, s = unit_rows(B, D, seed=7), unit_rows(n_k, D, seed=8), _scale(4.0)
    pm = _multi_positive_mask(B, n_k, seed=9)
    assert (pm.sum(1) >= 2).sum() >= 2  # genuinely several positives
    got = info_nce(q, k, s, positive_mask=pm, multi_positive=mode, reduction=reduction)
    want = ref_info_nce(q, k, s, positive_mask=pm, mode=mode, reduction=reduction)
    if reduction == "none":
        assert torch.isnan(got[2]) and torch.isfinite(got[[0, 1, 3, 4]]).all()
    _compare(got, want, [q, k, s])


def test_info_nce_modes_differ_with_several_positives() -> None:
    n_k = 7
    q, k = unit_rows(B, D, seed=7), unit_rows(n_k, D, seed=8)
    pm = _multi_positive_mask(B, n_k, seed=9)
    vals = [
        float(info_nce(q, k, 4.0, positive_mask=pm, multi_positive=m).detach())
        for m in ("mean", "lse", "exclusive")
    ]
    assert len({round(v, 8) for v in vals}) == 3


@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
def test_info_nce_ignore_mask(mode: str) -> None:
    q, k, s = unit_rows(B, D, seed=10), unit_rows(B, D, seed=11), _scale(3.0)
    im = _mask(B, B, 0.3, seed=12)
    im.fill_diagonal_(False)
    im[4, 4] = True  # query 4 loses its only positive -> invalid
    assert im.any()
    got = info_nce(q, k, s, ignore_mask=im, multi_positive=mode, reduction="none")
    want = ref_info_nce(q, k, s, ignore_mask=im, mode=mode, reduction="none")
    assert torch.isnan(got[4])
    _compare(got, want, [q, k, s])
    _compare(
        info_nce(q, k, s, ignore_mask=im, multi_positive=mode),
        ref_info_nce(q, k, s, ignore_mask=im, mode=mode),
        [q, k, s],
    )


def test_info_nce_ignore_mask_with_positive_mask() -> None:
    n_k = 7
    q, k, s = unit_rows(B, D, seed=13), unit_rows(n_k, D, seed=14), _scale(4.0)
    pm = _multi_positive_mask(B, n_k, seed=15)
    im = _mask(B, n_k, 0.25, seed=16)
    im[0, 0] = True  # an ignored positive is not a positive
    im[0, [3, 5]] = False
    got = info_nce(q, k, s, positive_mask=pm, ignore_mask=im, multi_positive="lse")
    _compare(got, ref_info_nce(q, k, s, positive_mask=pm, ignore_mask=im, mode="lse"), [q, k, s])


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_extra_negatives(per_row: bool, reduction: str) -> None:
    n_extra = 3
    q, k, s = unit_rows(B, D, seed=17), unit_rows(B, D, seed=18), _scale(5.0)
    base = unit_rows(B * n_extra if per_row else n_extra, D, seed=19).detach()
    extra = (base.reshape(B, n_extra, D) if per_row else base).requires_grad_()
    got = info_nce(q, k, s, extra_negatives=extra, reduction=reduction)
    want = ref_info_nce(q, k, s, extra=extra, reduction=reduction)
    _compare(got, want, [q, k, s, extra])


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
def test_info_nce_extra_negatives_with_masks(per_row: bool, mode: str) -> None:
    n_k, n_extra = 7, 2
    q, k, s = unit_rows(B, D, seed=20), unit_rows(n_k, D, seed=21), _scale(4.0)
    base = unit_rows(B * n_extra if per_row else n_extra, D, seed=22).detach()
    extra = (base.reshape(B, n_extra, D) if per_row else base).requires_grad_()
    pm = _multi_positive_mask(B, n_k, seed=23)
    im = _mask(B, n_k, 0.2, seed=24) & ~pm
    got = info_nce(q, k, s, positive_mask=pm, ignore_mask=im, extra_negatives=extra, multi_positive=mode)
    want = ref_info_nce(q, k, s, positive_mask=pm, ignore_mask=im, extra=extra, mode=mode)
    _compare(got, want, [q, k, s, extra])


def test_info_nce_per_row_extra_negatives_are_not_shared() -> None:
    # a per-row negative equal to query i's own positive only hurts query i
    q, k = unit_rows(B, D, seed=25), unit_rows(B, D, seed=26)
    extra = torch.zeros(B, 1, D, dtype=torch.float64)
    extra[0, 0] = k[0].detach()
    base = info_nce(q, k, 5.0, reduction="none").detach()
    got = info_nce(q, k, 5.0, extra_negatives=extra, reduction="none").detach()
    assert got[0] > base[0] + 1e-3
    # the other rows only gained an exp(0) = 1 term
    want_rest = ref_info_nce(q, k, 5.0, extra=extra, reduction="none").detach()
    torch.testing.assert_close(got, want_rest, atol=ATOL, rtol=0)


def test_info_nce_identical_embeddings_at_scale_zero_is_log_b() -> None:
    q = unit_rows(B, D, seed=27)
    assert float(info_nce(q, q, 0.0).detach()) == pytest.approx(math.log(B), abs=1e-12)


@pytest.mark.parametrize("per_row", [False, True])
def test_info_nce_scale_zero_with_extra_negatives_is_log_b_plus_k(per_row: bool) -> None:
    n_extra = 4
    q = unit_rows(B, D, seed=28)
    extra = unit_rows(B * n_extra if per_row else n_extra, D, seed=29)
    if per_row:
        extra = extra.reshape(B, n_extra, D)
    got = float(info_nce(q, q, 0.0, extra_negatives=extra).detach())
    assert got == pytest.approx(math.log(B + n_extra), abs=1e-12)


def test_info_nce_no_positive_raises() -> None:
    q, k = unit_rows(B, D, seed=30), unit_rows(B, D, seed=31)
    with pytest.raises(NoPositivePairsError):
        info_nce(q, k, 2.0, positive_mask=torch.zeros(B, B, dtype=torch.bool))
    with pytest.raises(NoPositivePairsError):
        info_nce(q, k, 2.0, ignore_mask=torch.eye(B, dtype=torch.bool))


def test_info_nce_fewer_keys_than_queries_needs_a_mask() -> None:
    with pytest.raises(InputError, match="positive_mask"):
        info_nce(unit_rows(B, D), unit_rows(B - 1, D), 2.0)


@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
def test_info_nce_gradcheck(mode: str) -> None:
    q, k, s = unit_rows(3, 3, seed=32), unit_rows(4, 3, seed=33), _scale(2.5)
    extra = unit_rows(2, 3, seed=34)
    pm = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    im = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)

    def f(q_, k_, s_, e_):
        return info_nce(q_, k_, s_, positive_mask=pm, ignore_mask=im, extra_negatives=e_, multi_positive=mode)

    assert torch.autograd.gradcheck(f, (q, k, s, extra))


def test_info_nce_gradcheck_default_path() -> None:
    q, k, s = unit_rows(4, 3, seed=35), unit_rows(4, 3, seed=36), _scale(3.0)
    extra = unit_rows(8, 3, seed=37).detach().reshape(4, 2, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c, e: info_nce(a, b, c, extra_negatives=e), (q, k, s, extra))


# --------------------------------------------------------------------------------------------
# hard_negative_info_nce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
def test_hcl_matches_reference(symmetric: bool, beta: float, tau_plus: float) -> None:
    q, k, s = unit_rows(B, D, seed=40), unit_rows(B, D, seed=41), _scale(2.0)
    got = hard_negative_info_nce(q, k, s, beta=beta, tau_plus=tau_plus, symmetric=symmetric)
    want = ref_hcl(q, k, s, beta=beta, tau_plus=tau_plus, symmetric=symmetric)
    _compare(got, want, [q, k, s])


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_hcl_reductions(reduction: str, symmetric: bool) -> None:
    q, k, s = unit_rows(B, D, seed=42), unit_rows(B, D, seed=43), _scale(3.0)
    got = hard_negative_info_nce(q, k, s, beta=0.7, tau_plus=0.05, symmetric=symmetric, reduction=reduction)
    want = ref_hcl(q, k, s, beta=0.7, tau_plus=0.05, symmetric=symmetric, reduction=reduction)
    if reduction == "none":
        assert got.shape == ((2 * B,) if symmetric else (B,))
    _compare(got, want, [q, k, s])


def _half_aligned_pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs 0..2 are nearly identical (strong positives); pairs 3.. are unrelated."""
    q = unit_rows(B, D, seed=seed).detach()
    noise = unit_rows(B, D, seed=seed + 1).detach()
    k = q.clone()
    k[:3] = F.normalize(q[:3] + 0.05 * noise[:3], dim=1)
    k[3:] = noise[3:]
    return q.requires_grad_(), k.requires_grad_()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tau_plus", [0.9, 0.99])
def test_hcl_floor_becomes_active(symmetric: bool, tau_plus: float) -> None:
    q, k = _half_aligned_pairs(seed=44)
    s = _scale(2.0)
    floor_log: list[bool] = []
    want = ref_hcl(
        q, k, s, beta=1.0, tau_plus=tau_plus, symmetric=symmetric, reduction="none", floor_log=floor_log
    )
    # the test is only meaningful with the floor active on some anchors and not on others
    assert any(floor_log) and not all(floor_log), floor_log
    got = hard_negative_info_nce(q, k, s, beta=1.0, tau_plus=tau_plus, symmetric=symmetric, reduction="none")
    _compare(got, want, [q, k, s])
    # on the floored anchors the loss is exactly -log(e^{l+} / (e^{l+} + N e^{-s}))
    n_neg = 2 * B - 2 if symmetric else B - 1
    z = torch.cat([q, k]).detach() if symmetric else None
    for a, floored in enumerate(floor_log):
        if not floored:
            continue
        if symmetric:
            l_pos = 2.0 * float(z[a] @ z[(a + B) % (2 * B)])
        else:
            l_pos = 2.0 * float(q[a].detach() @ k[a].detach())
        expect = -math.log(math.exp(l_pos) / (math.exp(l_pos) + n_neg * math.exp(-2.0)))
        assert float(got[a].detach()) == pytest.approx(expect, abs=1e-12)
    _compare(
        hard_negative_info_nce(q, k, s, beta=1.0, tau_plus=tau_plus, symmetric=symmetric),
        ref_hcl(q, k, s, beta=1.0, tau_plus=tau_plus, symmetric=symmetric),
        [q, k, s],
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_hcl_large_scale(symmetric: bool) -> None:
    # logits up to +-40 and (1 + beta) * logits up to 80: the log-space evaluation must stay exact
    q, k = _half_aligned_pairs(seed=45)
    s = _scale(40.0)
    got = hard_negative_info_nce(q, k, s, beta=1.0, tau_plus=0.1, symmetric=symmetric, reduction="none")
    want = ref_hcl(q, k, s, beta=1.0, tau_plus=0.1, symmetric=symmetric, reduction="none")
    _compare(got, want, [q, k, s])


def test_hcl_beta_zero_tau_zero_symmetric_is_nt_xent() -> None:
    q, k = unit_rows(B, D, seed=46), unit_rows(B, D, seed=47)
    scale = 1 / 0.3
    got = hard_negative_info_nce(q, k, scale, beta=0.0, tau_plus=0.0, symmetric=True)
    want = ref_nt_xent(q, k, temperature=1 / scale)
    _compare(got, want, [q, k])


def test_hcl_beta_zero_tau_zero_asymmetric_is_info_nce() -> None:
    q, k, s = unit_rows(B, D, seed=48), unit_rows(B, D, seed=49), _scale(6.0)
    got = hard_negative_info_nce(q, k, s, beta=0.0, tau_plus=0.0, symmetric=False)
    _compare(got, info_nce(q, k, s), [q, k, s])
    _compare(
        hard_negative_info_nce(q, k, s, beta=0.0, tau_plus=0.0, symmetric=False),
        ref_info_nce(q, k, s),
        [q, k, s],
    )


def test_hcl_beta_upweights_hard_negatives() -> None:
    q, k = unit_rows(B, D, seed=50), unit_rows(B, D, seed=51)
    plain = hard_negative_info_nce(q, k, 2.0, beta=0.0, tau_plus=0.0).detach()
    hard = hard_negative_info_nce(q, k, 2.0, beta=1.0, tau_plus=0.0).detach()
    assert hard > plain + 1e-6


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tau_plus", [0.1, 0.95])
def test_hcl_gradcheck(symmetric: bool, tau_plus: float) -> None:
    q, k, s = unit_rows(3, 3, seed=52), unit_rows(3, 3, seed=53), _scale(1.5)

    def f(a, b, c):
        return hard_negative_info_nce(a, b, c, beta=0.8, tau_plus=tau_plus, symmetric=symmetric)

    assert torch.autograd.gradcheck(f, (q, k, s))


def test_hcl_argument_checks() -> None:
    q, k = unit_rows(B, D), unit_rows(B, D, seed=1)
    with pytest.raises(InputError, match="tau_plus"):
        hard_negative_info_nce(q, k, 2.0, tau_plus=1.0)
    with pytest.raises(InputError, match="beta"):
        hard_negative_info_nce(q, k, 2.0, beta=-0.1)
    with pytest.raises(InputError, match="at least 2"):
        hard_negative_info_nce(q[:1], k[:1], 2.0)
