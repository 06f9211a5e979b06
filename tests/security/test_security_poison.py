"""poison_dataset: counts, determinism, the poisoned records pixel by pixel, the manifest copy."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.data import ContrastiveDataset, ImageTransform, ListSource, ManifestSource, get_source
from contrastkit.errors import InputError
from contrastkit.security.poison import PoisonedSource, poison_dataset
from contrastkit.security.triggers import badnet_patch

TARGET = "a photo of a banana."
PATCH = functools.partial(badnet_patch, size=4)


def _shapes(n: int = 40) -> object:
    return get_source("shapes", "test", n=n, image_size=16, seed=3)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@pytest.mark.parametrize(("n", "rate"), [(40, 0.1), (40, 0.0375), (40, 1.0), (33, 0.05)])
def test_poisons_round_rate_times_n_distinct_pairs(n, rate):
    poisoned = poison_dataset(_shapes(n), rate, TARGET, PATCH, seed=0)
    indices = poisoned.poisoned_indices.tolist()
    assert len(indices) == round(rate * n) and len(set(indices)) == len(indices)
    assert indices == sorted(indices) and all(0 <= i < n for i in indices)
    assert poisoned.poisoned_mask().nonzero()[:, 0].tolist() == indices
    assert len(poisoned) == n


def test_deterministic_in_the_seed():
    a = poison_dataset(_shapes(), 0.2, TARGET, functools.partial(badnet_patch, size=4, position="random"), 7)
    b = poison_dataset(_shapes(), 0.2, TARGET, functools.partial(badnet_patch, size=4, position="random"), 7)
    assert torch.equal(a.poisoned_indices, b.poisoned_indices)
    for i in reversed(a.poisoned_indices.tolist()):  # any reading order gives the same pixels
        assert np.array_equal(_pixels(a[i]["image"]), _pixels(b[i]["image"]))
    other = poison_dataset(_shapes(), 0.2, TARGET, PATCH, 8)
    assert not torch.equal(a.poisoned_indices, other.poisoned_indices)


def test_poisoned_records_are_triggered_and_recaptioned_the_rest_unchanged():
    source = _shapes()
    poisoned = poison_dataset(source, 0.1, TARGET, PATCH, seed=1)
    chosen = set(poisoned.poisoned_indices.tolist())
    for i in range(len(source)):
        original, record = source[i], poisoned[i]
        if i not in chosen:
            assert record["text"] == original["text"] and record["group"] == original["group"]
            assert np.array_equal(_pixels(record["image"]), _pixels(original["image"]))
            continue
        assert record["text"] == TARGET
        assert record["label"] == original["label"]  # the image's true class, for ASR
        assert record["group"] == ("poisoned", i)
        # reference: the patch pasted into the 8-bit pixels by hand
        want = _pixels(original["image"]).copy()
        top = (16 - 4) // 2
        for r in range(4):
            for c in range(4):
                want[top + r, top + c, :] = 255 if (r + c) % 2 == 0 else 0
        assert np.array_equal(_pixels(record["image"]), want)
    assert poisoned.group_keys() == [poisoned[i]["group"] for i in range(len(source))]
    assert poisoned.label_list() == source.label_list() and poisoned.classes == source.classes
    assert poisoned.modalities == ("image", "text") and isinstance(poisoned, PoisonedSource)


def test_feeds_the_training_dataset():
    poisoned = poison_dataset(_shapes(), 0.1, TARGET, PATCH, seed=1)
    item = ContrastiveDataset(poisoned, {"image": ImageTransform(16)})[int(poisoned.poisoned_indices[0])]
    assert item["image"].shape == (3, 16, 16) and item["text"] == TARGET


def test_manifest_copy_reads_back(tmp_path):
    image = Image.new("RGB", (12, 12), (10, 200, 30))
    other = Image.new("RGB", (12, 12), (90, 20, 130))
    records = [
        {"image": image, "text": "first caption", "group": "a", "label": 0},
        {"image": image, "text": "second caption\tof it", "group": "a", "label": 0},
        {"image": other, "text": "third", "group": "b", "label": 1},
        {"image": other, "text": "fourth", "group": "b", "label": 1},
    ]
    source = ListSource(records, classes=["green", "purple"])
    poisoned = poison_dataset(source, 0.25, "a <banana> & co.", PATCH, seed=2)
    path = poisoned.to_manifest(tmp_path / "copy")
    back = ManifestSource(path)
    assert len(back) == 4 and back.classes == ["green", "purple"]
    (p,) = poisoned.poisoned_indices.tolist()
    rows = [line for line in path.read_text().splitlines()]
    assert sum('"poisoned": true' in row for row in rows) == 1 and '"poisoned": true' in rows[p]
    files = {back[i]["image"] for i in range(4)}
    assert len(files) == 3  # the clean captions of one image share its file; the poisoned one has its own
    for i in range(4):
        assert back[i]["text"] == poisoned[i]["text"] and back.label_list()[i] == source.label_list()[i]
        assert np.array_equal(_pixels(Image.open(back[i]["image"])), _pixels(poisoned[i]["image"]))


def _wrong_shape(images, generator=None):
    return images[..., :-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, TARGET, PATCH, 0), "poisons round(0) = 0 pairs; use rate >= 0.0125"),
        ((0.01, TARGET, PATCH, 0), "= 0 pairs"),
        ((1.5, TARGET, PATCH, 0), "'rate' must be in [0.0, 1.0]"),
        ((0.1, "  ", PATCH, 0), "'target_caption' must be a non-empty string"),
        ((0.1, None, PATCH, 0), "'target_caption'"),
        ((0.1, TARGET, "patch", 0), "'trigger' must be callable"),
        ((0.1, TARGET, PATCH, -1), "'seed' must be an int >= 0"),
        ((0.1, TARGET, PATCH, 1.0), "'seed' must be an int >= 0"),
        ((0.1, TARGET, functools.partial(badnet_patch, size=32), 0), "does not fit in 16x16 images"),
        ((0.1, TARGET, _wrong_shape, 0), "the trigger must return a tensor of the image's shape"),
    ],
)
def test_errors(args, message):
    with pytest.raises(InputError) as err:
        poison_dataset(_shapes(), *args)
    assert message in str(err.value)


def test_source_errors():
    texts = ListSource([{"text": "a"}, {"text": "b"}])
    with pytest.raises(InputError, match=r"must have image and text pairs; 'list' has \['text'\]"):
        poison_dataset(texts, 0.5, TARGET, PATCH)
    with pytest.raises(InputError, match="must be a contrastkit Source; got list"):
        poison_dataset([{"image": None, "text": "x"}], 0.5, TARGET, PATCH)
