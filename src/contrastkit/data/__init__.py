"""Data: sources (manifests, WebDataset shards, built-in sets), transforms, tokenizers, samplers.

A source yields raw records (``{"image": path, "text": str, "group": ..., "label": int}``);
``ContrastiveDataset`` applies the per-modality transforms and turns unloadable records into
``BadRecord`` values; ``Collator`` builds the batch dict (see the contract in docs) and lists the
bad records it dropped; ``BadRecordLog`` raises ``DataError`` when too many are bad.

Example:
    >>> src = get_source("shapes", "train", n=256)
    >>> data = ContrastiveDataset(src, {"image": ImageTransform(64, train=True)})
    >>> sampler = NoDuplicatesBatchSampler(src.groups()[1], batch_size=32)
    >>> collate = Collator({"text": ByteTokenizer(64)})
    >>> loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate)  # doctest: +SKIP
"""

from contrastkit.data.augment import DeBiasCaptionAugment, debias_caption, split_sentences
from contrastkit.data.badrecords import BadRecord, BadRecordLog, DataError
from contrastkit.data.beir import load_beir
from contrastkit.data.builtin import (
    SOURCES,
    DigitsSource,
    LabelCaptionSource,
    default_data_root,
    get_source,
)
from contrastkit.data.caption_eda import caption_eda
from contrastkit.data.dataset import Collator, ContrastiveDataset
from contrastkit.data.degrade import composition_id, degrade
from contrastkit.data.manifest import ManifestSource
from contrastkit.data.samplers import (
    ClassBalancedBatchSampler,
    DistributedBatchSampler,
    NoDuplicatesBatchSampler,
    split_rows,
)
from contrastkit.data.segments import find_segments
from contrastkit.data.selfaug import SelfAugmented, SelfAugmentedNegatives, change_statistics
from contrastkit.data.shapes import ShapesSource
from contrastkit.data.shards import ShardSource, expand_shard_urls
from contrastkit.data.smart import load_smart
from contrastkit.data.sources import MODALITIES, ListSource, Source
from contrastkit.data.stream import ShardStream, TransformedStream
from contrastkit.data.tokenize import BPETokenizer, ByteTokenizer, pad_sequences
from contrastkit.data.transforms import ImageTransform, SeriesTransform, TextTransform, load_image

__all__ = [
    "BPETokenizer",
    "BadRecord",
    "BadRecordLog",
    "ByteTokenizer",
    "ClassBalancedBatchSampler",
    "Collator",
    "ContrastiveDataset",
    "DataError",
    "DeBiasCaptionAugment",
    "DigitsSource",
    "DistributedBatchSampler",
    "ImageTransform",
    "LabelCaptionSource",
    "ListSource",
    "MODALITIES",
    "ManifestSource",
    "NoDuplicatesBatchSampler",
    "SOURCES",
    "SelfAugmented",
    "SelfAugmentedNegatives",
    "SeriesTransform",
    "ShapesSource",
    "ShardSource",
    "ShardStream",
    "Source",
    "TextTransform",
    "TransformedStream",
    "caption_eda",
    "change_statistics",
    "composition_id",
    "debias_caption",
    "default_data_root",
    "degrade",
    "expand_shard_urls",
    "find_segments",
    "get_source",
    "load_beir",
    "load_image",
    "load_smart",
    "pad_sequences",
    "split_rows",
    "split_sentences",
]
