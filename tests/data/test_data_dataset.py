"""ContrastiveDataset, Collator and the bad-record path: corrupt, missing, empty, NaN, too many."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.data import (
    BadRecord,
    BadRecordLog,
    ByteTokenizer,
    Collator,
    ContrastiveDataset,
    DataError,
    ImageTransform,
    ListSource,
    ManifestSource,
    NoDuplicatesBatchSampler,
    SeriesTransform,
    get_source,
)
from contrastkit.errors import ContrastkitError, InputError


def jpeg_bytes(color=(200, 30, 30), size=(20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def flickr_like(tmp_path) -> ManifestSource:
    """A manifest with good rows and every kind of bad row."""
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "img" / f"{name}.jpg").write_bytes(jpeg_bytes())
    good = jpeg_bytes()
    (tmp_path / "img" / "corrupt.jpg").write_bytes(good[:10] + b"\x00" * 50)
    (tmp_path / "img" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    rows = [
        ("img/a.jpg", "A red square."),
        ("img/a.jpg", "Red on red."),
        ("img/b.jpg", "Another red square."),
        ("img/corrupt.jpg", "Corrupt bytes."),
        ("img/missing.jpg", "No such file."),
        ("img/c.jpg", "   "),
        ("img/truncated.jpg", "Cut in half."),
        ("", "No path."),
    ]
    text = "image\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in rows)
    (tmp_path / "m.tsv").write_text(text)
    return ManifestSource(tmp_path / "m.tsv")


def test_good_items_have_transformed_modalities_index_and_group(flickr_like):
    data = ContrastiveDataset(flickr_like, {"image": ImageTransform(size=16)})
    item = data[1]
    assert set(item) == {"image", "text", "index", "group"}
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["text"] == "Red on red." and item["index"] == 1 and item["group"] == "img/a.jpg"


def test_every_bad_path_becomes_a_bad_record(flickr_like):
    data = ContrastiveDataset(flickr_like, {"image": ImageTransform(size=16)})
    items = [data[i] for i in range(len(data))]
    bad = {it.index: it.reason for it in items if isinstance(it, BadRecord)}
    assert sorted(bad) == [3, 4, 5, 6, 7]
    assert "cannot decode" in bad[3]
    assert "missing file" in bad[4] and "missing.jpg" in bad[4]
    assert "whitespace-only caption" in bad[5]
    assert "cannot decode" in bad[6]
    assert "empty image path" in bad[7]
    assert str(items[4]).startswith("#4: image: missing file")


def test_collator_drops_bad_records_and_tokenizes(flickr_like):
    data = ContrastiveDataset(flickr_like, {"image": ImageTransform(size=16)})
    batch = Collator({"text": ByteTokenizer(32)})([data[i] for i in range(len(data))])
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["index"].tolist() == [0, 1, 2] and batch["index"].dtype == torch.int64
    assert batch["group"] == ["img/a.jpg", "img/a.jpg", "img/b.jpg"]
    assert batch["text"]["input_ids"].shape[0] == 3 and batch["text"]["attention_mask"].dtype == torch.int64
    assert [b.index for b in batch["bad"]] == [3, 4, 5, 6, 7]
    raw = Collator()([data[0], data[2]])  # no tokenizer: the strings stay
    assert raw["text"] == ["A red square.", "Another red square."] and raw["bad"] == []
    empty = Collator()([data[3]])
    assert empty["index"].numel() == 0 and len(empty["bad"]) == 1


def test_encoded_image_bytes_good_corrupt_and_truncated():
    good = jpeg_bytes(size=(64, 64))
    records = [{"image": b, "label": 0} for b in (good, b"\xff\xd8garbage", good[:200], good[:-400], b"")]
    data = ContrastiveDataset(ListSource(records), {"image": ImageTransform(size=8)})
    items = [data[i] for i in range(len(records))]
    assert items[0]["image"].shape == (3, 8, 8)
    assert all(isinstance(it, BadRecord) for it in items[1:])
    assert [it.reason.split(":")[0] for it in items[1:]] == ["image"] * 4
    assert "empty image bytes" in items[4].reason


def test_labels_series_nan_and_missing_items():
    records = [
        {"series": np.ones((2, 5)), "text": "flat", "label": 1},
        {"series": np.array([[1.0, np.nan, 2.0, 0, 0], [0] * 5]), "text": "gap", "label": 0},
        {"series": None, "text": "none", "label": 0},
        {"series": np.zeros((2, 5)), "text": "", "label": 0},
        {"series": np.arange(10.0).reshape(2, 5), "text": "rise", "label": None},
    ]
    data = ContrastiveDataset(ListSource(records), {"series": SeriesTransform(length=8)})
    items = [data[i] for i in range(5)]
    assert [it.reason for it in items[1:]] == [
        "series: series has 1 NaN/inf value(s)",
        "missing series",
        "empty caption",
        "missing label",
    ]
    batch = Collator()(items)
    assert batch["series"].shape == (1, 2, 8) and batch["label"].tolist() == [1]


def test_collator_shape_mismatch_names_the_fix():
    records = [{"series": np.ones((1, 4)), "text": "a"}, {"series": np.ones((1, 6)), "text": "b"}]
    data = ContrastiveDataset(ListSource(records))
    with pytest.raises(InputError, match=r"'series' items differ in shape.*SeriesTransform\(length=...\)"):
        Collator()([data[0], data[1]])


def test_augmentation_depends_on_seed_epoch_and_index_only():
    src = get_source("shapes", n=4, image_size=32)
    data = ContrastiveDataset(src, {"image": ImageTransform(size=24, train=True)}, generator_seed=7)
    first = data[2]["image"]
    assert torch.equal(first, data[2]["image"])
    assert torch.equal(
        first, ContrastiveDataset(src, {"image": ImageTransform(24, train=True)}, 7)[2]["image"]
    )
    data.set_epoch(1)
    assert not torch.equal(first, data[2]["image"])
    data.set_epoch(0)
    assert torch.equal(first, data[2]["image"])


def test_user_transform_without_generator_and_unknown_modality():
    src = get_source("shapes", n=2, image_size=16)
    data = ContrastiveDataset(src, {"image": lambda im: torch.zeros(3, 2, 2), "text": str.upper})
    assert data[0]["image"].shape == (3, 2, 2) and data[0]["text"].isupper()
    with pytest.raises(InputError, match=r"transforms for \['series'\]"):
        ContrastiveDataset(src, {"series": SeriesTransform()})


def test_dataset_and_collator_pickle_for_worker_processes():
    src = get_source("shapes", n=8, image_size=16)
    data = pickle.loads(pickle.dumps(ContrastiveDataset(src)))
    collate = pickle.loads(pickle.dumps(Collator({"text": ByteTokenizer(16)})))
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=NoDuplicatesBatchSampler(src.groups()[1], batch_size=4), collate_fn=collate
    )
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 64, 64)
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["text"]["input_ids"].shape[1] == 16


def test_bad_record_log_over_the_limit_names_examples_and_the_way_out():
    log = BadRecordLog(max_fraction=0.01)
    log.add([], seen=100)
    log.check()
    log.add([BadRecord(i, f"missing file /x/{i}.jpg") for i in range(7)], seen=100)
    with pytest.raises(DataError, match="data.max_bad_fraction") as info:
        log.check()
    message = str(info.value)
    assert "7 of 200 records (3.50%)" in message
    assert "#0: missing file /x/0.jpg" in message and "#4:" in message and "#5:" not in message
    assert isinstance(info.value, InputError) and isinstance(info.value, ContrastkitError)
    assert "7 bad record(s)" in log.summary() and "and 2 more" in log.summary()


def test_bad_record_log_within_limit_min_seen_and_errors():
    log = BadRecordLog(max_fraction=0.05, min_seen=50)
    log.add([BadRecord(0, "empty caption")], seen=10)
    log.check()  # 10% but fewer than min_seen records seen
    log.add([], seen=40)
    log.check()  # 2%
    assert log.summary().startswith("1 bad record(s) skipped among 50 seen")
    assert BadRecordLog().summary() == "no bad records among 0 seen."
    with pytest.raises(InputError, match="seen"):
        log.add([BadRecord(1, "x"), BadRecord(2, "y")], seen=1)
    with pytest.raises(InputError, match="max_fraction"):
        BadRecordLog(max_fraction=2.0)


def test_bad_fraction_end_to_end(flickr_like):
    data = ContrastiveDataset(flickr_like, {"image": ImageTransform(size=16)})
    batch = Collator()([data[i] for i in range(len(data))])
    log = BadRecordLog(max_fraction=0.5)
    log.add(batch["bad"], seen=len(batch["index"]) + len(batch["bad"]))
    with pytest.raises(DataError, match=r"5 of 8 records.*#3: image: cannot decode"):
        log.check()
