"""Evaluation triggers: the BadNet patch and the blended trigger, on float images in [0, 1].

These exist to *measure* backdoors (attack success rate, detector AUROC) in experiments and
red-team tests; they are the only attack code in the library (METHODS 3.6).
"""

from __future__ import annotations

import numbers
from typing import Protocol

import torch

from contrastkit.errors import InputError, check_range, check_tensor


class Trigger(Protocol):
    """A trigger: float images (N, C, H, W) or (C, H, W) in [0, 1] -> triggered copies, same shape.

    ``generator`` feeds any random draw (e.g. a random patch position); deterministic triggers
    ignore it. ``functools.partial(badnet_patch, size=8)`` and
    ``functools.partial(blended_trigger, pattern=p)`` are triggers.
    """

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor: ...


def check_unit_images(fn: str, images: object) -> torch.Tensor:
    """A finite float (N, C, H, W) or (C, H, W) tensor with values in [0, 1], as (N, C, H, W)."""
    images = check_tensor(fn, "images", images)
    if images.dim() not in (3, 4) or images.numel() == 0:
        raise InputError(
            f"{fn}: argument 'images' must be a non-empty (N, C, H, W) or (C, H, W) tensor; "
            f"got shape {tuple(images.shape)}."
        )
    low, high = float(images.min()), float(images.max())
    if not (0.0 <= low and high <= 1.0):  # also catches NaN (every comparison is False)
        raise InputError(
            f"{fn}: argument 'images' must hold finite values in [0, 1]; got min {low}, max {high}. "
            f"Undo the model's (x - 0.5) / 0.5 normalisation first (x * 0.5 + 0.5)."
        )
    return images if images.dim() == 4 else images[None]


def _check_pattern(fn: str, pattern: object, shape: tuple[int, ...]) -> torch.Tensor:
    pattern = check_tensor(fn, "pattern", pattern)
    if tuple(pattern.shape) != shape:
        raise InputError(f"{fn}: argument 'pattern' must have shape {shape}; got {tuple(pattern.shape)}.")
    if not bool(((pattern >= 0) & (pattern <= 1)).all()):
        raise InputError(f"{fn}: argument 'pattern' must hold finite values in [0, 1].")
    return pattern


def checkerboard(channels: int, size: int) -> torch.Tensor:
    """The default BadNet pattern: (channels, size, size) float32, 1 where row + col is even, else 0."""
    rows = torch.arange(size)
    board = ((rows[:, None] + rows[None, :]) % 2 == 0).float()
    return board.expand(channels, size, size).clone()


def _patch_corners(
    fn: str, position: object, n: int, height: int, width: int, size: int, generator: torch.Generator | None
) -> list[tuple[int, int]]:
    """The (top, left) corner of the patch in each of the n images."""
    if position == "center":
        return [((height - size) // 2, (width - size) // 2)] * n
    if position == "random":
        tops = torch.randint(0, height - size + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, width - size + 1, (n,), generator=generator).tolist()
        return list(zip(tops, lefts, strict=True))
    valid = (
        isinstance(position, tuple)
        and len(position) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in position)
    )
    if not valid:
        raise InputError(
            f"{fn}: argument 'position' must be 'center', 'random' or a (row, col) tuple of ints; "
            f"got {position!r}."
        )
    top, left = int(position[0]), int(position[1])
    if not (0 <= top <= height - size and 0 <= left <= width - size):
        raise InputError(
            f"{fn}: a {size}x{size} patch at (row, col) = {position} does not fit in {height}x{width} "
            f"images; use row in [0, {height - size}] and col in [0, {width - size}]."
        )
    return [(top, left)] * n


def badnet_patch(
    images: torch.Tensor,
    size: int = 16,
    position: str | tuple[int, int] = "center",
    pattern: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Paste a size x size patch into copies of the images (BadNets, Gu et al., arXiv 1708.06733).

        x'[:, top:top+size, left:left+size] = pattern;   every other pixel unchanged.

    Args:
        images: (N, C, H, W) or (C, H, W) float in [0, 1] (un-normalised pixels).
        size: patch side in pixels (METHODS 3.6: 16, at the image centre).
        position: "center" (top-left corner at ((H - size) // 2, (W - size) // 2)), "random" (a
            corner drawn uniformly per image from ``generator``) or a fixed (row, col) corner.
        pattern: (C, size, size) values in [0, 1]; default a checkerboard (1 where row + col is even).
        generator: the random source of ``position="random"``.

    Returns:
        A new tensor of the shape and dtype of ``images``.
    """
    fn = "badnet_patch"
    batch = check_unit_images(fn, images)
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise InputError(f"{fn}: argument 'size' must be an int >= 1; got {size!r}.")
    n, channels, height, width = batch.shape
    if size > height or size > width:
        raise InputError(
            f"{fn}: a {size}x{size} patch does not fit in {height}x{width} images; "
            f"use size <= {min(height, width)}."
        )
    if pattern is None:
        pattern = checkerboard(channels, size)
    pattern = _check_pattern(fn, pattern, (channels, size, size)).to(batch.device, batch.dtype)
    out = batch.clone()
    for i, (top, left) in enumerate(_patch_corners(fn, position, n, height, width, size, generator)):
        out[i, :, top : top + size, left : left + size] = pattern
    return out if images.dim() == 4 else out[0]


def blended_trigger(
    images: torch.Tensor, pattern: torch.Tensor, alpha: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Blend a full-size pattern into copies of the images (Chen et al. 2017, arXiv 1712.05526).

        x' = (1 - alpha) x + alpha * pattern

    Args:
        images: (N, C, H, W) or (C, H, W) float in [0, 1].
        pattern: (C, H, W) values in [0, 1] (e.g. fixed uniform noise, drawn once).
        alpha: blend weight in (0, 1].
        generator: unused (the blend is deterministic); accepted so that the function is a ``Trigger``.

    Returns:
        A new tensor of the shape and dtype of ``images``.
    """
    fn = "blended_trigger"
    batch = check_unit_images(fn, images)
    alpha = check_range(fn, "alpha", alpha, 0.0, 1.0)
    if alpha == 0.0:
        raise InputError(f"{fn}: argument 'alpha' must be > 0 (alpha = 0 leaves the images unchanged).")
    pattern = _check_pattern(fn, pattern, tuple(batch.shape[1:])).to(batch.device, batch.dtype)
    out = (1.0 - alpha) * batch + alpha * pattern
    return out if images.dim() == 4 else out[0]
