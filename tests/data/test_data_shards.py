"""ShardSource on tar shards written with webdataset's TarWriter and with tarfile, and on CIFAR-10."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from contrastkit.data import DataError, ShardSource, expand_shard_urls, get_source
from contrastkit.errors import InputError


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shard(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path) -> Path:
    for s in range(2):
        samples = [
            {
                "__key__": f"s{k:03d}",
                "jpg": jpeg((10 * k, 0, 0)),
                "cls": str(k % 3).encode(),
                "txt": f"t{k}".encode(),
            }
            for k in range(s, 6, 2)
        ]
        write_shard(tmp_path / f"part-{s}.tar", samples)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return tmp_path


def test_brace_pattern_sorted_and_decoded(shards):
    src = ShardSource(str(shards / "part-{0..1}.tar"), keys={"image": "jpg", "label": "cls", "text": "txt"})
    assert len(src) == 6 and src.modalities == ("image", "text")
    assert [src[i]["text"] for i in range(6)] == [f"t{k}" for k in range(6)]  # sorted by key
    assert src.labels().tolist() == [0, 1, 2, 0, 1, 2]
    assert src.classes == ["a", "b", "c"]
    image = Image.open(io.BytesIO(src[3]["image"]))
    assert image.size == (8, 8)
    assert src.groups()[1].tolist() == list(range(6))


def test_list_of_urls_in_any_order_gives_same_records(shards):
    a = ShardSource([shards / "part-1.tar", shards / "part-0.tar"])
    b = ShardSource(str(shards / "part-{0..1}.tar"))
    assert [a[i]["image"] for i in range(6)] == [b[i]["image"] for i in range(6)]
    assert expand_shard_urls(str(shards / "part-{0..1}.tar")) == [
        str(shards / "part-0.tar"),
        str(shards / "part-1.tar"),
    ]


def test_plain_tarfile_shard_with_npy_series(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.float64).reshape(2, 3))
    write_tar(tmp_path / "x.tar", {"k1.npy": buffer.getvalue(), "k1.txt": b"rise", "k0.txt": b"only text"})
    src = ShardSource(tmp_path / "x.tar", keys={"series": "npy", "text": "txt"})
    assert src.classes is None and len(src) == 2
    assert src[0]["series"] is None  # k0 lacks its series: the dataset reports a bad record
    assert src[1]["series"].shape == (2, 3) and src[1]["series"].dtype == np.float32


def test_shard_errors(tmp_path, shards):
    with pytest.raises(DataError, match="not found"):
        ShardSource(tmp_path / "nope-{0..1}.tar")
    with pytest.raises(DataError, match=r"'\.png'.*extensions found: \['cls', 'jpg', 'txt'\]"):
        ShardSource(shards / "part-0.tar", keys={"image": "png"})
    with pytest.raises(InputError, match="keys"):
        ShardSource(shards / "part-0.tar", keys={"label": "cls"})
    write_tar(tmp_path / "bad.tar", {"a.jpg": jpeg((0, 0, 0)), "a.cls": b"cat"})
    with pytest.raises(DataError, match="not an integer"):
        ShardSource(tmp_path / "bad.tar")
    write_tar(tmp_path / "empty.tar", {})
    with pytest.raises(DataError, match="no samples"):
        ShardSource(tmp_path / "empty.tar")


def test_cifar10_shards(shared_data):
    src = get_source("cifar10", "train", root=shared_data)
    assert len(src) == 10_000 and src.name == "cifar10"
    assert src.classes[:2] == ["airplane", "automobile"] and len(src.classes) == 10
    record = src[0]
    assert record["text"] == f"a photo of a {src.classes[record['label']]}."
    assert Image.open(io.BytesIO(record["image"])).size == (32, 32)
    assert np.bincount(src.labels().numpy()).tolist() == [1000] * 10


def test_pieces_of_one_key_are_merged_wherever_they_lie(tmp_path):
    write_tar(
        tmp_path / "x-0.tar",
        {"a.jpg": jpeg((255, 0, 0)), "b.jpg": jpeg((0, 255, 0)), "a.cls": b"1", "b.cls": b"0"},
    )
    src = ShardSource(str(tmp_path / "x-0.tar"))
    assert len(src) == 2 and src.label_list() == [1, 0]


def test_a_sample_without_its_label_is_named(tmp_path):
    write_tar(tmp_path / "y-0.tar", {"a.jpg": jpeg((255, 0, 0)), "a.cls": b"1", "b.jpg": jpeg((0, 0, 255))})
    with pytest.raises(DataError, match=r"1 sample\(s\) have no '.cls' label file .*y-0.tar/b"):
        ShardSource(str(tmp_path / "y-0.tar"))


def test_negative_seeds_are_refused_up_front():
    from contrastkit.data import ContrastiveDataset, NoDuplicatesBatchSampler

    with pytest.raises(InputError, match="'generator_seed' must be an int >= 0"):
        ContrastiveDataset(get_source("shapes", "train", n=4), generator_seed=-1)
    with pytest.raises(InputError, match="'seed' must be an int >= 0"):
        NoDuplicatesBatchSampler(list(range(10)), 2, seed=-1)
