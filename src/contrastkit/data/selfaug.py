"""Self-augmented hard negatives: altered copies of a crop that must count as a different style.

TDoc (arXiv 2602.17322; METHODS 3.7) adds up to 20 augmented copies of each anchor crop to its
negatives: same characters, different look (colour inversion, hue/contrast, blur, RGB shift,
channel shuffle, small shift or crop). A copy counts only if it changed enough: at least 5% of
its pixels differ and the RMS difference is at least 15 grey levels (0-255 units); otherwise it is
redrawn. Every random draw goes through the ``torch.Generator`` passed in.

Images are RGB tensors (3, H, W), either uint8 (0-255) or floating in [0, 1]; the copies come
back in the input's dtype (uint8 copies are rounded), and the change is measured on the copy as
returned. The augmentations themselves work on float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_finite, check_generator, check_range, check_tensor

Augmentation = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

# A pixel counts as changed when some channel moved by more than half a grey level (0-255 units).
CHANGED_PIXEL_LEVELS = 0.5


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """A uniform int in {0, ..., high - 1}."""
    return int(torch.randint(high, (), generator=generator))


def invert_colors(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x -> 1 - x.  x: (3, H, W) float in [0, 1] (the generator is unused: no randomness)."""
    return 1.0 - x


def jitter_hue_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate the hue by theta ~ U(-pi, pi) about the grey axis, then scale the contrast about the
    mean grey by a factor ~ U(0.4, 1.6).  x: (3, H, W) float in [0, 1]."""
    theta = _uniform(-math.pi, math.pi, generator)
    cos, sin = math.cos(theta), math.sin(theta)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
    rotation = cos * torch.eye(3) + (1 - cos) / 3 * torch.ones(3, 3) + sin / math.sqrt(3) * cross
    y = torch.einsum("ij,jhw->ihw", rotation.to(x), x)
    mean = y.mean()
    return ((y - mean) * _uniform(0.4, 1.6, generator) + mean).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Separable Gaussian blur, sigma ~ U(0.8, 2.0) pixels, edges replicated.  x: (3, H, W)."""
    sigma = _uniform(0.8, 2.0, generator)
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return y[0]


