"""Alignment, uniformity, modality gap and matched cosine against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import (
    alignment_loss,
    mean_matched_cosine,
    modality_gap,
    representation_metrics,
    uniformity,
)


def _rows(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(v: torch.Tensor) -> list[float]:
    norm = math.sqrt(sum(float(a) ** 2 for a in v))
    return [float(a) / norm for a in v]


def _ref_alignment(x, y, alpha) -> float:
    total = 0.0
    for a, b in zip(x, y, strict=True):
        total += math.sqrt(sum((p - q) ** 2 for p, q in zip(_unit(a), _unit(b), strict=True))) ** alpha
    return total / len(x)


def _ref_uniformity(x, t) -> float:
    u = [_unit(a) for a in x]
    terms = [
        -t * sum((p - q) ** 2 for p, q in zip(u[i], u[j], strict=True))
        for i in range(len(u))
        for j in range(len(u))
        if i != j
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(v - top) for v in terms) / len(terms))


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_reference(alpha):
    x, y = _rows(9), _rows(9, seed=1)
    assert alignment_loss(x, y, alpha=alpha) == pytest.approx(_ref_alignment(x, y, alpha), abs=1e-13)


@pytest.mark.parametrize("t", [0.5, 2.0, 40.0])
@pytest.mark.parametrize("chunk_size", [1, 4, 10, 1000])
def test_uniformity_matches_reference(t, chunk_size):
    x = _rows(10)
    assert uniformity(x, t=t, chunk_size=chunk_size) == pytest.approx(_ref_uniformity(x, t), abs=1e-12)


def test_uniformity_equals_the_pdist_form_of_wang_and_isola():
    x = torch.nn.functional.normalize(_rows(12), dim=1)
    want = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()
    assert uniformity(x) == pytest.approx(float(want), abs=1e-13)


def test_hand_computed_cases():
    e = torch.eye(3, dtype=torch.float64)
    assert uniformity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)) == pytest.approx(-8.0)
    assert uniformity(torch.ones(4, 3)) == pytest.approx(0.0, abs=1e-6)  # collapsed: every distance is 0
    assert alignment_loss(e, 5 * e) == 0.0
    assert alignment_loss(e, -e) == pytest.approx(4.0)
    assert modality_gap(e[:1].repeat(3, 1), e[1:2].repeat(5, 1)) == pytest.approx(math.sqrt(2))
    assert modality_gap(e, 2 * e) == 0.0
    assert mean_matched_cosine(e, 3 * e) == 1.0
    assert mean_matched_cosine(e, e.roll(1, dims=0)) == 0.0


def test_modality_gap_and_matched_cosine_match_reference():
    x, y = _rows(7), _rows(4, seed=2) + 1.0
    ux, uy = [_unit(a) for a in x], [_unit(b) for b in y]
    cx = [sum(col) / len(ux) for col in zip(*ux, strict=True)]
    cy = [sum(col) / len(uy) for col in zip(*uy, strict=True)]
    assert modality_gap(x, y) == pytest.approx(math.dist(cx, cy), abs=1e-14)
    y = _rows(7, seed=3)
    want = (
        sum(sum(p * q for p, q in zip(_unit(a), _unit(b), strict=True)) for a, b in zip(x, y, strict=True))
        / 7
    )
    assert mean_matched_cosine(x, y) == pytest.approx(want, abs=1e-14)


def test_representation_metrics_collects_everything():
    x, y = _rows(8), _rows(8, seed=4)
    got = representation_metrics(x, y, chunk_size=3)
    assert got == {
        "alignment": alignment_loss(x, y),
        "uniformity_x": uniformity(x, chunk_size=3),
        "uniformity_y": uniformity(y, chunk_size=3),
        "modality_gap": modality_gap(x, y),
        "matched_cosine": mean_matched_cosine(x, y),
    }
    assert representation_metrics(x.float(), y.float())["alignment"] == pytest.approx(
        got["alignment"], rel=1e-5
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: alignment_loss(_rows(4), _rows(3)), "alignment_loss: argument 'y' must have 4 rows"),
        (lambda: alignment_loss(_rows(4), _rows(4), alpha=0), "'alpha' must be > 0"),
        (lambda: alignment_loss(_rows(4), _rows(4), alpha=-1.0), "'alpha' must be finite and >= 0.0"),
        (lambda: uniformity(_rows(1)), "uniformity: argument 'x' needs at least 2 rows"),
        (lambda: uniformity(_rows(3), t=0), "'t' must be > 0"),
        (lambda: uniformity(_rows(3), chunk_size=0), "'chunk_size' must be an int >= 1"),
        (lambda: uniformity(torch.zeros(0, 3)), "'x' is empty"),
        (
            lambda: modality_gap(_rows(3), _rows(3, d=4)),
            "modality_gap: argument 'y' must have embedding size 5",
        ),
        (lambda: modality_gap(_rows(3), torch.zeros(2, 5)), "'y' has 2 all-zero row"),
        (lambda: mean_matched_cosine(_rows(3).fill_(torch.nan), _rows(3)), "'x' contains 15 NaN"),
        (
            lambda: representation_metrics(_rows(3), _rows(2)),
            "representation_metrics: argument 'y' must have 3",
        ),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(InputError, match=match):
        call()
