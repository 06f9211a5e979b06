"""PristinePrototype against float64 hand references (cosine and shrunk Mahalanobis)."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.eval.prototype import PristinePrototype


def _rows(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) * torch.linspace(0.5, 2.0, d, dtype=dtype) + 0.3


def ref_cosine(clean: torch.Tensor, z: torch.Tensor) -> list[float]:
    n, d = clean.shape
    mean = [sum(float(clean[i, k]) for i in range(n)) / n for k in range(d)]
    norm_mu = math.sqrt(sum(m * m for m in mean))
    out = []
    for row in z.tolist():
        dot = sum(r * m for r, m in zip(row, mean, strict=True))
        out.append(1 - dot / (math.sqrt(sum(r * r for r in row)) * norm_mu))
    return out


def ref_mahalanobis(clean: torch.Tensor, z: torch.Tensor, shrinkage: float) -> list[float]:
    n, d = clean.shape
    x = clean.tolist()
    mean = [sum(x[i][k] for i in range(n)) / n for k in range(d)]
    cov = [
        [sum((x[i][a] - mean[a]) * (x[i][b] - mean[b]) for i in range(n)) / (n - 1) for b in range(d)]
        for a in range(d)
    ]
    scale = sum(cov[k][k] for k in range(d)) / d
    shrunk = torch.tensor(
        [
            [(1 - shrinkage) * cov[a][b] + (shrinkage * scale if a == b else 0.0) for b in range(d)]
            for a in range(d)
        ],
        dtype=torch.float64,
    )
    precision = torch.linalg.inv(shrunk).tolist()
    out = []
    for row in z.tolist():
        diff = [r - m for r, m in zip(row, mean, strict=True)]
        out.append(math.sqrt(sum(diff[a] * precision[a][b] * diff[b] for a in range(d) for b in range(d))))
    return out


def test_cosine_matches_hand_reference() -> None:
    clean, z = _rows(20, 5, seed=0), _rows(7, 5, seed=1) - 0.5
    got = PristinePrototype().fit(clean).score(z)
    assert got.dtype == torch.float64 and got.shape == (7,)
    torch.testing.assert_close(
        got, torch.tensor(ref_cosine(clean, z), dtype=torch.float64), rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 1.0])
def test_mahalanobis_matches_hand_reference(shrinkage: float) -> None:
    clean, z = _rows(30, 4, seed=2), _rows(6, 4, seed=3) * 1.5
    got = PristinePrototype("mahalanobis", shrinkage=shrinkage).fit(clean).score(z)
    want = torch.tensor(ref_mahalanobis(clean, z, shrinkage), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_hand_cases() -> None:
    # cosine: the prototype of (1, 0) and (0, 1) is (1, 1)/sqrt 2; (1, 1) scores 0, (-1, -1) scores 2
    proto = PristinePrototype().fit(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(
        proto.score(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])),
        torch.tensor([0.0, 2.0, 1 - 2**-0.5]),
    )
    # Mahalanobis with shrinkage 1 and unit-variance clean rows: the Euclidean distance to the mean
    clean = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]) * math.sqrt(0.75)
    maha = PristinePrototype("mahalanobis", shrinkage=1.0).fit(clean)
    torch.testing.assert_close(maha.score(torch.tensor([[3.0, 4.0]])), torch.tensor([5.0]))


def test_float32_and_bf16() -> None:
    clean, z = _rows(40, 6, seed=4), _rows(9, 6, seed=5)
    for metric in ("cosine", "mahalanobis"):
        want = PristinePrototype(metric).fit(clean).score(z)
        got = PristinePrototype(metric).fit(clean.float()).score(z.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
        half = PristinePrototype(metric).fit(clean.bfloat16()).score(z.bfloat16())
        assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_scores_rank_shifted_rows_higher() -> None:
    clean = _rows(200, 8, seed=6)
    shifted = _rows(50, 8, seed=7) + 3.0 * torch.linspace(-1, 1, 8, dtype=torch.float64)
    for metric in ("cosine", "mahalanobis"):
        proto = PristinePrototype(metric).fit(clean)
        assert proto.score(shifted).mean() > proto.score(_rows(50, 8, seed=8)).mean()


def test_errors() -> None:
    clean = _rows(10, 4, seed=9)
    with pytest.raises(InputError, match="metric"):
        PristinePrototype("euclid")
    with pytest.raises(InputError, match="shrinkage"):
        PristinePrototype("mahalanobis", shrinkage=1.5)
    for metric in ("cosine", "mahalanobis"):
        with pytest.raises(InputError, match="not fitted; call fit"):
            PristinePrototype(metric).score(clean)
        proto = PristinePrototype(metric).fit(clean)
        with pytest.raises(InputError, match="embedding size 4"):
            proto.score(clean[:, :3])
        bad = clean.clone()
        bad[2, 1] = float("inf")
        with pytest.raises(InputError, match="'z'.*NaN/inf"):
            proto.score(bad)
        with pytest.raises(InputError, match="'z_clean'.*NaN/inf"):
            PristinePrototype(metric).fit(bad)
        with pytest.raises(InputError, match="empty"):
            PristinePrototype(metric).fit(clean[:0])
    with pytest.raises(InputError, match="at least 2 rows"):
        PristinePrototype("mahalanobis").fit(clean[:1])
    with pytest.raises(InputError, match="singular"):
        PristinePrototype("mahalanobis", shrinkage=0.0).fit(clean[:3])  # n <= D
    with pytest.raises(InputError, match="all-zero"):
        PristinePrototype().fit(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))  # the mean is 0
    with pytest.raises(InputError, match="all-zero"):
        PristinePrototype().fit(clean).score(torch.zeros(2, 4))
