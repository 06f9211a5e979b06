"""multi_positive_cross_entropy and reduce_anchor_losses against float64 loop references.

The references below are written from METHODS.md section 1.1 and the docstring of
``multi_positive_cross_entropy``, one anchor at a time, with Python loops over the columns.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import loop_lse
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.functional import multi_positive_cross_entropy, reduce_anchor_losses

R, C = 6, 7


# --------------------------------------------------------------------------------------------
# loop references
# --------------------------------------------------------------------------------------------


def reference_rows(
    logits: torch.Tensor,
    positive: torch.Tensor,
    ignore: torch.Tensor | None,
    mode: str,
    eps: float = 0.0,
    count_normalize: bool = False,
) -> tuple[list[torch.Tensor], list[bool]]:
    """Per-anchor losses of the valid anchors (in row order) and the validity of every row."""
    n_rows, n_cols = logits.shape
    losses, valid = [], []
    for i in range(n_rows):
        cand = [j for j in range(n_cols) if ignore is None or not bool(ignore[i, j])]
        pos = [j for j in cand if bool(positive[i, j])]
        neg = [j for j in cand if j not in pos]
        if not pos or not neg:  # nothing to contrast
            valid.append(False)
            continue
        valid.append(True)
        lse_a = loop_lse([logits[i, j] for j in cand])
        if mode == "mean":
            # cross-entropy with the soft target w_j = (1-eps)/|P| on P + eps/|A| on A
            loss = lse_a
            for j in cand:
                w = eps / len(cand) + ((1.0 - eps) / len(pos) if j in pos else 0.0)
                loss = loss - w * logits[i, j]
        elif mode == "lse":
            loss = lse_a - loop_lse([logits[i, p] for p in pos])
            if count_normalize:
                loss = loss + math.log(len(pos))
        elif mode == "exclusive":
            loss = 0.0
            for p in pos:
                loss = loss + loop_lse([logits[i, p]] + [logits[i, j] for j in neg]) - logits[i, p]
            loss = loss / len(pos)
        else:  # pragma: no cover
            raise AssertionError(mode)
        losses.append(loss)
    return losses, valid


def _logits(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(R, C, generator=g, dtype=torch.float64)).requires_grad_()


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Positive / ignore masks covering the interesting row types.

    row 0: one positive, nothing ignored
    row 1: three positives, two ignored negatives
    row 2: no positive at all                      -> invalid
    row 3: its only positive is ignored            -> invalid
    row 4: two positives, one more positive is ignored (so it is not a positive), one negative
           ignored
    row 5: every candidate is a positive except the ignored ones   -> invalid (no negative)
    """
    P = torch.zeros(R, C, dtype=torch.bool)
    I = torch.zeros(R, C, dtype=torch.bool)
    P[0, 2] = True
    P[1, [0, 3, 6]] = True
    I[1, [1, 5]] = True
    P[3, 4] = True
    I[3, 4] = True
    P[4, [1, 2, 5]] = True
    I[4, [5, 0]] = True
    P[5, [0, 1, 2, 3]] = True
    I[5, [4, 5, 6]] = True
    return P, I


EXPECTED_VALID = torch.tensor([True, True, False, False, True, False])


