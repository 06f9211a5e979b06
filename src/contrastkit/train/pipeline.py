"""From a config to data: sources, transforms (with augmented views), tokenizer, sampler, loader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from contrastkit.data import (
    BPETokenizer,
    ByteTokenizer,
    ClassBalancedBatchSampler,
    Collator,
    ContrastiveDataset,
    DataError,
    DistributedBatchSampler,
    ImageTransform,
    ManifestSource,
    NoDuplicatesBatchSampler,
    ShardSource,
    ShardStream,
    Source,
    TextTransform,
    TransformedStream,
    get_source,
    split_rows,
)
from contrastkit.data.augment import debias_caption
from contrastkit.distributed import get_rank, get_world_size, is_active
from contrastkit.errors import InputError
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.defense import AUGMENTED_VIEWS, augmented_views
from contrastkit.train.mined import (
    RAW_TEXTS,
    SCORES,
    MinedPairsDataset,
    MinedSource,
    document_keys,
    is_document_key,
)

TOKENIZER_FILE = "tokenizer.json"


def build_source(
    spec: dict[str, Any], key: str, *, stream: bool = False, seed: int = 0
) -> Source | ShardStream:
    """A source from a ``data.train`` / ``data.eval`` spec; errors are prefixed with the key.

    A shard spec with ``stream: true`` (and optionally ``shuffle_buffer``) gives a ``ShardStream``
    split over ranks and workers when ``stream`` is True (training); elsewhere (evaluation, a
    probe's training set) the same shards are read into memory as a ``ShardSource``.
    """
    options = dict(spec)
    try:
        if "name" in options:
            name = options.pop("name")
            return get_source(name, options.pop("split", "train"), options.pop("root", None), **options)
        if "manifest" in options:
            return ManifestSource(options.pop("manifest"), **options)
        if "mined" in options:
            return MinedSource(options.pop("mined"), **options)
        streamed = options.pop("stream", False)
        if not isinstance(streamed, bool):
            raise ConfigError(f"data.{key}.stream: expected true or false; got {streamed!r}.")
        if streamed and stream:
            return ShardStream(options.pop("shards"), seed=seed, **options)
        options.pop("shuffle_buffer", None)
        return ShardSource(options.pop("shards"), **options)
    except (InputError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"data.{key}: {err}") from None


class MultiView:
    """Apply a random transform ``views`` times to one item -> (views, ...) stacked."""

    def __init__(self, transform: Any, views: int) -> None:
        self.transform, self.views = transform, views

    def __call__(self, item: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self.transform(item, generator=generator) for _ in range(self.views)])


def image_transforms(config: Config, train: bool) -> dict[str, Any]:
    """``{"image": ...}``: augmented (and multi-view) for training, deterministic for evaluation."""
    size = config.data.image_size
    if not train:
        return {"image": ImageTransform(size, train=False)}
    transform = ImageTransform(size, train=config.data.augment)
    return {"image": MultiView(transform, config.data.views) if config.data.views > 1 else transform}


def build_tokenizer(config: Config, source: Source | None, run_dir: Path | None) -> Any:
    """``data.tokenizer``: ``byte``, or ``bpe``: ``run_dir/tokenizer.json`` when it exists, else a
    BPE trained on ``source``'s captions and saved there. (``model`` is the text tower's own; the
    trainer takes it from the tower.)"""
    data = config.data
    if data.tokenizer == "byte":
        return ByteTokenizer(data.max_length)
    saved = None if run_dir is None else run_dir / TOKENIZER_FILE
    if saved is not None and saved.is_file():
        return BPETokenizer.load(saved)
    if source is None:
        raise ConfigError(
            f"data.tokenizer: 'bpe' but {run_dir} holds no {TOKENIZER_FILE}; the checkpoint is incomplete."
        )
    if isinstance(source, ShardStream):  # every shard, whatever this process's share
        whole = ShardStream(source.urls, source.keys, shuffle_buffer=0, rank=0, world_size=1)
        texts = [record["text"] for record in whole]
    elif isinstance(source, MinedSource):  # queries and documents share the tower and tokenizer
        texts = source.texts()
    else:
        texts = [source[i]["text"] for i in range(len(source))]
    tokenizer = BPETokenizer.train(
        [t for t in texts if isinstance(t, str) and t.strip()], data.vocab_size, data.max_length
    )
    if saved is not None:
        tokenizer.save(saved)
    return tokenizer


def build_sampler(config: Config, source: Source) -> torch.utils.data.Sampler:
    """The batch sampler: no duplicate groups per batch, class-balanced, or plain random."""
    data, batch = config.data, config.train.batch_size
    try:
        if data.sampler == "class_balanced":
            labels = source.labels()
            if labels is None:
                raise ConfigError(
                    f"data.sampler: 'class_balanced' needs labels; source {source.name!r} has none."
                )
            if data.classes_per_batch * data.samples_per_class != batch:
                raise ConfigError(
                    f"data.classes_per_batch x data.samples_per_class = "
                    f"{data.classes_per_batch * data.samples_per_class} must equal train.batch_size "
                    f"({batch})."
                )
            return ClassBalancedBatchSampler(
                labels, data.classes_per_batch, data.samples_per_class, config.seed
            )
        groups = source.groups()[1] if data.sampler == "no_duplicates" else torch.arange(len(source))
        return NoDuplicatesBatchSampler(groups, batch, seed=config.seed, drop_last=True)
    except InputError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"data.sampler: {err}") from None


SECOND_CAPTION = "text2"
"""The batch key of ``data.second_caption``'s caption (tokenized like ``text``)."""


