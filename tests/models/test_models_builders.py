"""build_tower / build_model: config dicts to towers and models, and their errors."""

from __future__ import annotations

import pytest
import torch

from contrastkit import InputError
from contrastkit.models import (
    TOWERS,
    ContrastiveModel,
    ImageCNN,
    ImageViT,
    SeriesCNN,
    SeriesPatchTransformer,
    TextTransformer,
    build_model,
    build_tower,
)


def test_registry_names():
    assert set(TOWERS) == {"cnn", "vit", "transformer", "series_cnn", "series_patch", "hf", "timm"}


@pytest.mark.parametrize(
    "spec, cls, attrs",
    [
        ({"type": "cnn", "width": 4, "depth": 1, "output_dim": None}, ImageCNN, {"output_dim": 4}),
        ({"type": "vit", "image_size": 16, "dim": 8, "heads": 2, "depth": 1}, ImageViT, {"output_dim": 8}),
        ({"type": "series_cnn", "in_channels": 6, "width": 4, "depth": 1}, SeriesCNN, {"in_channels": 6}),
        ({"type": "series_patch", "in_channels": 3, "dim": 8, "heads": 2}, SeriesPatchTransformer, {}),
    ],
)
def test_build_tower(spec, cls, attrs):
    tower = build_tower(spec)
    assert type(tower) is cls
    for name, value in attrs.items():
        assert getattr(tower, name) == value


def test_text_tower_takes_vocab_and_length_from_the_tokenizer():
    spec = {"type": "transformer", "dim": 8, "heads": 2, "depth": 1}
    tower = build_tower(spec, vocab_size=99, max_length=12)
    assert isinstance(tower, TextTransformer) and (tower.vocab_size, tower.max_length) == (99, 12)
    same = build_tower({**spec, "vocab_size": 99}, vocab_size=99)
    assert same.vocab_size == 99 and same.max_length == 64
    with pytest.raises(InputError, match="sets vocab_size=50 but the tokenizer has vocab_size=99"):
        build_tower({**spec, "vocab_size": 50}, vocab_size=99)
    with pytest.raises(InputError, match=r"missing required option\(s\) \['vocab_size'\]"):
        build_tower(spec)
    # image towers take no vocabulary: the keywords are ignored for them
    assert isinstance(build_tower({"type": "cnn", "width": 4, "depth": 1}, vocab_size=99), ImageCNN)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("cnn", "must be a dict with a 'type'"),
        ({"width": 4}, "must be a dict with a 'type'"),
        ({"type": "resnet"}, r"unknown tower type 'resnet'; valid types: \['cnn', 'hf', 'series_cnn'"),
        ({"type": "cnn", "widht": 4}, r"\['widht'\]; valid options: \['depth', 'in_channels'"),
        ({"type": "series_cnn"}, r"missing required option\(s\) \['in_channels'\]"),
        ({"type": "cnn", "width": -1}, "ImageCNN: argument 'width'"),
        ({"type": "hf", "path": "/nonexistent/model"}, "not a folder"),
    ],
)
def test_build_tower_errors(spec, match):
    with pytest.raises(InputError, match=match):
        build_tower(spec)


def test_build_model_end_to_end():
    spec = {
        "towers": {
            "image": {"type": "cnn", "width": 4, "depth": 1},
            "text": {"type": "transformer", "dim": 8, "heads": 2, "depth": 1},
        },
        "embed_dim": 6,
        "projection": {"image": "mlp"},
        "init_temperature": 0.1,
        "init_bias": -5.0,
        "frozen": ["image"],
    }
    model = build_model(spec, vocab_sizes={"text": 30}, max_lengths={"text": 6})
    assert isinstance(model, ContrastiveModel) and model.modalities == ("image", "text")
    assert model.towers["text"].vocab_size == 30 and model.towers["text"].max_length == 6
    assert model.heads["image"].kind == "mlp" and model.frozen == ("image",)
    assert float(model.scale().detach()) == pytest.approx(10.0) and float(model.bias().detach()) == -5.0
    batch = {
        "image": torch.randn(2, 3, 8, 8),
        "text": {"input_ids": torch.ones(2, 6, dtype=torch.long), "attention_mask": torch.ones(2, 6)},
    }
    batch["text"]["attention_mask"] = batch["text"]["attention_mask"].long()
    assert {m: z.shape for m, z in model(batch).items()} == {"image": (2, 6), "text": (2, 6)}


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ({"embed_dim": 4}, {}, "must be a dict with 'towers'"),
        ({"towers": {}}, {}, "must be a dict with 'towers'"),
        ([], {}, "must be a dict with 'towers'"),
        ({"towers": {"s": {"type": "series_cnn", "in_channels": 2}}, "temperature": 0.1}, {}, "temperature"),
        ({"towers": {"s": {"type": "series_cnn"}}}, {}, r"tower 's': build_tower: .*\['in_channels'\]"),
        (
            {"towers": {"s": {"type": "series_cnn", "in_channels": 2}}},
            {"vocab_sizes": {"text": 10}},
            r"'vocab_sizes' names modalities \['text'\]",
        ),
        (
            {"towers": {"s": {"type": "series_cnn", "in_channels": 2}}, "frozen": ["t"]},
            {},
            r"'frozen' names unknown modalities \['t'\]",
        ),
    ],
)
def test_build_model_errors(spec, kwargs, match):
    with pytest.raises(InputError, match=match):
        build_model(spec, **kwargs)


def test_build_model_lists_valid_options():
    with pytest.raises(InputError) as info:
        build_model({"towers": {"s": {"type": "series_cnn", "in_channels": 2}}, "dim": 3})
    message = str(info.value)
    for option in ("towers", "embed_dim", "projection", "init_temperature", "init_bias", "frozen"):
        assert f"'{option}'" in message
