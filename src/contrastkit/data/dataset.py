"""``ContrastiveDataset`` (source + transforms, bad records as values) and the batch ``Collator``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from contrastkit.data.badrecords import BadRecord
from contrastkit.data.sources import Source
from contrastkit.data.transforms import ImageTransform, SeriesTransform, TextTransform
from contrastkit.errors import InputError

#: Errors that mark one record as bad (anything else is a bug and propagates).
RECORD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, Image.DecompressionBombError)

_DEFAULTS: dict[str, Callable[[], Callable[..., Any]]] = {
    "image": ImageTransform,
    "text": TextTransform,
    "series": SeriesTransform,
}


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _item_problem(modality: str, item: Any) -> str | None:
    """A reason the raw item is unusable before any transform runs (None when it looks fine)."""
    if item is None:
        return f"missing {modality}"
    if modality == "text" and not isinstance(item, str):
        return f"caption is a {type(item).__name__}, not text: {item!r}"
    if modality == "text" and not item.strip():
        return "empty caption" if not item else f"whitespace-only caption {item!r}"
    return None


class ContrastiveDataset(torch.utils.data.Dataset):
    """A map-style dataset: ``source[i]`` through the per-modality transforms.

    ``dataset[i]`` is ``{modality: transformed item, "index": i, "label": int, "group": ...}``
    ("label"/"group" when the record has them), or a ``BadRecord(i, reason)`` when the record
    cannot be loaded (unreadable or corrupt image, missing file, empty or whitespace caption,
    NaN series): it never raises for a bad record; the ``Collator`` drops it.

    Random transforms get a ``torch.Generator`` seeded from (generator_seed, epoch, index), so
    an augmentation depends only on those three, not on worker count or order; call
    ``set_epoch`` to draw new augmentations each epoch.

    Args:
        source: a ``Source`` (a ``ShardStream`` too, through ``TransformedStream``, which uses
            ``transform_record`` only).
        transforms: modality -> callable(raw item[, generator=]) -> tensor or str. Modalities
            without one get the default (``ImageTransform()``, ``TextTransform()``,
            ``SeriesTransform()``).
        generator_seed: base seed of the augmentation generators.
        derived: extra outputs made from a modality's raw item, ``{key: (modality, transform)}``
            (e.g. ``{"text2": ("text", first_sentence)}``: a second caption per image).
    """

    def __init__(
        self,
        source: Source,
        transforms: Mapping[str, Callable[..., Any]] | None = None,
        generator_seed: int = 0,
        derived: Mapping[str, tuple[str, Callable[..., Any]]] | None = None,
    ) -> None:
        transforms = dict(transforms or {})
        unknown = [k for k in transforms if k not in source.modalities]
        if unknown:
            raise InputError(
                f"ContrastiveDataset: transforms for {unknown} but source {source.name!r} has modalities "
                f"{source.modalities}."
            )
        for modality in source.modalities:
            if modality not in transforms:
                if modality not in _DEFAULTS:
                    raise InputError(
                        f"ContrastiveDataset: no default transform for modality {modality!r}; pass one."
                    )
                transforms[modality] = _DEFAULTS[modality]()
        for name, value in (("generator_seed", generator_seed),):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"ContrastiveDataset: '{name}' must be an int >= 0; got {value!r}.")
        derived = dict(derived or {})
        clashes = [k for k, (m, _) in derived.items() if k in source.modalities or m not in source.modalities]
        if clashes:
            raise InputError(
                f"ContrastiveDataset: derived outputs {clashes} must have new names and come from one of "
                f"the source's modalities {source.modalities}."
            )
        self.source = source
        self.derived = derived
        self.transforms = transforms
        self.generator_seed = generator_seed
        self.epoch = 0
        self._with_generator = {m: _accepts_generator(t) for m, t in transforms.items()}
        self._with_generator.update({k: _accepts_generator(t) for k, (_, t) in derived.items()})

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentations of ``epoch`` (with DataLoader workers, call it before iterating)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise InputError(f"ContrastiveDataset.set_epoch: 'epoch' must be an int >= 0; got {epoch!r}.")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def generator_for(self, index: int) -> torch.Generator:
        """The generator of record ``index`` in the current epoch."""
        seed = np.random.SeedSequence([self.generator_seed, self.epoch, index]).generate_state(1, np.uint64)[
            0
        ]
        return torch.Generator().manual_seed(int(seed))

    def __getitem__(self, index: int) -> dict[str, Any] | BadRecord:
        index = int(index)
        try:
            record = self.source[index]
        except RECORD_ERRORS as e:
            return BadRecord(index, f"cannot read the record: {e}")
        return self.transform_record(record, index)

    def transform_record(self, record: dict[str, Any], index: int) -> dict[str, Any] | BadRecord:
        """One raw record through the transforms, its augmentations seeded by (seed, epoch, index)."""
        out: dict[str, Any] = {"index": index}
        if "label" in record:
            if record["label"] is None:
                return BadRecord(index, "missing label")
            out["label"] = int(record["label"])
        if "group" in record:
            out["group"] = record["group"]
        generator = None
        steps = [(m, m, t) for m, t in self.transforms.items()]
        steps += [(key, m, t) for key, (m, t) in self.derived.items()]
        for key, modality, transform in steps:
            item = record.get(modality)
            problem = _item_problem(modality, item)
            if problem is not None:
                return BadRecord(index, problem)
            try:
                if self._with_generator[key]:
                    generator = generator or self.generator_for(index)
                    value = transform(item, generator=generator)
                else:
                    value = transform(item)
            except RECORD_ERRORS as e:
                return BadRecord(index, f"{key}: {e}")
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(value.isfinite().all())
            ):
                return BadRecord(index, f"{key}: NaN/inf after the transform")
            out[key] = value
        return out


class Collator:
    """Items of ``ContrastiveDataset`` -> one batch dict; bad records are dropped and listed.

    Batch: tensors stacked ((B, 3, H, W) images, (B, C, T) series), ``"label"``/``"index"`` int64
    (B,), ``"group"`` a list, texts tokenized to ``{"input_ids", "attention_mask"}`` int64 (B, L)
    with the modality's tokenizer (kept as a list of str when it has none, for towers that carry
    their own), and ``"bad"``: the list of ``BadRecord`` dropped. When every item is bad the batch
    holds only ``"index"`` (empty) and ``"bad"``; skip it.

    Args:
        tokenizers: modality -> tokenizer (``{"text": ByteTokenizer()}``); a single tokenizer is
            used for ``"text"``.
    """

    def __init__(self, tokenizers: Mapping[str, Any] | Any | None = None) -> None:
        if tokenizers is None:
            tokenizers = {}
        elif not isinstance(tokenizers, Mapping):
            tokenizers = {"text": tokenizers}
        for name, tok in tokenizers.items():
            if not callable(tok):
                raise InputError(
                    f"Collator: tokenizer for {name!r} must be callable; got {type(tok).__name__}."
                )
        self.tokenizers = dict(tokenizers)

    def __call__(self, items: list[dict[str, Any] | BadRecord]) -> dict[str, Any]:
        bad = [it for it in items if isinstance(it, BadRecord)]
        good = [it for it in items if not isinstance(it, BadRecord)]
        if not good:
            return {"index": torch.empty(0, dtype=torch.int64), "bad": bad}
        batch: dict[str, Any] = {}
        for key in good[0]:
            values = [it[key] for it in good]
            batch[key] = self._collate(key, values)
        batch["bad"] = bad
        return batch

    def _collate(self, key: str, values: list[Any]) -> Any:
        if key in ("index", "label"):
            return torch.tensor(values, dtype=torch.int64)
        if key == "group":
            return values
        first = values[0]
        if isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                hint = " Give SeriesTransform(length=...) a fixed length." if key == "series" else ""
                raise InputError(f"Collator: '{key}' items differ in shape: {sorted(shapes)[:5]}.{hint}")
            return torch.stack(values)
        if isinstance(first, str) and key in self.tokenizers:
            return self.tokenizers[key](values)
        return values