def shift_rgb(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add an offset ~ U(-0.25, 0.25) (about +-64 grey levels) to each channel, clipped to [0, 1]."""
    offsets = torch.rand(x.shape[0], generator=generator) * 0.5 - 0.25
    return (x + offsets.to(x)[:, None, None]).clamp(0.0, 1.0)


def shuffle_channels(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute the channels with a uniformly drawn permutation other than the identity."""
    order = torch.arange(x.shape[0])
    while torch.equal(order, torch.arange(x.shape[0])):
        order = torch.randperm(x.shape[0], generator=generator)
    return x[order.to(x.device)]


def shift_or_crop(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability 1/2 translate by up to 15% of each side (edges replicated, a non-zero
    move), else crop 75-95% of each side at a random place and resize back (bilinear)."""
    h, w = x.shape[-2:]
    if _randint(2, generator):
        max_dy, max_dx = max(1, int(0.15 * h)), max(1, int(0.15 * w))
        dy = dx = 0
        while dy == 0 and dx == 0:
            dy = _randint(2 * max_dy + 1, generator) - max_dy
            dx = _randint(2 * max_dx + 1, generator) - max_dx
        padded = F.pad(x[None], (max_dx, max_dx, max_dy, max_dy), mode="replicate")[0]
        return padded[:, max_dy - dy : max_dy - dy + h, max_dx - dx : max_dx - dx + w]
    ch = max(1, round(h * _uniform(0.75, 0.95, generator)))
    cw = max(1, round(w * _uniform(0.75, 0.95, generator)))
    top, left = _randint(h - ch + 1, generator), _randint(w - cw + 1, generator)
    crop = x[None, :, top : top + ch, left : left + cw]
    return F.interpolate(crop, (h, w), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)


DEFAULT_AUGMENTATIONS: tuple[Augmentation, ...] = (
    invert_colors,
    jitter_hue_contrast,
    gaussian_blur,
    shift_rgb,
    shuffle_channels,
    shift_or_crop,
)


def change_statistics(original: torch.Tensor, copy: torch.Tensor) -> tuple[float, float]:
    """(changed fraction, RMS) of a copy against its original, both (C, H, W) of one dtype.

    Both are measured in 0-255 units (float images are multiplied by 255): RMS =
    sqrt(mean over C, H, W of diff^2); a pixel is changed when some channel moved by more than
    ``CHANGED_PIXEL_LEVELS`` (half a grey level), and the fraction is over the H * W pixels.
    """
    diff = copy.double() - original.double()
    if original.is_floating_point():
        diff = diff * 255.0
    rms = float(diff.pow(2).mean().sqrt())
    changed = float((diff.abs().amax(dim=0) > CHANGED_PIXEL_LEVELS).double().mean())
    return changed, rms


class SelfAugmented(NamedTuple):
    """What ``SelfAugmentedNegatives`` returns: the accepted copies and how many were dropped."""

    copies: torch.Tensor  # (n, 3, H, W), n <= count, in the input's dtype
    dropped: int  # copies that failed the minimum change in max_tries draws


class SelfAugmentedNegatives:
    """Up to ``count`` augmented copies of an image crop, each changed by a minimum amount.

    Each copy applies one augmentation drawn uniformly from ``augmentations`` and is redrawn
    until ``change_statistics`` gives a changed fraction >= ``min_changed_fraction`` and an RMS
    >= ``min_rms``. A copy still failing after ``max_tries`` draws is dropped and counted in
    ``SelfAugmented.dropped``, never returned (a blank crop, for instance, is unchanged by a blur
    or a channel shuffle).

    Args:
        augmentations: callables aug(x (3, H, W) float32 in [0, 1], generator) -> same shape in
            [0, 1]; None: ``DEFAULT_AUGMENTATIONS`` (colour inversion, hue/contrast jitter, blur,
            RGB shift, channel shuffle, small shift or crop).
        count: copies to make per image (TDoc: up to 20).
        min_changed_fraction: in [0, 1] (TDoc: 0.05).
        min_rms: RMS difference in 0-255 units, >= 0 (TDoc: 15).
        max_tries: draws per copy before it is dropped, >= 1.
        generator: the default source of randomness (a call may pass its own).

    Calling it with an image (3, H, W), uint8 or float in [0, 1], returns ``SelfAugmented``.

    Example:
        >>> negs = SelfAugmentedNegatives(generator=torch.Generator().manual_seed(0))
        >>> out = negs(torch.rand(3, 24, 48))
        >>> out.copies.shape, out.dropped  # doctest: +SKIP
        (torch.Size([20, 3, 24, 48]), 0)

    Reference: TDoc, arXiv 2602.17322.
    """

    def __init__(
        self,
        augmentations: Sequence[Augmentation] | None = None,
        count: int = 20,
        min_changed_fraction: float = 0.05,
        min_rms: float = 15.0,
        max_tries: int = 10,
        generator: torch.Generator | None = None,
    ) -> None:
        fn = "SelfAugmentedNegatives"
        augmentations = DEFAULT_AUGMENTATIONS if augmentations is None else tuple(augmentations)
        if not augmentations or not all(callable(a) for a in augmentations):
            raise InputError(
                f"{fn}: argument 'augmentations' must be a non-empty sequence of callables "
                f"aug(x, generator) -> x; got {augmentations!r}. Pass None for the defaults."
            )
        for name, value in (("count", count), ("max_tries", max_tries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{fn}: argument '{name}' must be an int >= 1; got {value!r}.")
        self.augmentations = augmentations
        self.count = count
        self.max_tries = max_tries
        self.min_changed_fraction = check_range(fn, "min_changed_fraction", min_changed_fraction, 0.0, 1.0)
        self.min_rms = check_range(fn, "min_rms", min_rms, 0.0, math.inf)
        self.generator = check_generator(fn, generator)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> SelfAugmented:
        """image: (3, H, W) uint8 or float in [0, 1] -> SelfAugmented(copies (n, 3, H, W), dropped)."""
        fn = "SelfAugmentedNegatives"
        image = _check_image(fn, image)
        generator = check_generator(fn, generator) or self.generator
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        copies, dropped = [], 0
        for _ in range(self.count):
            for _ in range(self.max_tries):
                augmentation = self.augmentations[_randint(len(self.augmentations), generator)]
                copy = _as_input_dtype(fn, augmentation, augmentation(x, generator), image)
                changed, rms = change_statistics(image, copy)
                if changed >= self.min_changed_fraction and rms >= self.min_rms:
                    copies.append(copy)
                    break
            else:
                dropped += 1
        out = torch.stack(copies) if copies else image.new_empty((0, *image.shape))
        return SelfAugmented(out, dropped)

    def __repr__(self) -> str:
        names = ", ".join(getattr(a, "__name__", type(a).__name__) for a in self.augmentations)
        return (
            f"SelfAugmentedNegatives(augmentations=[{names}], count={self.count}, "
            f"min_changed_fraction={self.min_changed_fraction}, min_rms={self.min_rms}, "
            f"max_tries={self.max_tries})"
        )


def _check_image(fn: str, image: object) -> torch.Tensor:
    image = check_tensor(fn, "image", image, floating=False)
    if image.dim() != 3 or image.shape[0] != 3 or image.numel() == 0:
        raise InputError(
            f"{fn}: argument 'image' must be a non-empty RGB tensor of shape (3, H, W); got shape "
            f"{tuple(image.shape)}. Permute an (H, W, 3) array with .permute(2, 0, 1)."
        )
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise InputError(
            f"{fn}: argument 'image' must be uint8 (0-255) or float in [0, 1]; got {image.dtype}."
        )
    check_finite(fn, "image", image)
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"{fn}: a float 'image' must lie in [0, 1]; got values in [{low:.3g}, {high:.3g}]. "
            f"Divide 0-255 values by 255 (or pass uint8)."
        )
    return image


def _as_input_dtype(fn: str, augmentation, copy: object, image: torch.Tensor) -> torch.Tensor:
    """The augmentation's float [0, 1] output in the image's dtype (uint8: rounded)."""
    name = getattr(augmentation, "__name__", type(augmentation).__name__)
    if not isinstance(copy, torch.Tensor) or tuple(copy.shape) != tuple(image.shape):
        got = tuple(copy.shape) if isinstance(copy, torch.Tensor) else type(copy).__name__
        raise InputError(
            f"{fn}: augmentation {name} must return a tensor of shape {tuple(image.shape)}; got {got}."
        )
    copy = copy.clamp(0.0, 1.0)
    if image.dtype == torch.uint8:
        return (copy * 255.0).round().to(torch.uint8)
    return copy.to(image.dtype)
