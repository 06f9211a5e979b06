"""compute_dtype, the exact softplus, and the similarity matrices."""

import math

import pytest
import torch

from contrastkit.functional import compute_dtype, cosine_logits, scaled_logits, softplus


def test_compute_dtype():
    f64, f32, bf16 = (torch.zeros(1, dtype=d) for d in (torch.float64, torch.float32, torch.bfloat16))
    assert compute_dtype(f32, f64) == torch.float64
    assert compute_dtype(bf16) == torch.float32
    assert compute_dtype(bf16, f32) == torch.float32


@pytest.mark.parametrize("x", [-700.0, -40.0, -1.0, 0.0, 1e-8, 3.0, 19.9, 20.0, 25.0, 40.0, 700.0])
def test_softplus_is_exact_in_float64(x):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = softplus(t)
    want = max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    assert float(y.detach()) == pytest.approx(want, rel=1e-15, abs=1e-300)
    y.backward()
    assert float(t.grad) == pytest.approx(1 / (1 + math.exp(-x)), rel=1e-14)


def test_softplus_float32_does_not_overflow():
    x = torch.tensor([-200.0, 0.0, 200.0])
    assert torch.equal(softplus(x), torch.tensor([0.0, math.log(2.0), 200.0]))


def test_logits_against_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64)
    got = scaled_logits(x, y, 2.5, -1.0)
    cos = cosine_logits(x, y, 3.0)
    for i in range(3):
        for j in range(5):
            dot = sum(float(x[i, d] * y[j, d]) for d in range(4))
            assert float(got[i, j]) == pytest.approx(2.5 * dot - 1.0, abs=1e-12)
            norm = math.sqrt(float((x[i] ** 2).sum()) * float((y[j] ** 2).sum()))
            assert float(cos[i, j]) == pytest.approx(3.0 * dot / norm, abs=1e-12)


def test_half_logits_are_float32():
    x = torch.randn(2, 3).to(torch.bfloat16)
    assert scaled_logits(x, x, 1.0).dtype == torch.float32
    assert cosine_logits(x, x).dtype == torch.float32
