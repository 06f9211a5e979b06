"""Built-in sets: generated shapes, scikit-learn digits, Flickr8k on disk, the registry's errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contrastkit.data import SOURCES, DataError, ShapesSource, get_source
from contrastkit.data.shapes import COLORS, SHAPES
from contrastkit.errors import InputError

_C, _S = "|".join(COLORS), "|".join(SHAPES)
FIRST = re.compile(rf"^An? ({_C}) ({_S}) on an? ({_C})( and ({_C}))? background\.$")


def test_registry_lists_the_builtin_sets():
    assert {"shapes", "digits", "flickr8k", "cifar10"} <= set(SOURCES)


def test_shapes_same_seed_identical_bytes_other_seed_differs():
    a, b = get_source("shapes", n=40, seed=3), get_source("shapes", n=40, seed=3)
    c = get_source("shapes", n=40, seed=4)
    assert [a[i]["image"].tobytes() for i in range(40)] == [b[i]["image"].tobytes() for i in range(40)]
    assert [a[i]["text"] for i in range(40)] == [b[i]["text"] for i in range(40)]
    assert [a[i]["image"].tobytes() for i in range(40)] != [c[i]["image"].tobytes() for i in range(40)]


def test_shapes_records_and_caption_structure():
    src = ShapesSource("train", n=300, image_size=48, seed=0)
    assert src.classes == list(SHAPES) and len(SHAPES) >= 6 and len(COLORS) >= 6
    assert src.modalities == ("image", "text")
    seen_shapes, two_tone, extra = set(), 0, 0
    for i in range(len(src)):
        r = src[i]
        assert r["image"].size == (48, 48) and r["image"].mode == "RGB"
        sentences = r["text"].split(". ")
        assert FIRST.match(sentences[0] + "."), r["text"]
        assert SHAPES[r["label"]] in sentences[0] and len(sentences) >= 3
        assert sentences[1].startswith(f"The {SHAPES[r['label']]} is ")
        seen_shapes.add(r["label"])
        two_tone += " and " in sentences[0]
        extra += "There is also a small" in r["text"]
    assert seen_shapes == set(range(len(SHAPES)))
    assert 0 < two_tone < 300 and 0 < extra < 300
    assert src.labels().tolist() == [src[i]["label"] for i in range(len(src))]


def test_shapes_splits_differ_and_defaults():
    train, test = ShapesSource("train", n=50), ShapesSource("test", n=50)
    assert {train[i]["text"] for i in range(50)} != {test[i]["text"] for i in range(50)}
    assert train[0]["image"].tobytes() != test[0]["image"].tobytes()
    assert len(ShapesSource("test")) == 1000
    with pytest.raises(InputError, match="split"):
        get_source("shapes", "dev")
    with pytest.raises(InputError, match="image_size"):
        ShapesSource(image_size=4)


def test_digits():
    pytest.importorskip("sklearn")
    train, test = get_source("digits", "train"), get_source("digits", "test", image_size=16)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert not set(train.group_keys()) & set(test.group_keys())
    r = test[0]
    assert r["image"].size == (16, 16) and r["image"].mode == "RGB"
    assert test.classes[r["label"]] in r["text"] and r["text"].endswith(".")
    assert len({train[i]["text"].replace(train.classes[train[i]["label"]], "") for i in range(50)}) > 1
    again = get_source("digits", "test", image_size=16)
    assert again[5]["image"].tobytes() == test[5]["image"].tobytes() and again[5]["text"] == test[5]["text"]


def test_flickr8k(shared_data):
    train = get_source("flickr8k", "train", root=shared_data)  # the parent folder is accepted
    dev = get_source("flickr8k", "dev", root=shared_data / "flickr8k")
    names, ids = train.groups()
    assert len(train) == 15_000 and len(names) == 3_000 and ids.bincount().tolist() == [5] * 3000
    assert len(dev.groups()[0]) == 1_000
    assert Path(train[0]["image"]).is_file() and train[0]["text"]


def test_registry_errors(tmp_path):
    with pytest.raises(InputError, match="available: cifar10, digits, flickr8k, shapes"):
        get_source("imagenet")
    with pytest.raises(DataError, match=rf"{tmp_path}.*images/, train.tsv and dev.tsv"):
        get_source("flickr8k", root=tmp_path)
    with pytest.raises(DataError, match="CONTRASTKIT_DATA"):
        get_source("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"unknown option\(s\) \['size'\].*'n', 'image_size', 'seed'"):
        get_source("shapes", size=3)
    with pytest.raises(InputError, match="'train', 'dev'"):
        get_source("flickr8k", "test", root=tmp_path)


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTKIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "flickr8k")):
        get_source("flickr8k")
