"""Per-modality transforms: raw item -> tensor (images, series) or cleaned str (text).

Images are decoded with Pillow and augmented with torch ops (no torchvision). Every random draw
goes through the ``generator`` passed to the call (``ContrastiveDataset`` seeds one per record and
epoch), so augmentations are reproducible.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.errors import InputError, check_flag, check_range


def load_image(item: Any) -> Image.Image:
    """A path (str/Path), encoded bytes or a PIL image -> a fully decoded RGB PIL image.

    Raises OSError (missing file, unreadable or truncated image) or ValueError (empty path,
    unsupported item); ``ContrastiveDataset`` turns those into a ``BadRecord``.
    """
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ValueError("empty image bytes")
        image = _open(io.BytesIO(bytes(item)), "image bytes")
    elif isinstance(item, (str, Path)):
        if not str(item).strip():
            raise ValueError("empty image path")
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"missing file {path}")
        image = _open(path, str(path))
    else:
        raise ValueError(f"an image must be a path, bytes or a PIL image; got {type(item).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(fp: Any, what: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. corrupt EXIF: the pixels still decode
        try:
            with Image.open(fp) as opened:
                opened.load()
                image = opened.convert("RGB") if opened.mode != "RGB" else opened.copy()
        except Image.DecompressionBombError as e:
            raise ValueError(f"{what}: {e}") from None
        except OSError as e:
            raise OSError(f"cannot decode {what}: {e}") from None
    return image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) (a channels-first view of a fresh copy of the pixels)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (3, h, w) crop -> float32 (3, height, width) in [0, 1], bilinear with antialiasing.

    Only the crop is converted to float, and the 1/255 scaling runs on the small output.
    """
    x = x.float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x[None], (height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 255.0).mul_(1.0 / 255.0)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class ImageTransform:
    """Decode an image and turn it into a normalised float32 (3, size, size) tensor.

    Train mode: random resized crop (area fraction in ``scale``, aspect ratio log-uniform in
    ``ratio``, as in Inception / torchvision's RandomResizedCrop), horizontal flip with
    probability 1/2, brightness and contrast jitter by factors in [1 - j, 1 + j]. Eval mode: resize
    the shorter side to ``size`` and center-crop (deterministic). Output: (x - 0.5) / 0.5.

    Args:
        size: output side in pixels.
        train: random augmentation (True) or the deterministic eval path (False).
        scale: (min, max) area fraction of the random crop, in (0, 1].
        flip: random horizontal flip in train mode.
        color_jitter: j in [0, 1); 0 turns the jitter off.
        ratio: (min, max) aspect ratio of the random crop.

    Example:
        >>> t = ImageTransform(64, train=True)
        >>> t(Image.new("RGB", (100, 80)), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 64, 64])
    """

    def __init__(
        self,
        size: int = 64,
        train: bool = False,
        scale: tuple[float, float] = (0.6, 1.0),
        flip: bool = True,
        color_jitter: float = 0.2,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        fn = "ImageTransform"
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"{fn}: argument 'size' must be an int >= 1; got {size!r}.")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise InputError(
                f"{fn}: argument 'scale' must be (min, max) with 0 < min <= max <= 1; got {scale!r}."
            )
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise InputError(f"{fn}: argument 'ratio' must be (min, max) with 0 < min <= max; got {ratio!r}.")
        self.size = size
        self.train = check_flag(fn, "train", train)
        self.flip = check_flag(fn, "flip", flip)
        self.color_jitter = check_range(fn, "color_jitter", color_jitter, 0.0, 1.0, high_open=True)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def __call__(self, item: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """item: path / bytes / PIL image -> float32 (3, size, size), normalised to about [-1, 1]."""
        x = image_to_tensor(load_image(item))
        x = self._augment(x, generator) if self.train else self._center(x)
        return (x - 0.5) / 0.5

    def _center(self, x: torch.Tensor) -> torch.Tensor:
        """The central square of side min(h, w), resized to size (= resize short side + center crop)."""
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return _resize(x[:, top : top + side, left : left + side], self.size, self.size)

    def _crop_box(self, h: int, w: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            area = h * w * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(log_lo, log_hi, generator))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(h - ch + 1, (), generator=generator))
                left = int(torch.randint(w - cw + 1, (), generator=generator))
                return top, left, ch, cw
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        top, left, ch, cw = self._crop_box(*x.shape[-2:], generator)
        x = _resize(x[:, top : top + ch, left : left + cw], self.size, self.size)
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            x = x.flip(-1)
        j = self.color_jitter
        if j > 0:
            x = x * _uniform(1 - j, 1 + j, generator)
            gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
            x = (x - gray) * _uniform(1 - j, 1 + j, generator) + gray
            x = x.clamp(0.0, 1.0)
        return x.contiguous()

    def __repr__(self) -> str:
        return (
            f"ImageTransform(size={self.size}, train={self.train}, scale={self.scale}, flip={self.flip}, "
            f"color_jitter={self.color_jitter})"
        )


class SeriesTransform:
    """A (T,) or (C, T) array -> float32 (C, T) tensor, optionally resampled and standardised.

    Args:
        length: resample every channel to this many steps (linear interpolation); None keeps T.
        normalize: standardise each channel to mean 0 and std 1 (a constant channel becomes 0).

    Raises ValueError for an empty series or one with NaN/inf (a ``BadRecord`` in the dataset).
    """

    def __init__(self, length: int | None = None, normalize: bool = True) -> None:
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 2):
            raise InputError(
                f"SeriesTransform: argument 'length' must be None or an int >= 2; got {length!r}."
            )
        self.length = length
        self.normalize = check_flag("SeriesTransform", "normalize", normalize)

    def __call__(self, item: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """item: (T,) or (C, T) array-like -> float32 (C, T') with T' = length or T."""
        x = torch.as_tensor(np.array(item, dtype=np.float32, copy=True))
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2 or x.numel() == 0:
            raise ValueError(f"a series must be a non-empty (T,) or (C, T) array; got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"series has {int((~torch.isfinite(x)).sum())} NaN/inf value(s)")
        if self.length is not None and x.shape[1] != self.length:
            if x.shape[1] == 1:
                x = x.expand(-1, self.length)
            else:
                x = F.interpolate(x[None], size=self.length, mode="linear", align_corners=True)[0]
        if self.normalize:
            x = (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-8)
        return x.contiguous()


class TextTransform:
    """Clean a caption: collapse whitespace, optionally keep only its first ``max_sentences`` sentences.

    Raises ValueError for an empty or whitespace-only caption (a ``BadRecord`` in the dataset).
    """

    def __init__(self, max_sentences: int | None = None) -> None:
        if max_sentences is not None and (
            isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1
        ):
            raise InputError(
                f"TextTransform: argument 'max_sentences' must be None or an int >= 1; got {max_sentences!r}."
            )
        self.max_sentences = max_sentences

    def __call__(self, item: Any, generator: torch.Generator | None = None) -> str:
        if not isinstance(item, str):
            raise ValueError(f"a caption must be a str; got {type(item).__name__}")
        text = " ".join(item.split())
        if not text:
            raise ValueError("empty caption" if not item else "whitespace-only caption")
        if self.max_sentences is not None:
            sentences = re.split(r"(?<=[.!?])\s+", text)
            text = " ".join(sentences[: self.max_sentences])
        return text
