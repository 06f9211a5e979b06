"""Plots and thumbnails as base64 PNG ``data:`` URIs.

matplotlib is driven through ``Figure`` + ``FigureCanvasAgg`` (no pyplot, no global backend or rc
change), imported on first use so that importing the report stays cheap.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np

# (log column, panel title) of the training curves, in display order.
CURVES = (("loss", "loss"), ("scale", "logit scale"), ("bias", "logit bias"), ("lr", "learning rate"))


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return data_uri(buf.getvalue())


def downsample(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices into ``range(n)``, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def curves_png(log: dict[str, np.ndarray], max_points: int = 2000) -> str | None:
    """One panel per available curve of ``CURVES`` against ``step``; None if none has a value."""
    panels = [(c, t) for c, t in CURVES if c in log and np.isfinite(log[c]).any()]
    if not panels:
        return None
    idx = downsample(len(log["step"]), max_points)
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(5.0 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    marker = "o" if len(idx) < 50 else None
    for ax, (column, title) in zip(axes, panels, strict=False):
        ax.plot(log["step"][idx], log[column][idx], marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _render(fig)


def heatmap_png(sim: np.ndarray) -> str:
    """The (n, m) image-by-caption similarity matrix with a colour bar."""
    n, m = sim.shape
    fig = _figure(5.6, 4.6)
    ax = fig.subplots()
    finite = sim[np.isfinite(sim)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    image = ax.imshow(sim, cmap="viridis", vmin=lo, vmax=hi, aspect="equal" if n == m else "auto")
    ax.set_xlabel("caption j", fontsize=9)
    ax.set_ylabel("image i", fontsize=9)
    ax.set_title("cosine similarity (diagonal = matching pair)", fontsize=10)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    return _render(fig)


def thumbnail_png(image: np.ndarray) -> str:
    """A uint8 (h, w, 3) / (h, w, 4) / (h, w, 1) / (h, w) image as a PNG data URI."""
    from PIL import Image

    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return data_uri(buf.getvalue())
