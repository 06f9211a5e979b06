"""token_info_nce and multi_positive_info_nce against float64 loop references (METHODS.md 3.16)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.tokens import multi_positive_info_nce, token_info_nce


def _lse(values: list[torch.Tensor]) -> torch.Tensor:
    top = max(float(v.detach()) for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def reference_token(a, b, scale, mask=None):
    """Loops: per sample, per row of each direction, CE over the sample's real tokens."""
    n_samples, n_tokens, _ = a.shape
    real = torch.ones(n_samples, n_tokens, dtype=torch.bool) if mask is None else mask
    directions = []
    for first, second in ((a, b), (b, a)):
        rows = []
        for s in range(n_samples):
            for i in range(n_tokens):
                if not real[s, i]:
                    continue
                cols = [j for j in range(n_tokens) if real[s, j]]
                if len(cols) < 2:
                    continue
                logits = [scale * torch.dot(first[s, i], second[s, j]) for j in cols]
                rows.append(_lse(logits) - scale * torch.dot(first[s, i], second[s, i]))
        directions.append(sum(rows) / len(rows))
    return 0.5 * (directions[0] + directions[1])


def reference_multi(anchor, candidates, scale):
    """Loops over the formula of METHODS.md 3.16, stage 2."""
    n, per_sample, _ = candidates.shape
    to_local = []
    for b in range(n):
        everything = [
            scale * torch.dot(anchor[b], candidates[c, s]) for c in range(n) for s in range(per_sample)
        ]
        own = [scale * torch.dot(anchor[b], candidates[b, s]) for s in range(per_sample)]
        to_local.append(_lse(everything) - (_lse(own) - math.log(per_sample)))
    to_anchor = []
    for b in range(n):
        for s in range(per_sample):
            logits = [scale * torch.dot(candidates[b, s], anchor[c]) for c in range(n)]
            to_anchor.append(_lse(logits) - logits[b])
    return 0.5 * (sum(to_local) / len(to_local) + sum(to_anchor) / len(to_anchor))


def _tokens(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def test_token_loss_matches_the_loop_reference_in_value_and_gradient():
    a = _tokens((3, 5, 4), 0).requires_grad_(True)
    b = _tokens((3, 5, 4), 1).requires_grad_(True)
    got = token_info_nce(a, b, 7.0)
    want = reference_token(a, b, 7.0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    got_grads = torch.autograd.grad(got, (a, b))
    want_grads = torch.autograd.grad(want, (a, b))
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_token_loss_with_a_padding_mask_matches_the_reference():
    a, b = _tokens((3, 6, 4), 2), _tokens((3, 6, 4), 3)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        token_info_nce(a, b, 5.0, mask=mask), reference_token(a, b, 5.0, mask), rtol=1e-6, atol=0
    )
    rows = token_info_nce(a, b, 5.0, mask=mask, reduction="none")
    assert rows.shape == (2, 3, 6)
    assert torch.isnan(rows[:, 0, 4:]).all() and torch.isnan(rows[:, 2]).all()  # padded or alone
    assert torch.isfinite(rows[:, 1]).all()


def test_token_loss_negatives_are_the_same_samples_other_steps():
    a = _tokens((2, 4, 3), 4)
    b = a.clone()
    # another sample's tokens change nothing: each sample is scored only against its own steps
    changed = b.clone()
    changed[1] = _tokens((4, 3), 5)
    per_row = token_info_nce(a, b, 3.0, reduction="none")
    per_row_changed = token_info_nce(a, changed, 3.0, reduction="none")
    torch.testing.assert_close(per_row[:, 0], per_row_changed[:, 0])
    assert not torch.allclose(per_row[:, 1], per_row_changed[:, 1])
    # all tokens identical: uniform softmax over N steps -> log N
    same = torch.ones(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        token_info_nce(same, same, 2.0), torch.tensor(math.log(4), dtype=torch.float64)
    )


def test_token_loss_gradcheck_and_reductions():
    a = _tokens((2, 3, 3), 6).requires_grad_(True)
    b = _tokens((2, 3, 3), 7).requires_grad_(True)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, s: token_info_nce(x, y, s), (a, b, scale))
    rows = token_info_nce(a, b, 4.0, reduction="none")
    torch.testing.assert_close(token_info_nce(a, b, 4.0, reduction="sum"), 0.5 * rows.sum())
    torch.testing.assert_close(token_info_nce(a, b, 4.0), 0.5 * rows.mean(dim=(1, 2)).sum())


