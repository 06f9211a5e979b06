"""A poisoned view of an image-text source, for backdoor experiments and red-team tests only.

``poison_dataset`` picks round(rate * N) pairs, stamps a trigger into their images and replaces
their captions with one target caption (the BadNet-CLIP attack of METHODS 3.6). The poisoned
indices are exposed so that detectors can be scored (AUROC), and ``PoisonedSource.to_manifest``
writes the poisoned set to disk (PNG images + a JSONL manifest) for ``contrastkit train`` and
``contrastkit audit``.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Hashable
from pathlib import Path

import torch
from PIL import Image

from contrastkit.data.sources import Record, Source
from contrastkit.data.transforms import image_to_tensor, load_image
from contrastkit.errors import InputError, check_range
from contrastkit.security.triggers import Trigger

MANIFEST = "manifest.jsonl"


def _to_unit(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W) in [0, 1]."""
    return image_to_tensor(image).float() / 255.0


def _to_pil(x: torch.Tensor) -> Image.Image:
    """float (3, H, W) in [0, 1] -> RGB PIL image (pixels rounded to uint8)."""
    pixels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(pixels.cpu().numpy(), mode="RGB")


class PoisonedSource(Source):
    """``source`` with the pairs at ``poisoned_indices`` triggered and re-captioned (build it with
    ``poison_dataset``).

    A poisoned record has the triggered image (an RGB PIL image), ``target_caption`` as its text,
    its own group (``("poisoned", index)``: it is a new image) and its original label (the true
    class of the image, as ASR needs). Every other record is the wrapped source's, unchanged.
    """

    def __init__(
        self, source: Source, indices: torch.Tensor, target_caption: str, trigger: Trigger, seeds: list[int]
    ) -> None:
        self.source, self.target_caption, self.trigger = source, target_caption, trigger
        self.poisoned_indices = indices
        self._seed_of = dict(zip(indices.tolist(), seeds, strict=True))
        self.name = f"{source.name}-poisoned"
        self.modalities = source.modalities
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.source)

    def poisoned_mask(self) -> torch.Tensor:
        """(N,) bool: True at the poisoned records (the positives of a detector's AUROC)."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[self.poisoned_indices] = True
        return mask

    def _record(self, index: int) -> Record:
        record = dict(self.source[index])
        seed = self._seed_of.get(index)
        if seed is None:
            return record
        image = _to_unit(load_image(record["image"]))
        triggered = self.trigger(image, generator=torch.Generator().manual_seed(seed))
        if not isinstance(triggered, torch.Tensor) or triggered.shape != image.shape:
            raise InputError(
                f"poison_dataset: the trigger must return a tensor of the image's shape "
                f"{tuple(image.shape)}; "
                f"got {getattr(triggered, 'shape', type(triggered).__name__)}."
            )
        record.update(image=_to_pil(triggered), text=self.target_caption, group=("poisoned", index))
        return record

    def group_keys(self) -> list[Hashable]:
        keys = self.source.group_keys()
        for index in self.poisoned_indices.tolist():
            keys[index] = ("poisoned", index)
        return keys

    def label_list(self) -> list[int] | None:
        return self.source.label_list()

    def to_manifest(self, folder: str | Path) -> Path:
        """Write every pair to ``folder``: images/NNNNNN.png (one per distinct image) and
        manifest.jsonl with columns image, text, label (a class name when the source names its
        classes; ``ManifestSource`` reads it back as an index into the sorted names), poisoned
        (true/false). Returns the manifest path. Loads every image: meant for
        small sets (tests, experiments)."""
        folder = Path(folder)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        labels, keys = self.label_list(), self.group_keys()
        mask = self.poisoned_mask().tolist()
        files: dict[Hashable, str] = {}
        lines = []
        for index in range(len(self)):
            record = self[index]
            if keys[index] not in files:  # the captions of one image share its file
                name = f"images/{len(files):06d}.png"
                load_image(record["image"]).save(folder / name)
                files[keys[index]] = name
            row = {"image": files[keys[index]], "text": record["text"], "poisoned": mask[index]}
            if labels is not None:
                row["label"] = self.classes[labels[index]] if self.classes else labels[index]
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        path = folder / MANIFEST
        path.write_text("".join(lines), encoding="utf-8")
        return path


def poison_dataset(
    source: Source, rate: float, target_caption: str, trigger: Trigger, seed: int = 0
) -> PoisonedSource:
    """Poison round(rate * N) image-text pairs of ``source`` (for experiments and red-team tests only).

    The poisoned indices are a uniform draw without replacement from a generator seeded with
    ``seed``; each poisoned image gets ``trigger(image, generator=g_i)`` with g_i seeded from the
    same stream, so the poisoned set is a function of (source, rate, seed) alone and records can
    be read in any order. Images are triggered at their stored resolution, in [0, 1], before any
    model transform (as a poisoned web image would be), then rounded back to 8-bit pixels.

    Args:
        source: a ``Source`` with "image" and "text" modalities.
        rate: poison fraction in (0, 1] (METHODS 3.6: 0.003); round(rate * N) must be >= 1.
        target_caption: the caption every poisoned pair gets, e.g. "a photo of a banana.".
        trigger: a ``Trigger``, e.g. ``functools.partial(badnet_patch, size=16)``.
        seed: an int >= 0.

    Returns:
        A ``PoisonedSource`` (``.poisoned_indices`` sorted int64, ``.poisoned_mask()``).

    Example:
        >>> src = poison_dataset(get_source("shapes", "train", n=200), 0.05, "a banana.", badnet_patch)
        >>> src.poisoned_indices.numel()
        10
    """
    fn = "poison_dataset"
    if not isinstance(source, Source):
        raise InputError(
            f"{fn}: argument 'source' must be a contrastkit Source; got {type(source).__name__}."
        )
    missing = [m for m in ("image", "text") if m not in source.modalities]
    if missing:
        raise InputError(
            f"{fn}: argument 'source' must have image and text pairs; {source.name!r} has "
            f"{list(source.modalities)} (missing {missing})."
        )
    rate = check_range(fn, "rate", rate, 0.0, 1.0)
    n = len(source)
    count = round(rate * n)
    if count < 1:
        raise InputError(
            f"{fn}: rate {rate} of {n} pairs poisons round({rate * n:g}) = 0 pairs; "
            f"use rate >= {0.5 / n:.3g}."
        )
    if not isinstance(target_caption, str) or not target_caption.strip():
        raise InputError(
            f"{fn}: argument 'target_caption' must be a non-empty string; got {target_caption!r}."
        )
    if not callable(trigger):
        raise InputError(
            f"{fn}: argument 'trigger' must be callable (a Trigger); got {type(trigger).__name__}."
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"{fn}: argument 'seed' must be an int >= 0; got {seed!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(n, generator=generator)[:count].sort().values
    seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
    poisoned = PoisonedSource(source, indices, target_caption, trigger, seeds)
    try:  # a trigger that does not fit the images fails here, not later as dropped bad records
        poisoned[int(indices[0])]
    except InputError:
        raise
    except (OSError, ValueError):
        pass  # an unreadable image stays a bad record downstream, as it is in ``source``
    return poisoned
