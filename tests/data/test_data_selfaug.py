"""SelfAugmentedNegatives (TDoc, METHODS 3.7): the minimum-change constraint, seeding, dropping, errors."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.data.selfaug import (
    DEFAULT_AUGMENTATIONS,
    SelfAugmentedNegatives,
    change_statistics,
    gaussian_blur,
    invert_colors,
    shift_or_crop,
    shuffle_channels,
)
from contrastkit.errors import InputError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text_like_crop(h: int = 12, w: int = 20, seed: int = 0) -> torch.Tensor:
    """uint8 (3, h, w): a light background with dark strokes."""
    g = gen(seed)
    image = torch.full((3, h, w), 220, dtype=torch.uint8)
    strokes = torch.rand(h, w, generator=g) < 0.3
    image[:, strokes] = torch.tensor([30, 60, 90], dtype=torch.uint8)[:, None]
    return image


def ref_statistics(original: torch.Tensor, copy: torch.Tensor) -> tuple[float, float]:
    """Loops over pixels, 0-255 units: changed = some channel moved by more than 0.5 levels."""
    unit = 255.0 if original.is_floating_point() else 1.0
    c, h, w = original.shape
    squares, changed = 0.0, 0
    for y in range(h):
        for x in range(w):
            moved = False
            for k in range(c):
                d = (float(copy[k, y, x]) - float(original[k, y, x])) * unit
                squares += d * d
                moved = moved or abs(d) > 0.5
            changed += moved
    return changed / (h * w), math.sqrt(squares / (c * h * w))


def test_change_statistics_matches_loop() -> None:
    a, b = text_like_crop(seed=1), text_like_crop(seed=2)
    for x, y in ((a, b), (a.float() / 255, b.float() / 255)):
        got = change_statistics(x, y)
        want = ref_statistics(x, y)
        assert got[0] == pytest.approx(want[0], rel=1e-9) and got[1] == pytest.approx(want[1], rel=1e-9)
    assert change_statistics(a, a) == (0.0, 0.0)


@pytest.mark.parametrize("as_float", [False, True])
def test_every_copy_meets_the_minimum_change(as_float: bool) -> None:
    image = text_like_crop(seed=3)
    if as_float:
        image = image.float() / 255
    out = SelfAugmentedNegatives(count=20, generator=gen(4))(image)
    assert out.copies.dtype == image.dtype and out.copies.shape[1:] == image.shape
    assert out.copies.shape[0] + out.dropped == 20
    assert out.copies.shape[0] >= 15  # a text crop is easy to change
    for copy in out.copies:
        changed, rms = ref_statistics(image, copy)
        assert changed >= 0.05 and rms >= 15.0
        if as_float:
            assert float(copy.min()) >= 0.0 and float(copy.max()) <= 1.0


def test_strict_thresholds_are_enforced() -> None:
    image = text_like_crop(8, 10, seed=5)
    negs = SelfAugmentedNegatives(count=20, min_changed_fraction=0.6, min_rms=60.0, generator=gen(6))
    out = negs(image)
    for copy in out.copies:
        changed, rms = ref_statistics(image, copy)
        assert changed >= 0.6 and rms >= 60.0
    loose = SelfAugmentedNegatives(count=30, min_changed_fraction=0.0, min_rms=0.0, generator=gen(6))(image)
    assert loose.dropped == 0
    one_try = SelfAugmentedNegatives(
        count=30, min_changed_fraction=0.6, min_rms=60.0, max_tries=1, generator=gen(6)
    )
    assert one_try(image).dropped > 0  # blur, shift and mild jitters fail the strict bound


def test_unchangeable_copies_are_dropped_and_counted() -> None:
    blank = torch.full((3, 8, 8), 128, dtype=torch.uint8)  # a grey crop: blur and shuffle change nothing
    out = SelfAugmentedNegatives([gaussian_blur, shuffle_channels], count=5, max_tries=3, generator=gen())(
        blank
    )
    assert out.copies.shape == (0, 3, 8, 8) and out.dropped == 5
    inverted = SelfAugmentedNegatives([invert_colors], count=4, generator=gen())(blank)
    assert inverted.dropped == 4  # 128 -> 127: 1 level, RMS 1 < 15
    dark = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert SelfAugmentedNegatives([invert_colors], count=4)(dark).copies.shape[0] == 4


def test_seeded_draws_are_deterministic() -> None:
    image = text_like_crop(seed=7)
    negs = SelfAugmentedNegatives(count=8)
    first, second = negs(image, gen(11)), negs(image, gen(11))
    assert torch.equal(first.copies, second.copies) and first.dropped == second.dropped
    assert not torch.equal(first.copies, negs(image, gen(12)).copies)
    own = SelfAugmentedNegatives(count=8, generator=gen(11))(image)
    assert torch.equal(own.copies, first.copies)


def test_every_default_augmentation_keeps_shape_and_range() -> None:
    x = text_like_crop(seed=8).float() / 255
    for augmentation in DEFAULT_AUGMENTATIONS:
        for seed in range(4):
            y = augmentation(x, gen(seed))
            assert y.shape == x.shape, augmentation.__name__
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6, augmentation.__name__
    assert torch.equal(invert_colors(x), 1 - x)
    shuffled = shuffle_channels(x, gen(0))
    assert not torch.equal(shuffled, x)
    assert sorted(shuffled.sum((1, 2)).tolist()) == sorted(x.sum((1, 2)).tolist())
    constant = torch.full((3, 6, 9), 0.4)
    torch.testing.assert_close(gaussian_blur(constant, gen()), constant)
    torch.testing.assert_close(shift_or_crop(constant, gen(1)), constant)


def test_errors() -> None:
    image = text_like_crop()
    cases = [
        (lambda: SelfAugmentedNegatives([]), "'augmentations'"),
        (lambda: SelfAugmentedNegatives(["blur"]), "'augmentations'"),
        (lambda: SelfAugmentedNegatives(count=0), "'count'"),
        (lambda: SelfAugmentedNegatives(max_tries=1.5), "'max_tries'"),
        (lambda: SelfAugmentedNegatives(min_changed_fraction=1.5), "'min_changed_fraction'"),
        (lambda: SelfAugmentedNegatives(min_rms=-1.0), "'min_rms'"),
        (lambda: SelfAugmentedNegatives(generator=0), "'generator'"),
        (lambda: SelfAugmentedNegatives()(image[:2]), r"shape \(3, H, W\)"),
        (lambda: SelfAugmentedNegatives()(image[0]), r"shape \(3, H, W\)"),
        (lambda: SelfAugmentedNegatives()(image.long()), "uint8"),
        (lambda: SelfAugmentedNegatives()(image.float()), r"in \[0, 1\]"),
        (lambda: SelfAugmentedNegatives()(torch.full((3, 4, 4), float("nan"))), "NaN"),
        (lambda: SelfAugmentedNegatives([lambda x, g: x[:, :2]])(image), "must return a tensor"),
    ]
    for make, message in cases:
        with pytest.raises(InputError, match=message) as info:
            make()
        assert "SelfAugmentedNegatives" in str(info.value)
