"""``ShapesSource``: a generated, captioned image set of coloured shapes (no download needed).

Each image shows one shape (the class) in one colour on a plain or two-tone background, with its
size and position varying, and sometimes a second small object. Its caption's first sentence
summarises the image ("A red triangle on a blue background."); later sentences add the size and
position, the background and the second object, so that the first sentence alone is a short
caption and the whole text a long one. Parameters are drawn up front from a seeded numpy
generator (train and test use disjoint streams); images are drawn with Pillow when indexed.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from contrastkit.data.sources import Record, Source
from contrastkit.errors import InputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
_COLOR_NAMES = tuple(COLORS)
_SIZES = (("small", 0.12, 0.17), ("medium-sized", 0.18, 0.24), ("large", 0.26, 0.33))
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
_SPLITS = {"train": 0, "test": 1}


def _polygon(shape: str) -> np.ndarray | None:
    """Unit-radius vertices (K, 2) of a polygonal shape (None for circle and ring)."""
    if shape == "square":
        a = 0.8
        return np.array([(-a, -a), (a, -a), (a, a), (-a, a)])
    if shape == "diamond":
        return np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], dtype=float)
    if shape in ("triangle", "hexagon", "star"):
        k = {"triangle": 3, "hexagon": 6, "star": 10}[shape]
        angles = -math.pi / 2 + 2 * math.pi * np.arange(k) / k
        radius = np.where(np.arange(k) % 2 == 1, 0.45, 1.0) if shape == "star" else np.ones(k)
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    if shape == "cross":
        w = 0.33
        return np.array(
            [
                (-w, -1),
                (w, -1),
                (w, -w),
                (1, -w),
                (1, w),
                (w, w),
                (w, 1),
                (-w, 1),
                (-w, w),
                (-1, w),
                (-1, -w),
                (-w, -w),
            ]
        )
    return None


_POLYGONS = {s: _polygon(s) for s in SHAPES}


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill
) -> None:
    """Draw one shape of radius r (pixels) centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, round(0.35 * r)))
    else:
        c, s = math.cos(angle), math.sin(angle)
        pts = _POLYGONS[shape] @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _place(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "in the center"
    if row == 1:
        return f"on the {_COLS[col]}"
    if col == 1:
        return f"at the {_ROWS[row]}"
    return f"in the {_ROWS[row]} {_COLS[col]} corner"


@dataclass(frozen=True)
class ShapeScene:
    """The parameters of one image (positions and sizes as fractions of the image side)."""

    shape: int
    color: int
    size: int
    radius: float
    row: int
    col: int
    cx: float
    cy: float
    angle: float
    background: tuple[int, ...]
    split_vertical: bool
    extra: tuple[int, int, int, int, float, float] | None  # shape, colour, row, col, cx, cy

    def caption(self) -> str:
        shape, color = SHAPES[self.shape], _COLOR_NAMES[self.color]
        bg = [_COLOR_NAMES[b] for b in self.background]
        backdrop = " and ".join(bg)
        sentences = [
            f"{_article(color).capitalize()} {color} {shape} on {_article(bg[0])} {backdrop} background."
        ]
        sentences.append(f"The {shape} is {_SIZES[self.size][0]} and sits {_place(self.row, self.col)}.")
        if len(bg) == 1:
            sentences.append(f"The background is plain {bg[0]}.")
        else:
            first, second = ("left", "right") if self.split_vertical else ("top", "bottom")
            sentences.append(
                f"The background is split into {_article(bg[0])} {bg[0]} {first} half and "
                f"{_article(bg[1])} {bg[1]} {second} half."
            )
        if self.extra is not None:
            s, c, row, col = self.extra[:4]
            sentences.append(f"There is also a small {_COLOR_NAMES[c]} {SHAPES[s]} {_place(row, col)}.")
        return " ".join(sentences)

    def render(self, size: int) -> Image.Image:
        bg = [COLORS[_COLOR_NAMES[b]] for b in self.background]
        image = Image.new("RGB", (size, size), bg[0])
        draw = ImageDraw.Draw(image)
        if len(bg) == 2:
            box = (size // 2, 0, size, size) if self.split_vertical else (0, size // 2, size, size)
            draw.rectangle(box, fill=bg[1])
        fill = COLORS[_COLOR_NAMES[self.color]]
        _draw_shape(
            draw, SHAPES[self.shape], self.cx * size, self.cy * size, self.radius * size, self.angle, fill
        )
        if self.extra is not None:
            s, c, _, _, cx, cy = self.extra
            _draw_shape(draw, SHAPES[s], cx * size, cy * size, 0.085 * size, 0.0, COLORS[_COLOR_NAMES[c]])
        return image


def _far_cells(row: int, col: int) -> list[tuple[int, int]]:
    """Grid cells two steps away from (row, col) (the corners for the center)."""
    far = [(r, c) for r in range(3) for c in range(3) if max(abs(r - row), abs(c - col)) == 2]
    return far or [(0, 0), (0, 2), (2, 0), (2, 2)]


_FAR = {(r, c): _far_cells(r, c) for r in range(3) for c in range(3)}


def _scenes(rng: np.random.Generator, n: int) -> list[ShapeScene]:
    """n scenes drawn with vectorised numpy calls (fast: 5,000 in a few milliseconds)."""
    shape = rng.integers(len(SHAPES), size=n)
    colors = np.argsort(rng.random((n, len(_COLOR_NAMES))), axis=1)  # shape, bg, bg 2, extra: distinct
    two_tone = rng.random(n) < 0.4
    size = rng.integers(len(_SIZES), size=n)
    low, high = np.array([s[1] for s in _SIZES])[size], np.array([s[2] for s in _SIZES])[size]
    radius = low + (high - low) * rng.random(n)
    row, col = rng.integers(3, size=n), rng.integers(3, size=n)
    cx = np.clip(0.25 * (col + 1) + rng.uniform(-0.05, 0.05, n), radius, 1 - radius)
    cy = np.clip(0.25 * (row + 1) + rng.uniform(-0.05, 0.05, n), radius, 1 - radius)
    rotates = np.isin(shape, [SHAPES.index(s) for s in ("triangle", "star", "cross", "hexagon")])
    angle = np.where(rotates, rng.uniform(-0.3, 0.3, n), 0.0)
    has_extra = rng.random(n) < 0.35
    extra_shape = rng.integers(len(SHAPES), size=n)
    extra_cell = rng.random(n)
    split_vertical = rng.random(n) < 0.5
    scenes = []
    for i in range(n):
        r, c = int(row[i]), int(col[i])
        extra = None
        if has_extra[i]:
            far = _FAR[(r, c)]
            r2, c2 = far[int(extra_cell[i] * len(far))]
            extra = (int(extra_shape[i]), int(colors[i, 3]), r2, c2, 0.15 + 0.35 * c2, 0.15 + 0.35 * r2)
        background = tuple(int(b) for b in colors[i, 1 : 3 if two_tone[i] else 2])
        scenes.append(
            ShapeScene(
                int(shape[i]),
                int(colors[i, 0]),
                int(size[i]),
                float(radius[i]),
                r,
                c,
                float(cx[i]),
                float(cy[i]),
                float(angle[i]),
                background,
                bool(split_vertical[i]),
                extra,
            )
        )
    return scenes


class ShapesSource(Source):
    """Generated coloured shapes with multi-sentence captions (image, text, label = shape class).

    Args:
        split: "train" or "test"; the two use disjoint random streams of one seed.
        n: number of images (default 4000 for train, 1000 for test).
        image_size: side of the square RGB images, in pixels (>= 16).
        seed: the seed; the same (seed, split, n, image_size) gives identical images and captions.

    Records: ``{"image": PIL.Image (image_size, image_size) RGB, "text": str, "label": int,
    "group": int}``; ``classes`` are the shape names.

    Example:
        >>> src = ShapesSource("train", n=8, seed=0)
        >>> src[0]["text"].split(". ")[0]  # doctest: +SKIP
        'A red triangle on a blue background'
    """

    name = "shapes"
    modalities = ("image", "text")

    def __init__(
        self, split: str = "train", n: int | None = None, image_size: int = 64, seed: int = 0
    ) -> None:
        if split not in _SPLITS:
            raise InputError(f"ShapesSource: argument 'split' must be 'train' or 'test'; got {split!r}.")
        n = (4000 if split == "train" else 1000) if n is None else n
        for arg, value, low in (("n", n, 1), ("image_size", image_size, 16), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"ShapesSource: argument '{arg}' must be an int >= {low}; got {value!r}.")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.classes = list(SHAPES)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split]]))
        self.scenes = _scenes(rng, n)

    def __len__(self) -> int:
        return len(self.scenes)

    def _record(self, index: int) -> Record:
        scene = self.scenes[index]
        return {
            "image": scene.render(self.image_size),
            "text": scene.caption(),
            "label": scene.shape,
            "group": index,
        }

    def group_keys(self) -> list[Hashable]:
        return list(range(len(self)))

    def label_list(self) -> list[int]:
        return [s.shape for s in self.scenes]
