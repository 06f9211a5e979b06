"""Build towers and models from config dicts, e.g. {"type": "cnn", "width": 32}.

``TOWERS`` maps a type name to its constructor; every other key of a tower spec is a keyword
argument of that constructor, checked against its signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from contrastkit.errors import InputError
from contrastkit.models.adapters import HFTextTower, TimmImageTower
from contrastkit.models.contrastive import ContrastiveModel
from contrastkit.models.image import ImageCNN, ImageViT
from contrastkit.models.series import SeriesCNN, SeriesPatchTransformer
from contrastkit.models.text import TextTransformer

TOWERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": ImageCNN,
    "vit": ImageViT,
    "transformer": TextTransformer,
    "series_cnn": SeriesCNN,
    "series_patch": SeriesPatchTransformer,
    "hf": HFTextTower,
    "timm": TimmImageTower,
}

# Short spellings accepted in specs: type -> {spec key: constructor argument}.
_ALIASES = {"timm": {"checkpoint": "checkpoint_path"}}


def _options(builder: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(builder).parameters
    return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_kwargs(fn: str, what: str, given: Mapping[str, Any], builder: Callable[..., Any]) -> None:
    """Raise for unknown options or missing required ones, listing the valid options."""
    options = _options(builder)
    unknown = sorted(set(given) - set(options))
    missing = [n for n, p in options.items() if p.default is p.empty and n not in given]
    if unknown or missing:
        problem = f"unknown option(s) {unknown}" if unknown else f"missing required option(s) {missing}"
        raise InputError(f"{fn}: {what}: {problem}; valid options: {sorted(options)}.")


def build_tower(
    spec: Mapping[str, Any], *, vocab_size: int | None = None, max_length: int | None = None
) -> nn.Module:
    """Build one tower from ``{"type": name, **options}``.

    ``vocab_size`` and ``max_length`` (from the data layer's tokenizer) fill those options of a
    tower that takes them when the spec leaves them out; a spec value that disagrees raises.

    Example:
        >>> build_tower({"type": "transformer", "dim": 64, "depth": 2}, vocab_size=1000, max_length=32)
    """
    fn = "build_tower"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise InputError(
            f"{fn}: a tower spec must be a dict with a 'type' (one of {sorted(TOWERS)}); got {spec!r}."
        )
    kind = spec["type"]
    if kind not in TOWERS:
        raise InputError(f"{fn}: unknown tower type {kind!r}; valid types: {sorted(TOWERS)}.")
    builder = TOWERS[kind]
    aliases = _ALIASES.get(kind, {})
    kwargs = {aliases.get(k, k): v for k, v in spec.items() if k != "type"}
    options = _options(builder)
    for name, value in (("vocab_size", vocab_size), ("max_length", max_length)):
        if value is None or name not in options:
            continue
        if name in kwargs and kwargs[name] != value:
            raise InputError(
                f"{fn}: the {kind!r} spec sets {name}={kwargs[name]!r} but the tokenizer has {name}={value}; "
                f"drop it from the spec to take the tokenizer's."
            )
        kwargs[name] = value
    _check_kwargs(fn, f"tower type {kind!r}", kwargs, builder)
    return builder(**kwargs)


def build_model(
    spec: Mapping[str, Any],
    *,
    vocab_sizes: Mapping[str, int] | None = None,
    max_lengths: Mapping[str, int] | None = None,
) -> ContrastiveModel:
    """Build a ContrastiveModel from ``{"towers": {modality: tower spec}, **model options}``.

    Model options are ContrastiveModel's arguments (embed_dim, projection, init_temperature,
    max_scale, learn_scale, init_bias, frozen). ``vocab_sizes`` / ``max_lengths`` map a modality
    to its tokenizer's values, passed to that tower's build_tower.

    Example:
        >>> build_model({"towers": {"image": {"type": "cnn", "width": 16},
        ...                         "text": {"type": "transformer", "dim": 64}},
        ...              "embed_dim": 128}, vocab_sizes={"text": 1000}, max_lengths={"text": 32})
    """
    fn = "build_model"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("towers"), Mapping) or not spec["towers"]:
        raise InputError(
            f"{fn}: a model spec must be a dict with 'towers': {{modality: tower spec}} (and options "
            f"such as embed_dim); got {spec!r}."
        )
    vocab_sizes, max_lengths = dict(vocab_sizes or {}), dict(max_lengths or {})
    for name, given in (("vocab_sizes", vocab_sizes), ("max_lengths", max_lengths)):
        unknown = sorted(set(given) - set(spec["towers"]))
        if unknown:
            raise InputError(f"{fn}: '{name}' names modalities {unknown} that the spec has no tower for.")
    options = {k: v for k, v in spec.items() if k != "towers"}
    valid = {n: p for n, p in _options(ContrastiveModel).items() if n != "towers"}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(
            f"{fn}: unknown model option(s) {unknown}; valid options: {['towers', *sorted(valid)]}."
        )
    towers = {}
    for modality, tower_spec in spec["towers"].items():
        try:
            towers[modality] = build_tower(
                tower_spec, vocab_size=vocab_sizes.get(modality), max_length=max_lengths.get(modality)
            )
        except InputError as err:
            raise InputError(f"{fn}: tower {modality!r}: {err}") from err
    return ContrastiveModel(towers, **options)
