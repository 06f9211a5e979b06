"""Image degradations at severities 1-5, composed per image, with one id per composition.

A composition gives every degradation kind a severity s_k in 0..5 (0 = absent); the kinds are
applied in the fixed order of ``DEGRADATIONS`` (optics, then sensor, then compression):

    blur      Gaussian blur, sigma           0.4, 0.6, 0.7, 0.8, 1.0 px
    contrast  x -> m + c (x - m), m the image mean over channels and pixels (CIFAR-10-C takes
              it per channel), c = 0.75, 0.5, 0.4, 0.3, 0.15
    noise     x + N(0, sigma^2) clipped to [0, 1], sigma = 0.04, 0.06, 0.08, 0.09, 0.10
    jpeg      a Pillow JPEG round trip at quality 80, 65, 58, 50, 40

(the CIFAR-10-C levels of Hendrycks & Dietterich, arXiv 1903.12261). The composition id is
the mixed-radix number sum_k s_k 6^k, so the clean image is id 0 and a single kind at
severity s is s * 6^k.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.errors import InputError, check_embeddings, check_tensor, is_integer_tensor

DEGRADATIONS = ("blur", "contrast", "noise", "jpeg")
MAX_SEVERITY = 5
LEVELS = {
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "jpeg": (80, 65, 58, 50, 40),
}


def composition_id(severities: torch.Tensor) -> torch.Tensor:
    """(N, K) severities in 0..5, one column per kind of ``DEGRADATIONS`` -> (N,) int64 ids."""
    severities = _check_severities("composition_id", severities, None)
    radix = (MAX_SEVERITY + 1) ** torch.arange(len(DEGRADATIONS), device=severities.device)
    return (severities * radix).sum(dim=1)


def degrade(
    images: torch.Tensor, severities: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply each image's composition: images (N, 3, H, W) in [0, 1] -> degraded (N, 3, H, W).

    severities: (N, K) integers in 0..5, column k for ``DEGRADATIONS[k]``. The noise draws come
    from ``generator``; everything else is deterministic. Rows at severity 0 everywhere come
    back unchanged.
    """
    fn = "degrade"
    images = check_embeddings(fn, "images", images, shape="(N, 3, H, W)", ndims=(4,))
    if images.shape[1] != 3 or float(images.min()) < 0 or float(images.max()) > 1:
        raise InputError(
            f"{fn}: argument 'images' must be RGB (N, 3, H, W) in [0, 1]; got shape "
            f"{tuple(images.shape)}, values in [{float(images.min()):.3g}, {float(images.max()):.3g}]."
        )
    severities = _check_severities(fn, severities, images.shape[0])
    blur = int(severities[:, DEGRADATIONS.index("blur")].max()) if severities.numel() else 0
    if blur and min(images.shape[-2:]) <= _blur_radius(LEVELS["blur"][blur - 1]):
        raise InputError(
            f"{fn}: argument 'images' of size {tuple(images.shape[-2:])} is too small for blur at "
            f"severity {blur} (reflect padding of {_blur_radius(LEVELS['blur'][blur - 1])} px needs H "
            f"and W above it); pass larger images or no blur."
        )
    out = images.clone()
    for k, kind in enumerate(DEGRADATIONS):
        level = severities[:, k]
        if kind == "noise":  # one draw for the whole batch keeps the stream independent of the mix
            draw = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        for s in level.unique().tolist():
            if s == 0:
                continue
            rows = (level == s).nonzero()[:, 0]
            value = LEVELS[kind][s - 1]
            if kind == "noise":
                out[rows] = (out[rows] + value * draw[rows]).clamp(0, 1)
            else:
                out[rows] = _APPLY[kind](out[rows], value)
    return out


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) -> blurred, a separable Gaussian of std ``sigma`` px (radius ceil(3 sigma)),
    reflect padding."""
    radius = _blur_radius(sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _blur_radius(sigma: float) -> int:
    return max(1, int(np.ceil(3 * sigma)))


def reduce_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """(N, C, H, W) -> m + factor (x - m), m each image's mean over channels and pixels."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (images - mean)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> the Pillow JPEG round trip at ``quality`` (also 8-bit quantised)."""
    out = []
    for image in images:
        pixels = (image.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        decoded = np.array(Image.open(buffer).convert("RGB"), dtype=np.uint8)
        out.append(torch.from_numpy(decoded).permute(2, 0, 1))
    return torch.stack(out).to(images.device, images.dtype) / 255


_APPLY = {"blur": gaussian_blur, "contrast": reduce_contrast, "jpeg": jpeg}


def _check_severities(fn: str, severities: object, n: int | None) -> torch.Tensor:
    severities = check_tensor(fn, "severities", severities, floating=False)
    k = len(DEGRADATIONS)
    if not is_integer_tensor(severities):
        raise InputError(
            f"{fn}: argument 'severities' must be an integer tensor; got dtype {severities.dtype}."
        )
    if severities.dim() != 2 or severities.shape[1] != k or (n is not None and severities.shape[0] != n):
        rows = "N" if n is None else str(n)
        raise InputError(
            f"{fn}: argument 'severities' must have shape ({rows}, {k}), one column per kind of "
            f"{DEGRADATIONS}; got {tuple(severities.shape)}."
        )
    if severities.numel() and (int(severities.min()) < 0 or int(severities.max()) > MAX_SEVERITY):
        raise InputError(
            f"{fn}: argument 'severities' must hold integers in 0..{MAX_SEVERITY} (0 = absent); got "
            f"values in {int(severities.min())}..{int(severities.max())}."
        )
    return severities.long()