def retrieval_keys(config: Config) -> tuple[str, ...]:
    """The batch keys of mined training rows besides the query (``text``): the positive, the
    ``data.negatives`` negatives, the teacher scores and the raw texts (for a guide model)."""
    return (*document_keys(config.data.negatives), SCORES, RAW_TEXTS)


def text_aliases(batch: dict[str, Any]) -> dict[str, str] | None:
    """Batch keys a tower embeds besides its own modality: the second caption, the positive and
    negatives of mined rows (one shared tower: a bi-encoder), CleanCLIP's augmented image and
    caption views. None when there are none."""
    aliases = {k: "text" for k in batch if k == SECOND_CAPTION or is_document_key(k)}
    aliases.update({k: tower for k, tower in AUGMENTED_VIEWS.items() if k in batch})
    return aliases or None


def second_caption_transform(kind: str) -> Any:
    """raw caption -> the second caption: its first sentence (Long-CLIP's short branch) or the
    DeBias-CLIP augmentation (first sentence dropped, the rest subsampled and permuted)."""
    if kind == "first_sentence":
        return TextTransform(max_sentences=1)
    clean = TextTransform(None)
    return lambda item, generator=None: debias_caption(clean(item), generator=generator)


class BatchStream:
    """Endless training batches with a resumable position ``{"epoch", "batch"}``.

    Batches are global (``train.batch_size``); under torchrun each rank loads its slice of each.

    The position counts the batches handed out (not those a DataLoader worker prefetched), so a
    checkpoint taken after step k resumes with batch k + 1, augmentations included (they are
    seeded by (seed, epoch, index)).
    """

    def __init__(self, config: Config, source: Source | ShardStream, tokenizers: dict[str, Any]) -> None:
        if isinstance(source, MinedSource):
            self._mined_dataset(config, source, tokenizers)
            return
        transforms = image_transforms(config, train=True) if "image" in source.modalities else {}
        derived = {}
        if "text" in source.modalities:
            transforms["text"] = TextTransform(config.data.caption_sentences)
            if config.data.second_caption is not None:
                derived[SECOND_CAPTION] = ("text", second_caption_transform(config.data.second_caption))
                tokenizers = {**tokenizers, SECOND_CAPTION: tokenizers.get("text")}
        views = augmented_views(config)  # loss.defense cleanclip: augmented image and caption
        if views:
            derived.update(views)
            if "text" in tokenizers:
                tokenizers = {**tokenizers, "text_aug": tokenizers["text"]}
        if isinstance(source, ShardStream):
            self._stream_loader(config, source, transforms, Collator(tokenizers), derived)
            return
        self.dataset = ContrastiveDataset(source, transforms, config.seed, derived)
        self.sampler = build_sampler(config, source)
        self._map_loader(config, source, tokenizers)

    def _mined_dataset(self, config: Config, source: MinedSource, tokenizers: dict[str, Any]) -> None:
        """Mined rows: query, positive and negatives tokenized alike (whole texts, no sentence cut)."""
        if config.loss.name == "margin_mse" and not source.has_scores:
            raise ConfigError(
                f"loss.name: margin_mse trains on the teacher scores, but {source.path} has no 'scores'; "
                f"mine with a teacher (scorer) or use mnrl."
            )
        try:
            self.dataset = MinedPairsDataset(source, config.data.negatives)
        except DataError as err:
            raise ConfigError(f"data.negatives: {err}") from None
        text = tokenizers.get("text")
        if text is not None:
            tokenizers = {**tokenizers, **dict.fromkeys(document_keys(config.data.negatives), text)}
        self.sampler = build_sampler(config, source)
        self._map_loader(config, source, tokenizers)

    def _map_loader(self, config: Config, source: Source, tokenizers: dict[str, Any]) -> None:
        """The loader of a map-style dataset over ``self.sampler``'s global batches."""
        if len(self.sampler) == 0:
            raise ConfigError(
                f"train.batch_size: {config.train.batch_size} leaves no full batch in {len(source)} records; "
                f"lower it."
            )
        # under torchrun every rank walks the same global batches and loads only its slice of each
        per_rank = DistributedBatchSampler(self.sampler) if is_active() else self.sampler
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=per_rank,
            collate_fn=Collator(tokenizers),
            num_workers=config.data.num_workers,
            # its own generator: a new iterator (each epoch, each resume) then draws its worker
            # seed from here, not from the global RNG that dropout uses, so resuming is exact
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.epoch, self.consumed = 0, 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    def _stream_loader(
        self, config: Config, source: ShardStream, transforms: dict, collate: Collator, derived: dict
    ) -> None:
        """Streamed shards: each rank reads its own shards, in batches of its rows of the global batch."""
        if config.data.sampler == "class_balanced":
            raise ConfigError(
                "data.sampler: 'class_balanced' needs a map-style source; drop data.train.stream."
            )
        self.dataset = TransformedStream(source, transforms, config.seed, derived)
        self.sampler = None
        rows = split_rows(config.train.batch_size, get_world_size())[get_rank()]
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=rows,
            drop_last=True,
            collate_fn=collate,
            num_workers=config.data.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.epoch, self.consumed = 0, 0
        self._iterator = None

    def position(self) -> dict[str, int]:
        """Where the next batch comes from."""
        return {"epoch": self.epoch, "batch": self.consumed}

    def seek(self, position: dict[str, int]) -> None:
        """Continue from a saved ``position``."""
        self.epoch, self.consumed = int(position["epoch"]), int(position["batch"])
        self._iterator = None
        if self.sampler is None and self.consumed and self.loader.num_workers:
            raise ConfigError(
                "data.num_workers: a streamed run resumes exactly mid-epoch only without loader workers "
                "(each worker reads its own shards); resume with --set data.num_workers=0."
            )

    def next(self) -> dict[str, Any]:
        """The next batch (dict of the data contract, with ``"bad"`` records listed)."""
        while True:
            if self._iterator is None:
                self.dataset.set_epoch(self.epoch)
                if self.sampler is not None:
                    self.sampler.set_epoch(self.epoch, self.consumed)
                else:
                    self.dataset.stream.skip(self.consumed * self.loader.batch_size)
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.consumed == 0:
                    raise DataError(
                        f"epoch {self.epoch} gave no full batch of {self.loader.batch_size} records on "
                        f"this process; its share of the data is too small for train.batch_size."
                    ) from None
                self.epoch, self.consumed, self._iterator = self.epoch + 1, 0, None
                continue
            self.consumed += 1
            return batch