def test_token_loss_dtypes():
    a64, b64 = _tokens((4, 6, 8), 8), _tokens((4, 6, 8), 9)
    want = token_info_nce(a64, b64, 10.0)
    got = token_info_nce(a64.float(), b64.float(), 10.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
    half = token_info_nce(a64.bfloat16(), b64.bfloat16(), 10.0)
    assert torch.isfinite(half)


def test_token_loss_errors():
    a = torch.randn(2, 3, 4)
    with pytest.raises(InputError, match="token_info_nce.*'a_tokens'.*\\(B, N, D\\)"):
        token_info_nce(a[0], a[0], 1.0)
    with pytest.raises(InputError, match="same shape"):
        token_info_nce(a, torch.randn(2, 4, 4), 1.0)
    with pytest.raises(InputError, match="NaN/inf"):
        token_info_nce(a, a.clone().fill_(float("nan")), 1.0)
    with pytest.raises(InputError, match="empty"):
        token_info_nce(a[:0], a[:0], 1.0)
    with pytest.raises(InputError, match="'scale'"):
        token_info_nce(a, a, -1.0)
    with pytest.raises(InputError, match="at least one negative"):
        token_info_nce(a[:, :1], a[:, :1], 1.0)
    with pytest.raises(InputError, match="'mask'.*shape"):
        token_info_nce(a, a, 1.0, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="'reduction'"):
        token_info_nce(a, a, 1.0, reduction="max")
    lonely = torch.tensor([[True, False, False], [False, False, True]])
    with pytest.raises(NoPositivePairsError):
        token_info_nce(a, a, 1.0, mask=lonely)


def test_multi_positive_matches_the_loop_reference_in_value_and_gradient():
    anchor = _tokens((4, 5), 10).requires_grad_(True)
    candidates = _tokens((4, 3, 5), 11).requires_grad_(True)
    got = multi_positive_info_nce(anchor, candidates, 6.0, detach_anchor=False)
    want = reference_multi(anchor, candidates, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(
        torch.autograd.grad(got, (anchor, candidates)),
        torch.autograd.grad(want, (anchor, candidates)),
        strict=True,
    ):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_multi_positive_detaches_the_anchor_by_default():
    anchor = _tokens((3, 4), 12).requires_grad_(True)
    candidates = _tokens((3, 2, 4), 13).requires_grad_(True)
    loss = multi_positive_info_nce(anchor, candidates, 5.0)
    torch.testing.assert_close(loss, reference_multi(anchor, candidates, 5.0).detach(), rtol=1e-6, atol=0)
    loss.backward()
    assert anchor.grad is None and candidates.grad is not None and candidates.grad.abs().sum() > 0
    (want,) = torch.autograd.grad(reference_multi(anchor.detach(), candidates, 5.0), candidates)
    torch.testing.assert_close(candidates.grad, want, rtol=1e-6, atol=1e-12)


def test_multi_positive_count_normalisation_and_gradcheck():
    # identical embeddings: log(B S) - (log S - log S) one way (the log S makes the positive term
    # a log-mean, not a log-sum), log B the other
    same = torch.ones(5, 4, 3, dtype=torch.float64)
    want = torch.tensor(0.5 * (math.log(20) + math.log(5)), dtype=torch.float64)
    torch.testing.assert_close(multi_positive_info_nce(same[:, 0], same, 3.0), want)
    anchor = _tokens((3, 3), 14).requires_grad_(True)
    candidates = _tokens((3, 2, 3), 15).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, y: multi_positive_info_nce(x, y, 4.0, detach_anchor=False), (anchor, candidates)
    )


def test_multi_positive_dtypes():
    anchor, candidates = _tokens((6, 8), 16), _tokens((6, 4, 8), 17)
    want = multi_positive_info_nce(anchor, candidates, 10.0)
    got = multi_positive_info_nce(anchor.float(), candidates.float(), 10.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
    assert torch.isfinite(multi_positive_info_nce(anchor.bfloat16(), candidates.bfloat16(), 10.0))


def test_multi_positive_errors():
    anchor, candidates = torch.randn(3, 4), torch.randn(3, 2, 4)
    with pytest.raises(InputError, match="'candidates'.*\\(B, S, D\\)"):
        multi_positive_info_nce(anchor, candidates[:, 0], 1.0)
    with pytest.raises(InputError, match="'candidates'.*3 rows"):
        multi_positive_info_nce(anchor, candidates[:2], 1.0)
    with pytest.raises(InputError, match="'candidates'.*embedding size 4"):
        multi_positive_info_nce(anchor, candidates[..., :3], 1.0)
    with pytest.raises(InputError, match="'anchor'.*NaN"):
        multi_positive_info_nce(anchor.clone().fill_(float("inf")), candidates, 1.0)
    with pytest.raises(InputError, match="'detach_anchor'"):
        multi_positive_info_nce(anchor, candidates, 1.0, detach_anchor="no")
    with pytest.raises(InputError, match="at least one negative"):
        multi_positive_info_nce(anchor[:1], candidates[:1], 1.0)
    with pytest.raises(InputError, match="empty"):
        multi_positive_info_nce(anchor[:0], candidates[:0], 1.0)
