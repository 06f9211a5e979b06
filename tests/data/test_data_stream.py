"""ShardStream on small tar shards: splits over ranks and workers, determinism, resume, errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from contrastkit.data import DataError, ShardSource, ShardStream
from contrastkit.errors import InputError

KEYS = {"image": "jpg", "label": "cls", "text": "txt"}
N_SHARDS, PER_SHARD = 5, 7


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar(path: Path, files: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_files(key: str, n: int) -> list[tuple[str, bytes]]:
    return [
        (f"{key}.jpg", jpeg(n % 256)),
        (f"{key}.cls", str(n % 3).encode()),
        (f"{key}.txt", f"t{n}".encode()),
    ]


@pytest.fixture
def shards(tmp_path) -> Path:
    """``N_SHARDS`` shards of ``PER_SHARD`` samples; sample n (0..34) has key k{n:03d}."""
    for s in range(N_SHARDS):
        files = [f for n in range(s * PER_SHARD, (s + 1) * PER_SHARD) for f in sample_files(f"k{n:03d}", n)]
        write_tar(tmp_path / f"part-{s}.tar", files)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    return tmp_path


def urls(folder: Path, n: int = N_SHARDS) -> str:
    return str(folder / f"part-{{0..{n - 1}}}.tar")


def stream(folder: Path, n: int = N_SHARDS, **kwargs) -> ShardStream:
    return ShardStream(urls(folder, n), KEYS, **kwargs)


def load(data: ShardStream, workers: int = 0) -> list[dict]:
    return list(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers))


def keys(records: list[dict]) -> list[str]:
    return [r["group"].split("/")[1] for r in records]


def test_records_follow_the_source_contract(shards):
    data = stream(shards, shuffle_buffer=0)
    assert data.modalities == ("image", "text") and data.classes == ["a", "b", "c"]
    assert data.name == shards.name and data.keys == KEYS and len(data.urls) == N_SHARDS
    records = list(data)
    assert len(records) == N_SHARDS * PER_SHARD
    for r in records:
        assert set(r) == {"image", "label", "text", "group", "index"}
        assert isinstance(r["image"], bytes) and isinstance(r["label"], int) and isinstance(r["text"], str)
        shard, key = r["group"].split("/")
        n = int(key[1:])
        assert shard == f"part-{n // PER_SHARD}.tar" and r["text"] == f"t{n}" and r["label"] == n % 3
        assert r["index"] == (n // PER_SHARD) * 10**6 + n % PER_SHARD
    assert Image.open(io.BytesIO(records[0]["image"])).size == (4, 4)
    order = [r["index"] for r in records]  # no shuffle buffer: whole shards, each in tar order
    runs = [order[i : i + PER_SHARD] for i in range(0, len(order), PER_SHARD)]
    assert all(run == list(range(run[0], run[0] + PER_SHARD)) for run in runs)


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (3, 0), (5, 0), (1, 2), (2, 2)])
def test_every_sample_once_across_ranks_and_workers(shards, world, workers):
    per_rank = [keys(load(stream(shards, rank=r, world_size=world, seed=1), workers)) for r in range(world)]
    everything = sum(per_rank, [])
    assert sorted(everything) == [f"k{n:03d}" for n in range(N_SHARDS * PER_SHARD)]
    shard_sets = [{int(k[1:]) // PER_SHARD for k in ks} for ks in per_rank]
    for a in range(world):  # enough shards: a shard is read by one rank only
        for b in range(a + 1, world):
            assert not shard_sets[a] & shard_sets[b]


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_level_fallback_with_two_shards_and_four_ranks(shards, workers):
    per_rank = [keys(load(stream(shards, 2, rank=r, world_size=4), workers)) for r in range(4)]
    assert sorted(sum(per_rank, [])) == [f"k{n:03d}" for n in range(2 * PER_SHARD)]
    assert all(per_rank)  # no rank is left without samples
    sizes = [len(ks) for ks in per_rank]  # running count % (4 * workers): within one per worker
    assert max(sizes) - min(sizes) <= max(workers, 1)


def test_deterministic_per_seed_and_epoch(shards):
    a, b = stream(shards, seed=3, shuffle_buffer=10), stream(shards, seed=3, shuffle_buffer=10)
    first = keys(list(a))
    assert first == keys(list(b)) == keys(list(a))
    a.set_epoch(1)
    second = keys(list(a))
    assert second != first and sorted(second) == sorted(first)
    a.set_epoch(0)
    assert keys(list(a)) == first
    assert keys(list(stream(shards, seed=4, shuffle_buffer=10))) != first
    assert keys(load(stream(shards, seed=3, shuffle_buffer=10), workers=2)) == keys(
        load(stream(shards, seed=3, shuffle_buffer=10), workers=2)
    )


@pytest.mark.parametrize("n", [0, 1, 12, 35, 40])
def test_skip_and_resume_equal_the_tail(shards, n):
    full = stream(shards, rank=1, world_size=2, seed=5, shuffle_buffer=6)
    full.set_epoch(2)
    expected = list(full)
    assert full.state_dict() == {"epoch": 2, "seed": 5, "yielded": len(expected)}
    running = stream(shards, rank=1, world_size=2, seed=5, shuffle_buffer=6)
    running.set_epoch(2)
    it = iter(running)
    head = [next(it) for _ in range(min(n, len(expected)))]
    state = running.state_dict()
    assert state["yielded"] == len(head)
    resumed = stream(shards, rank=1, world_size=2, seed=5, shuffle_buffer=6)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    assert list(resumed) == expected  # the next pass is a whole epoch again
    resumed.skip(n)
    assert list(resumed) == expected[n:]


def test_resume_with_workers_raises(shards, monkeypatch):
    data = stream(shards)
    data.skip(3)
    # as in DataLoader worker 0 of 2 (a real worker re-raises in the main process, but torch then
    # waits 5 s per worker to shut the workers down)
    worker = SimpleNamespace(id=0, num_workers=2)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
    with pytest.raises(InputError, match="cannot resume 3 record"):
        next(iter(data))
    assert 0 < len(list(data)) < N_SHARDS * PER_SHARD  # the next pass: worker 0 of 2, from the start
    with pytest.raises(InputError, match="seed 1"):
        data.load_state_dict({"seed": 1, "epoch": 0, "yielded": 0})


def test_errors(tmp_path, shards):
    with pytest.raises(DataError, match=r"ShardStream: shard file\(s\) not found: .*nope-1.tar"):
        ShardStream(str(tmp_path / "nope-{0..1}.tar"))
    with pytest.raises(InputError, match="keys"):
        ShardStream(urls(shards), {"label": "cls"})
    with pytest.raises(InputError, match="'shuffle_buffer' must be an int >= 0"):
        ShardStream(urls(shards), shuffle_buffer=-1)
    with pytest.raises(InputError, match=r"'rank' must be in \[0, 2\)"):
        ShardStream(urls(shards), rank=2, world_size=2)
    with pytest.raises(DataError, match=r"'\.png'.*extensions found: \['cls', 'jpg', 'txt'\]"):
        list(ShardStream(urls(shards), {"image": "png"}))
    with pytest.raises(
        DataError, match=r"part-\d.tar/k\d+ has no '\.label' label file .*\['cls', 'jpg', 'txt'\]"
    ):
        list(ShardStream(urls(shards), {"image": "jpg", "label": "label"}))
    write_tar(tmp_path / "bad.tar", [("a.jpg", jpeg(0)), ("a.cls", b"cat")])
    with pytest.raises(DataError, match="not an integer"):
        list(ShardStream(tmp_path / "bad.tar"))
    write_tar(
        tmp_path / "apart.tar", [("a.jpg", jpeg(0)), ("b.jpg", jpeg(1)), ("a.cls", b"1"), ("b.cls", b"0")]
    )
    with pytest.raises(DataError, match="'a' are not adjacent"):
        list(ShardStream(tmp_path / "apart.tar", {"image": "jpg"}, shuffle_buffer=0))


def test_empty_shard_is_skipped_and_text_only_keys(tmp_path, shards):
    write_tar(tmp_path / "part-5.tar", [])
    data = ShardStream(urls(shards, 6), {"text": "txt"}, shuffle_buffer=0)
    records = list(data)
    assert len(records) == 35 and set(records[0]) == {"text", "group", "index"}


def test_cifar10_shards_split_over_two_ranks(shared_data):
    folder = shared_data / "cifar10"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    paths = sorted(str(p) for p in folder.glob("train-*.tar"))
    groups = []
    for rank in range(2):
        data = ShardStream(paths, rank=rank, world_size=2, shuffle_buffer=100)
        groups.append([r["group"] for r in data])
    assert groups[0] and groups[1] and not set(groups[0]) & set(groups[1])
    assert sorted(groups[0] + groups[1]) == sorted(ShardSource(paths).group_keys())