def _check(
    logits: torch.Tensor,
    P: torch.Tensor,
    I: torch.Tensor | None,
    mode: str,
    *,
    eps: float = 0.0,
    count_normalize: bool = False,
    expected_valid: torch.Tensor | None = None,
    atol: float = 1e-10,
) -> None:
    loss, valid = multi_positive_cross_entropy(
        logits, P, I, mode=mode, label_smoothing=eps, count_normalize=count_normalize
    )
    want, want_valid = reference_rows(logits, P, I, mode, eps, count_normalize)
    assert valid.dtype == torch.bool
    assert valid.tolist() == want_valid
    if expected_valid is not None:
        assert valid.tolist() == expected_valid.tolist()
    want_t = torch.stack(want)
    assert loss.shape == want_t.shape
    torch.testing.assert_close(loss, want_t, atol=atol, rtol=0)
    # Gradient of a random weighting of the per-anchor losses, so an error in one row shows.
    w = torch.rand(len(want), generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    (g_got,) = torch.autograd.grad((loss * w).sum(), logits)
    (g_want,) = torch.autograd.grad((want_t * w).sum(), logits)
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# mode="mean"
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_mean_mode_multi_positive_without_ignore(eps: float) -> None:
    P, _ = _masks()
    P = P.clone()
    P[2, [1, 4]] = True  # make every row valid
    P[3, 0] = True
    _check(_logits(1), P, None, "mean", eps=eps, expected_valid=torch.ones(R, dtype=torch.bool))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_mean_mode_with_ignore_mask(eps: float) -> None:
    P, I = _masks()
    _check(_logits(2), P, I, "mean", eps=eps, expected_valid=EXPECTED_VALID)


def test_mean_mode_label_smoothing_spreads_over_unignored_candidates_only() -> None:
    # one anchor, 4 columns, column 3 ignored: eps/|A| = eps/3 on columns 0..2.
    logits = torch.tensor([[1.0, -0.5, 2.0, 7.0]], dtype=torch.float64, requires_grad=True)
    P = torch.tensor([[True, False, False, False]])
    I = torch.tensor([[False, False, False, True]])
    eps = 0.3
    loss, valid = multi_positive_cross_entropy(logits, P, I, mode="mean", label_smoothing=eps)
    lse = math.log(math.exp(1.0) + math.exp(-0.5) + math.exp(2.0))
    want = lse - (1 - eps) * 1.0 - eps / 3 * (1.0 - 0.5 + 2.0)
    assert valid.tolist() == [True]
    assert abs(float(loss[0].detach()) - want) < 1e-12


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_mean_mode_one_positive_equals_torch_cross_entropy_with_label_smoothing(eps: float) -> None:
    logits = _logits(3)
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, C, (R,), generator=g)
    P = F.one_hot(targets, C).bool()
    loss, valid = multi_positive_cross_entropy(logits, P, mode="mean", label_smoothing=eps)
    want = F.cross_entropy(logits, targets, label_smoothing=eps, reduction="none")
    assert valid.all()
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)
    (g_got,) = torch.autograd.grad(loss.sum(), logits)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(g_got, g_want, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# mode="lse" and mode="exclusive"
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count_normalize", [False, True])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_lse_mode(count_normalize: bool, with_ignore: bool) -> None:
    P, I = _masks()
    _check(
        _logits(4),
        P,
        I if with_ignore else None,
        "lse",
        count_normalize=count_normalize,
        expected_valid=EXPECTED_VALID if with_ignore else None,
    )


def test_lse_count_normalize_adds_log_of_positive_count() -> None:
    logits = _logits(5)
    P, I = _masks()
    plain, valid = multi_positive_cross_entropy(logits, P, I, mode="lse")
    normed, _ = multi_positive_cross_entropy(logits, P, I, mode="lse", count_normalize=True)
    n_pos = [1, 3, 2]  # rows 0, 1, 4 (after ignoring)
    assert valid.tolist() == EXPECTED_VALID.tolist()
    torch.testing.assert_close(normed - plain, torch.log(torch.tensor(n_pos, dtype=torch.float64)))


@pytest.mark.parametrize("with_ignore", [False, True])
def test_exclusive_mode(with_ignore: bool) -> None:
    P, I = _masks()
    _check(
        _logits(6),
        P,
        I if with_ignore else None,
        "exclusive",
        expected_valid=EXPECTED_VALID if with_ignore else None,
    )


@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
def test_row_without_negatives_is_invalid_not_a_silent_zero(mode: str) -> None:
    logits = _logits(8)
    P, I = _masks()
    loss, valid = multi_positive_cross_entropy(logits, P, I, mode=mode)
    # row 5: all its candidates are positives, so there is nothing to contrast
    assert not bool(valid[5]) and loss.shape == (int(valid.sum()),)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(g).all()
    assert (g[5] == 0).all()


def test_modes_agree_with_a_single_positive_and_differ_with_several() -> None:
    logits = _logits(9)
    P = torch.eye(R, C, dtype=torch.bool)
    mean, _ = multi_positive_cross_entropy(logits, P, mode="mean")
    lse, _ = multi_positive_cross_entropy(logits, P, mode="lse")
    excl, _ = multi_positive_cross_entropy(logits, P, mode="exclusive")
    plain = torch.logsumexp(logits, 1) - logits.diagonal()
    torch.testing.assert_close(mean, plain, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, plain, atol=1e-12, rtol=0)
    torch.testing.assert_close(excl, plain, atol=1e-12, rtol=0)
    P[:, -1] = True
    mean, _ = multi_positive_cross_entropy(logits, P, mode="mean")
    lse, _ = multi_positive_cross_entropy(logits, P, mode="lse")
    excl, _ = multi_positive_cross_entropy(logits, P, mode="exclusive")
    # L_in <= L_out (Jensen); the three modes are genuinely different losses
    assert (lse[:-1] < mean[:-1]).all()
    assert not torch.allclose(excl, mean)


# --------------------------------------------------------------------------------------------
# invalid rows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "lse", "exclusive"])
def test_rows_without_positive_are_invalid_and_gradient_is_nan_free(mode: str) -> None:
    logits = _logits(10)
    with torch.no_grad():
        logits[2] = torch.tensor([1e3, -1e3, 0, 5, 1, 2, 3], dtype=torch.float64)
    P, I = _masks()
    loss, valid = multi_positive_cross_entropy(logits, P, I, mode=mode, label_smoothing=0.0)
    assert valid.tolist() == EXPECTED_VALID.tolist()
    assert loss.shape == (int(EXPECTED_VALID.sum()),)
    assert torch.isfinite(loss).all()
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(g).all()
    assert (g[~EXPECTED_VALID] == 0).all()


def test_fully_ignored_row_is_invalid() -> None:
    logits = _logits(11)
    P = torch.eye(R, C, dtype=torch.bool)
    I = torch.zeros(R, C, dtype=torch.bool)
    I[1] = True
    loss, valid = multi_positive_cross_entropy(logits, P, I, mode="mean", label_smoothing=0.1)
    assert valid.tolist() == [True, False, True, True, True, True]
    assert torch.isfinite(loss).all()
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_bad_mode_raises() -> None:
    with pytest.raises(InputError, match="mode"):
        multi_positive_cross_entropy(_logits(), torch.eye(R, C, dtype=torch.bool), mode="max")


# --------------------------------------------------------------------------------------------
# reduce_anchor_losses
# --------------------------------------------------------------------------------------------


def test_reduce_mean_sum_none() -> None:
    valid = torch.tensor([True, False, True, True, False])
    loss = torch.tensor([0.5, 2.0, 3.5], dtype=torch.float64, requires_grad=True)
    assert float(reduce_anchor_losses("f", loss, valid, "mean").detach()) == pytest.approx(2.0, abs=1e-15)
    assert float(reduce_anchor_losses("f", loss, valid, "sum").detach()) == pytest.approx(6.0, abs=1e-15)
    none = reduce_anchor_losses("f", loss, valid, "none")
    assert none.shape == (5,)
    assert torch.isnan(none[1]) and torch.isnan(none[4])
    assert none[[0, 2, 3]].tolist() == [0.5, 2.0, 3.5]
    # the valid entries stay connected to the graph
    (g,) = torch.autograd.grad((none[[0, 2, 3]] * torch.tensor([1.0, 2.0, 3.0])).sum(), loss)
    assert g.tolist() == [1.0, 2.0, 3.0]


def test_reduce_default_is_mean() -> None:
    valid = torch.tensor([True, True])
    loss = torch.tensor([1.0, 4.0], dtype=torch.float64)
    assert float(reduce_anchor_losses("f", loss, valid)) == 2.5


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduce_raises_when_nothing_is_valid(reduction: str) -> None:
    logits = _logits(12)
    P = torch.zeros(R, C, dtype=torch.bool)
    P[0, 0] = True
    I = torch.zeros(R, C, dtype=torch.bool)
    I[0, 0] = True  # the only positive is ignored
    loss, valid = multi_positive_cross_entropy(logits, P, I)
    assert not valid.any() and loss.numel() == 0
    with pytest.raises(NoPositivePairsError, match="my_loss"):
        reduce_anchor_losses("my_loss", loss, valid, reduction)


def test_reduce_bad_reduction_raises() -> None:
    with pytest.raises(InputError, match="reduction"):
        reduce_anchor_losses("f", torch.ones(2), torch.ones(2, dtype=torch.bool), "avg")


def test_end_to_end_reduction_of_masked_rows_matches_reference() -> None:
    logits = _logits(13)
    P, I = _masks()
    loss, valid = multi_positive_cross_entropy(logits, P, I, mode="mean", label_smoothing=0.1)
    want, _ = reference_rows(logits, P, I, "mean", 0.1)
    got = reduce_anchor_losses("f", loss, valid, "mean")
    # mean over the 3 valid anchors, not over all 6 rows
    assert len(want) == 3
    torch.testing.assert_close(got, sum(want) / 3, atol=1e-10, rtol=0)
