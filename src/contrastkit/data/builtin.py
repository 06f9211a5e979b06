"""Built-in data sets by name: ``get_source("shapes" | "digits" | "flickr8k" | "cifar10", split)``.

``shapes`` is generated and ``digits`` ships with scikit-learn; ``flickr8k`` and ``cifar10`` read a
local folder (``root``, default ``$CONTRASTKIT_DATA/<name>`` or ``~/.cache/contrastkit/data/<name>``),
never the network.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from contrastkit.data.badrecords import DataError
from contrastkit.data.manifest import ManifestSource
from contrastkit.data.shapes import ShapesSource
from contrastkit.data.shards import ShardSource
from contrastkit.data.sources import Record, Source
from contrastkit.errors import InputError, check_range

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten digit {label}.",
    "a scan of the handwritten number {label}.",
    "the digit {label}, written by hand.",
    "a blurry handwritten {label}.",
    "a low-resolution image of the digit {label}.",
)


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise InputError(
            f"get_source({name!r}): argument 'split' must be one of {tuple(splits)}; got {split!r}."
        )


def _fills(template: object) -> bool:
    """Whether ``template`` is a str that formats with ``label`` alone."""
    if not isinstance(template, str) or "{label}" not in template:
        return False
    try:
        template.format(label="x")
    except (IndexError, KeyError, ValueError):
        return False
    return True


class LabelCaptionSource(Source):
    """Adds a caption made from the class name to every record of a labelled source.

    Args:
        source: a source with ``classes`` and a ``label`` in each record.
        templates: caption templates with a ``{label}`` field, e.g. "a photo of a {label}."; with
            several, each record gets one drawn deterministically from ``seed``.
        seed: the seed of the template choice.
    """

    def __init__(self, source: Source, templates: Sequence[str] = ("a photo of a {label}.",), seed: int = 0):
        if not source.classes:
            raise InputError(
                f"LabelCaptionSource: source {source.name!r} has no 'classes' to write captions from."
            )
        if isinstance(templates, str) or not templates or not all(_fills(t) for t in templates):
            raise InputError(
                f"LabelCaptionSource: argument 'templates' must be a non-empty list of strings with a "
                f"'{{label}}' field and no other fields; got {templates!r}."
            )
        self.source, self.templates = source, tuple(templates)
        self.name, self.classes = source.name, source.classes
        self.modalities = tuple(dict.fromkeys((*source.modalities, "text")))
        self._choice = np.random.default_rng(seed).integers(len(self.templates), size=len(source))

    def __len__(self) -> int:
        return len(self.source)

    def _record(self, index: int) -> Record:
        record = self.source[index]
        label = record.get("label")
        if label is not None and not 0 <= label < len(self.classes):
            raise ValueError(f"label {label} is outside the {len(self.classes)} classes of {self.name!r}")
        if label is not None:
            record["text"] = self.templates[self._choice[index]].format(label=self.classes[label])
        return record

    def group_keys(self) -> list[Hashable]:
        return self.source.group_keys()

    def label_list(self) -> list[int] | None:
        return self.source.label_list()


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 8, 8) images in [0, 255] and (1797,) int targets."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the 'digits' data set needs scikit-learn: pip install 'contrastkit[examples]'."
        ) from e
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images.flags.writeable = False
    return images, digits.target.astype(np.int64)


class DigitsSource(Source):
    """scikit-learn's 1,797 handwritten 8x8 digits, upsampled to RGB images, with captions.

    Args:
        split: "train" or "test" (a seeded permutation; ``test_fraction`` of the digits go to test).
        image_size: side of the square RGB PIL images (bilinear upsampling of the 8x8 grid).
        test_fraction: share of the test split, in (0, 1).
        seed: the seed of the split and of the caption variation.

    Records: ``{"image": PIL.Image, "text": "a handwritten digit three." (5 phrasings), "label": int,
    "group": int}``; ``classes`` are the digit names ("zero" ... "nine"). Needs scikit-learn
    (``pip install 'contrastkit[examples]'``).
    """

    name = "digits"
    modalities = ("image", "text")

    def __init__(self, split: str = "train", image_size: int = 32, test_fraction: float = 0.2, seed: int = 0):
        _check_split("digits", split, ("train", "test"))
        test_fraction = check_range("DigitsSource", "test_fraction", test_fraction, 0.0, 1.0)
        if not 0.0 < test_fraction < 1.0:
            raise InputError(
                f"DigitsSource: argument 'test_fraction' must lie strictly between 0 and 1 (both splits "
                f"non-empty); got {test_fraction!r}."
            )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise InputError(f"DigitsSource: argument 'image_size' must be an int >= 8; got {image_size!r}.")
        images, targets = _load_digits()
        perm = np.random.default_rng(seed).permutation(len(targets))
        n_test = round(len(perm) * test_fraction)
        chosen = np.sort(perm[:n_test] if split == "test" else perm[n_test:])
        self.split, self.image_size = split, image_size
        self._images = images[chosen]
        self._labels = [int(t) for t in targets[chosen]]
        self._indices = chosen.tolist()
        self.classes = list(DIGIT_NAMES)
        self._choice = np.random.default_rng([seed, 1]).integers(len(DIGIT_TEMPLATES), size=len(chosen))

    def __len__(self) -> int:
        return len(self._labels)

    def _record(self, index: int) -> Record:
        gray = Image.fromarray(self._images[index])  # uint8 (8, 8) -> mode "L"
        image = gray.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR).convert("RGB")
        label = self._labels[index]
        text = DIGIT_TEMPLATES[self._choice[index]].format(label=DIGIT_NAMES[label])
        return {"image": image, "text": text, "label": label, "group": self._indices[index]}

    def group_keys(self) -> list[Hashable]:
        return list(self._indices)

    def label_list(self) -> list[int]:
        return list(self._labels)


def default_data_root() -> Path:
    """``$CONTRASTKIT_DATA`` or ``~/.cache/contrastkit/data``: where named data folders are looked for."""
    return Path(os.environ.get("CONTRASTKIT_DATA", "~/.cache/contrastkit/data")).expanduser()


def _find_root(name: str, root: str | Path | None, markers: Sequence[str], layout: str) -> Path:
    """The data folder: ``root`` itself or ``root/name`` when it holds ``markers``."""
    base = default_data_root() if root is None else Path(root).expanduser()
    for folder in (base, base / name) if root is not None else (base / name,):
        if all((folder / m).exists() for m in markers):
            return folder
    where = f"{base} (or {base / name})" if root is not None else str(base / name)
    raise DataError(
        f"get_source({name!r}): expected the folder {where} to hold {layout}; it does not. "
        f"Pass root= the folder that holds it, or set CONTRASTKIT_DATA."
    )


def _shapes(split: str = "train", root: str | Path | None = None, **options) -> Source:
    _check_split("shapes", split, ("train", "test"))
    return ShapesSource(split, **options)


def _digits(split: str = "train", root: str | Path | None = None, **options) -> Source:
    return DigitsSource(split, **options)


def _flickr8k(split: str = "train", root: str | Path | None = None, group_by: str = "image") -> Source:
    _check_split("flickr8k", split, ("train", "dev"))
    folder = _find_root("flickr8k", root, ("images", f"{split}.tsv"), "images/, train.tsv and dev.tsv")
    columns = {"image": "image", "text": "caption"}
    return ManifestSource(folder / f"{split}.tsv", columns=columns, group_by=group_by, name="flickr8k")


def _cifar10(
    split: str = "train",
    root: str | Path | None = None,
    templates: Sequence[str] = ("a photo of a {label}.",),
) -> Source:
    _check_split("cifar10", split, ("train", "test"))
    folder = _find_root("cifar10", root, ("classes.json",), f"{split}-*.tar shards and classes.json")
    shards = sorted(str(p) for p in folder.glob(f"{split}-*.tar"))
    if not shards:
        raise DataError(f"get_source('cifar10'): no {split}-*.tar shard in {folder}.")
    return LabelCaptionSource(
        ShardSource(shards, {"image": "jpg", "label": "cls"}, name="cifar10"), templates
    )


#: Built-in data set name -> factory(split, root, **options).
SOURCES: dict[str, Callable[..., Source]] = {
    "shapes": _shapes,
    "digits": _digits,
    "flickr8k": _flickr8k,
    "cifar10": _cifar10,
}

_OPTIONS = {"shapes": ShapesSource, "digits": DigitsSource}


def get_source(name: str, split: str = "train", root: str | Path | None = None, **options) -> Source:
    """The built-in data set ``name`` (see ``SOURCES``) for ``split``.

    Args:
        name: "shapes" (generated; options n, image_size, seed), "digits" (scikit-learn; options
            image_size, test_fraction, seed), "flickr8k" (``root`` with images/, train.tsv, dev.tsv;
            splits train/dev) or "cifar10" (``root`` with {train,test}-*.tar and classes.json;
            option templates, default "a photo of a {label}.").
        split: "train", or "test" / "dev" as the set has.
        root: the data folder (or its parent) for the sets read from disk.

    Example:
        >>> src = get_source("shapes", "test", n=100, seed=1)
        >>> len(src), src.classes[:3]
        (100, ['circle', 'square', 'triangle'])
    """
    if name not in SOURCES:
        raise InputError(f"get_source: unknown data set {name!r}; available: {', '.join(sorted(SOURCES))}.")
    factory = SOURCES[name]
    target = _OPTIONS.get(name, factory)
    accepted = [p for p in inspect.signature(target).parameters if p not in ("split", "root", "options")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise InputError(
            f"get_source({name!r}): unknown option(s) {unknown}; {name} accepts {accepted or 'no options'}."
        )
    return factory(split, root, **options)
