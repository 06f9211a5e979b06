"""BadNet patch and blended trigger against pixel-loop references, and every error path."""

from __future__ import annotations

import functools

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.security.triggers import badnet_patch, blended_trigger, checkerboard


def _images(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ref_patch(images: torch.Tensor, pattern: torch.Tensor, corners: list[tuple[int, int]]) -> torch.Tensor:
    """Pixel by pixel: the pattern inside each image's window, the image elsewhere."""
    n, c, h, w = images.shape
    s = pattern.shape[-1]
    x, p = images.tolist(), pattern.tolist()
    for i in range(n):
        top, left = corners[i]
        for ch in range(c):
            for r in range(top, top + s):
                for col in range(left, left + s):
                    x[i][ch][r][col] = p[ch][r - top][col - left]
    return torch.tensor(x, dtype=images.dtype)


def test_checkerboard_by_hand():
    board = checkerboard(2, 3)
    assert board.shape == (2, 3, 3)
    assert board[0].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert torch.equal(board[0], board[1])


def test_center_patch_matches_the_pixel_loop():
    images = _images(2, 3, 7, 9)
    got = badnet_patch(images, size=3)
    # centre corner ((7 - 3) // 2, (9 - 3) // 2) = (2, 3)
    want = ref_patch(images, checkerboard(3, 3).double(), [(2, 3), (2, 3)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.dtype == torch.float64
    assert not torch.equal(got, images)  # a copy: the input is untouched
    torch.testing.assert_close(images, _images(2, 3, 7, 9), rtol=0, atol=0)


def test_fixed_position_and_given_pattern():
    images = _images(1, 2, 6, 6, seed=1)
    pattern = _images(2, 4, 4, seed=2)
    got = badnet_patch(images, size=4, position=(2, 0), pattern=pattern)
    torch.testing.assert_close(got, ref_patch(images, pattern, [(2, 0)]), rtol=0, atol=0)


def test_single_image_keeps_its_shape():
    image = _images(3, 8, 8)
    got = badnet_patch(image, size=8)
    assert got.shape == (3, 8, 8)
    torch.testing.assert_close(got, checkerboard(3, 8).double(), rtol=0, atol=0)  # the patch fills it


def test_random_position_is_a_valid_window_and_reproducible():
    images = torch.full((6, 3, 10, 12), 0.5, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = badnet_patch(images, size=4, position="random", generator=g1)
    assert torch.equal(got, badnet_patch(images, size=4, position="random", generator=g2))
    board = checkerboard(3, 4).double()
    corners = []
    for i in range(6):  # the one window where the checkerboard sits, everything else untouched
        found = []
        for t in range(10 - 4 + 1):
            for left in range(12 - 4 + 1):
                want = images[i].clone()
                want[:, t : t + 4, left : left + 4] = board
                if torch.equal(want, got[i]):
                    found.append((t, left))
        assert len(found) == 1
        corners.append(found[0])
    assert len(set(corners)) > 1  # positions vary across images


def test_blend_matches_the_formula_and_alpha_one_gives_the_pattern():
    images, pattern = _images(2, 3, 5, 5, seed=3), _images(3, 5, 5, seed=4)
    got = blended_trigger(images, pattern, alpha=0.3)
    want = torch.empty_like(images)
    for i in range(2):
        for ch in range(3):
            for r in range(5):
                for c in range(5):
                    want[i, ch, r, c] = 0.7 * images[i, ch, r, c] + 0.3 * pattern[ch, r, c]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(blended_trigger(images, pattern, alpha=1.0), pattern.expand_as(images))
    assert blended_trigger(images[0], pattern, alpha=0.3).shape == (3, 5, 5)


def test_float32_matches_float64_and_bf16_is_finite():
    images, pattern = _images(2, 3, 8, 8, seed=6), _images(3, 8, 8, seed=7)
    for fn in (lambda x: badnet_patch(x, size=4), lambda x: blended_trigger(x, pattern.to(x.dtype))):
        torch.testing.assert_close(fn(images.float()).double(), fn(images), rtol=1e-4, atol=1e-6)
        out = fn(images.bfloat16())
        assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())


def test_triggers_as_partials_take_a_generator():
    images = _images(1, 3, 8, 8)
    pattern = _images(3, 8, 8, seed=1)
    for trigger in (
        functools.partial(badnet_patch, size=2),
        functools.partial(blended_trigger, pattern=pattern),
    ):
        assert trigger(images, generator=torch.Generator().manual_seed(0)).shape == images.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 9}, "does not fit in 8x8 images; use size <= 8"),
        ({"size": 0}, "'size' must be an int >= 1"),
        ({"size": 2.0}, "'size' must be an int >= 1"),
        ({"size": True}, "'size' must be an int >= 1"),
        ({"size": 4, "position": (5, 0)}, "use row in [0, 4] and col in [0, 4]"),
        ({"size": 4, "position": (-1, 0)}, "does not fit"),
        ({"size": 4, "position": "corner"}, "'position' must be 'center', 'random' or a (row, col)"),
        ({"size": 4, "position": (1.0, 2)}, "'position' must be"),
        ({"size": 2, "pattern": torch.ones(3, 3, 3)}, "'pattern' must have shape (3, 2, 2)"),
        ({"size": 2, "pattern": torch.full((3, 2, 2), 2.0)}, "'pattern' must hold finite values in [0, 1]"),
    ],
)
def test_badnet_errors(kwargs, message):
    with pytest.raises(InputError, match="badnet_patch") as err:
        badnet_patch(_images(2, 3, 8, 8), **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 4, 4), 255.0), "values in [0, 1]; got min 255.0"),
        (torch.full((1, 3, 4, 4), -0.5), "Undo the model's (x - 0.5) / 0.5"),
        (torch.full((1, 3, 4, 4), float("nan")), "values in [0, 1]"),
        (torch.zeros(3, 4), "(N, C, H, W) or (C, H, W)"),
        (torch.zeros(0, 3, 4, 4), "non-empty"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "floating-point"),
        ([[0.5]], "must be a torch.Tensor"),
    ],
)
def test_image_errors(images, message):
    for call in (lambda: badnet_patch(images, size=1), lambda: blended_trigger(images, torch.zeros(3, 4, 4))):
        with pytest.raises(InputError) as err:
            call()
        assert message in str(err.value)


@pytest.mark.parametrize(
    ("alpha", "pattern", "message"),
    [
        (0.0, torch.zeros(3, 4, 4), "'alpha' must be > 0"),
        (1.5, torch.zeros(3, 4, 4), "'alpha' must be in [0.0, 1.0]"),
        ("0.1", torch.zeros(3, 4, 4), "'alpha' must be a float"),
        (0.1, torch.zeros(3, 5, 4), "'pattern' must have shape (3, 4, 4)"),
        (0.1, torch.full((3, 4, 4), float("inf")), "'pattern' must hold finite values"),
    ],
)
def test_blend_errors(alpha, pattern, message):
    with pytest.raises(InputError, match="blended_trigger") as err:
        blended_trigger(torch.zeros(1, 3, 4, 4), pattern, alpha=alpha)
    assert message in str(err.value)
