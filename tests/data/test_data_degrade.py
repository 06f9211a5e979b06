"""Degradations at severities 1-5 and composition ids, against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.data.degrade import (
    DEGRADATIONS,
    LEVELS,
    composition_id,
    degrade,
    gaussian_blur,
    jpeg,
    reduce_contrast,
)
from contrastkit.errors import InputError


def _images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


def _severities(**kinds: int) -> torch.Tensor:
    return torch.tensor([[kinds.get(kind, 0) for kind in DEGRADATIONS]])


def test_composition_ids_are_mixed_radix_and_unique() -> None:
    k = {kind: i for i, kind in enumerate(DEGRADATIONS)}
    assert composition_id(_severities()).item() == 0
    assert composition_id(_severities(noise=3)).item() == 3 * 6 ** k["noise"]
    assert composition_id(_severities(blur=2, jpeg=5)).item() == 2 * 6 ** k["blur"] + 5 * 6 ** k["jpeg"]
    grid = torch.cartesian_prod(*[torch.arange(6)] * len(DEGRADATIONS))
    assert composition_id(grid).unique().numel() == 6 ** len(DEGRADATIONS)


def test_gaussian_blur_matches_loop_reference() -> None:
    x = _images(1, 9, seed=1)
    sigma = 0.8
    radius = math.ceil(3 * sigma)
    w = [math.exp(-0.5 * (t / sigma) ** 2) for t in range(-radius, radius + 1)]
    w = [v / sum(w) for v in w]
    size = x.shape[-1]

    def reflect(i: int) -> int:
        return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)

    want = torch.zeros_like(x)
    for c in range(3):
        for i in range(size):
            for j in range(size):
                want[0, c, i, j] = sum(
                    w[a] * w[b] * x[0, c, reflect(i + a - radius), reflect(j + b - radius)]
                    for a in range(len(w))
                    for b in range(len(w))
                )
    torch.testing.assert_close(gaussian_blur(x, sigma), want, rtol=1e-10, atol=1e-12)
    flat = torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)


def test_contrast_hand_case() -> None:
    x = torch.tensor([0.0, 1.0, 0.5, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
    want = torch.tensor([0.25, 0.75, 0.5, 0.5], dtype=torch.float64).view(1, 1, 2, 2)
    torch.testing.assert_close(reduce_contrast(x, 0.5), want)


def test_jpeg_error_grows_as_quality_drops() -> None:
    x = gaussian_blur(_images(8, 32, seed=2), 1.0)  # smooth, image-like content
    errors = [float((jpeg(x, q) - x).abs().mean()) for q in (95, *LEVELS["jpeg"], 10)]
    assert errors[0] < errors[-1] and errors[1] < errors[5]
    assert jpeg(x, 80).dtype == x.dtype and jpeg(x, 80).shape == x.shape


def test_degrade_per_row_compositions(generator: torch.Generator) -> None:
    x = _images(4)
    severities = torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0], [0, 3, 0, 0], [0, 0, 5, 0]])
    out = degrade(x, severities, generator)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1:2], gaussian_blur(x[1:2], LEVELS["blur"][1]))
    torch.testing.assert_close(out[2:3], reduce_contrast(x[2:3], LEVELS["contrast"][2]))
    assert float((out[3] - x[3]).abs().max()) > 0 and float(out.min()) >= 0 and float(out.max()) <= 1


def test_noise_is_reproducible_and_grows_with_severity() -> None:
    x = torch.full((64, 3, 8, 8), 0.5, dtype=torch.float64)
    stds = []
    for s in range(1, 6):
        severities = torch.zeros(64, len(DEGRADATIONS), dtype=torch.long)
        severities[:, DEGRADATIONS.index("noise")] = s
        a = degrade(x, severities, torch.Generator().manual_seed(7))
        b = degrade(x, severities, torch.Generator().manual_seed(7))
        torch.testing.assert_close(a, b)
        stds.append(float((a - x).std()))
        assert abs(stds[-1] - LEVELS["noise"][s - 1]) < 0.1 * LEVELS["noise"][s - 1]
    assert stds == sorted(stds)


def test_every_kind_moves_the_image_further_at_higher_severity() -> None:
    x = gaussian_blur(_images(16, 32, seed=3), 0.7)
    for k, kind in enumerate(DEGRADATIONS):
        change = []
        for s in (1, 5):
            severities = torch.zeros(16, len(DEGRADATIONS), dtype=torch.long)
            severities[:, k] = s
            change.append(float((degrade(x, severities, torch.Generator().manual_seed(0)) - x).abs().mean()))
        assert 0 < change[0] < change[1], kind


def test_errors() -> None:
    x = _images(2)
    ok = torch.zeros(2, len(DEGRADATIONS), dtype=torch.long)
    with pytest.raises(InputError, match="severities.*shape"):
        degrade(x, ok[:1])
    with pytest.raises(InputError, match="severities.*0..5"):
        degrade(x, ok + 6)
    with pytest.raises(InputError, match="severities.*integer"):
        composition_id(ok.float())
    with pytest.raises(InputError, match="images.*\\[0, 1\\].*values in \\[0.*, 2"):
        degrade(x * 2, ok)
    with pytest.raises(InputError, match="degrade: argument 'images' of size \\(3, 3\\) is too small"):
        degrade(torch.rand(1, 3, 3, 3), torch.tensor([[5, 0, 0, 0]]))
    assert degrade(torch.rand(1, 3, 3, 3), torch.tensor([[2, 0, 0, 0]])).shape == (1, 3, 3, 3)
    with pytest.raises(InputError, match="images.*\\(N, 3, H, W\\)"):
        degrade(x[0], ok)
    with pytest.raises(InputError, match="NaN"):
        degrade(x.clone().fill_(float("nan")), ok)
