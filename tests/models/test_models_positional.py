"""stretch_positional_embedding against a float64 loop written from the formula; the tower helper."""

from __future__ import annotations

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.models import (
    TextTransformer,
    stretch_positional_embedding,
    stretch_text_positions,
    stretched_length,
)


def reference(P: torch.Tensor, keep: int, factor: int) -> torch.Tensor:
    """The METHODS 3.1 formula, one row at a time (float64)."""
    L = P.shape[0]
    rows = [P[i] for i in range(keep)]
    for i in range(L - keep - 1):
        for j in range(factor):
            rows.append(((factor - j) / factor) * P[keep + i] + (j / factor) * P[keep + i + 1])
    for j in range(factor):
        rows.append(P[L - 1] + (j / factor) * (P[L - 1] - P[L - 2]))
    return torch.stack(rows)


def table(L: int, D: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, D, generator=g, dtype=torch.float64).requires_grad_()


def test_long_clip_77_to_248_matches_formula():
    P = table(77, 12)
    out = stretch_positional_embedding(P)
    assert out.shape == (248, 12) and stretched_length(77) == 248
    torch.testing.assert_close(out, reference(P, 20, 4), atol=1e-12, rtol=0)
    # spot checks written out from METHODS 3.1
    torch.testing.assert_close(out[19], P[19])
    torch.testing.assert_close(out[20 + 4 * 55 + 3], 0.25 * P[75] + 0.75 * P[76])
    torch.testing.assert_close(out[244], P[76])
    torch.testing.assert_close(out[247], P[76] + 0.75 * (P[76] - P[75]))


@pytest.mark.parametrize(("L", "keep", "factor"), [(10, 3, 2), (16, 0, 3), (5, 4, 4), (2, 0, 1), (30, 20, 1)])
def test_other_sizes_match_formula(L, keep, factor):
    P = table(L, 5, seed=L)
    out = stretch_positional_embedding(P, keep=keep, factor=factor)
    assert out.shape == (stretched_length(L, keep, factor), 5) == (keep + factor * (L - keep), 5)
    torch.testing.assert_close(out, reference(P, keep, factor), atol=1e-12, rtol=0)


def test_factor_one_is_identity():
    P = table(9, 4)
    torch.testing.assert_close(stretch_positional_embedding(P, keep=3, factor=1), P, atol=0, rtol=0)


def test_gradient_matches_reference_and_gradcheck():
    P = table(12, 3)
    w = torch.randn(stretched_length(12, 4, 3), 3, dtype=torch.float64)
    got = torch.autograd.grad((stretch_positional_embedding(P, 4, 3) * w).sum(), P)[0]
    want = torch.autograd.grad((reference(P, 4, 3) * w).sum(), P)[0]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda p: stretch_positional_embedding(p, 2, 3), (table(6, 2),))


def test_leading_batch_dim_is_kept():
    P = table(8, 4)
    out = stretch_positional_embedding(P[None], keep=2, factor=2)
    assert out.shape == (1, 14, 4)
    torch.testing.assert_close(out[0], reference(P, 2, 2), atol=1e-12, rtol=0)


def test_stretch_text_positions_on_a_tower():
    torch.manual_seed(0)
    tower = TextTransformer(50, max_length=16, dim=8, depth=1, heads=2)
    old = tower.pos_embed.detach().clone()
    batch = {
        "input_ids": torch.randint(3, 50, (2, 10)),
        "attention_mask": torch.ones(2, 10, dtype=torch.int64),
    }
    stretch_text_positions(tower, keep=10, factor=4)
    assert tower.max_length == 34 and tower.pos_embed.shape == (1, 34, 8)
    assert isinstance(tower.pos_embed, torch.nn.Parameter) and getattr(
        tower.pos_embed, "no_weight_decay", False
    )
    torch.testing.assert_close(tower.pos_embed[0, :10], old[0, :10])
    torch.testing.assert_close(tower.pos_embed.detach(), stretch_positional_embedding(old, 10, 4))
    long_batch = {
        "input_ids": torch.randint(3, 50, (2, 34)),
        "attention_mask": torch.ones(2, 34, dtype=torch.int64),
    }
    (tower(long_batch) * torch.randn(2, 8)).sum().backward()
    assert tower.pos_embed.grad is not None and tower.pos_embed.grad[0, 30:].abs().sum() > 0
    assert tower(batch).shape == (2, 8)
    assert "pos_embed" in dict(tower.named_parameters())


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((torch.zeros(1, 4),), "'P'"),
        ((torch.zeros(5),), "'P'"),
        ((torch.zeros(5, 2, dtype=torch.int64),), "'P'"),
        ((torch.zeros(5, 2), 5), "'keep'"),
        ((torch.zeros(5, 2), -1), "'keep'"),
        ((torch.zeros(5, 2), 2, 0), "'factor'"),
        ((torch.zeros(5, 2), 2, 1.5), "'factor'"),
    ],
)
def test_bad_arguments(args, name):
    with pytest.raises(InputError, match=name):
        stretch_positional_embedding(*args)


def test_stretch_text_positions_rejects_other_modules():
    with pytest.raises(InputError, match="'tower'"):
        stretch_text_positions(torch.nn.Linear(2, 2))
