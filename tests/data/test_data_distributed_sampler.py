"""split_rows and DistributedBatchSampler: the ranks' slices rebuild every global batch."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data import (
    ClassBalancedBatchSampler,
    Collator,
    ContrastiveDataset,
    DistributedBatchSampler,
    ManifestSource,
    NoDuplicatesBatchSampler,
    split_rows,
)
from contrastkit.errors import InputError

GROUPS = [i // 3 for i in range(90)]  # 30 groups of 3 records
LABELS = [i % 6 for i in range(120)]  # 6 classes of 20 records


def no_duplicates(batch_size: int = 10) -> NoDuplicatesBatchSampler:
    return NoDuplicatesBatchSampler(GROUPS, batch_size, seed=3)


def class_balanced() -> ClassBalancedBatchSampler:
    return ClassBalancedBatchSampler(LABELS, classes_per_batch=3, samples_per_class=3, seed=4)


def per_rank(make, world: int) -> list[DistributedBatchSampler]:
    return [DistributedBatchSampler(make(), rank=r, world_size=world) for r in range(world)]


def joined(ranks: list[list[list[int]]]) -> list[list[int]]:
    """The global batches rebuilt from the ranks' slices, batch by batch, in rank order."""
    return [sum(slices, []) for slices in zip(*ranks, strict=True)]


def test_split_rows():
    assert split_rows(10, 4) == [3, 3, 2, 2]
    assert split_rows(8, 4) == [2, 2, 2, 2]
    assert split_rows(3, 5) == [1, 1, 1, 0, 0]
    assert split_rows(0, 2) == [0, 0]
    assert all(sum(split_rows(t, w)) == t for t in range(30) for w in range(1, 7))
    with pytest.raises(InputError, match=r"split_rows: argument 'world' must be an int >= 1; got 0"):
        split_rows(4, 0)
    with pytest.raises(InputError, match="'total'"):
        split_rows(-1, 2)
    with pytest.raises(InputError, match="'total'"):
        split_rows(4.0, 2)


@pytest.mark.parametrize("make", [no_duplicates, class_balanced], ids=["no_duplicates", "class_balanced"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_slices_rebuild_global_batches_over_epochs(make, world):
    reference = make()
    ranks = per_rank(make, world)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        expected = list(reference)
        slices = [list(sampler) for sampler in ranks]
        assert joined(slices) == expected
        assert all(len(s) == len(expected) == len(sampler) for s, sampler in zip(slices, ranks, strict=True))
        for b, batch in enumerate(expected):
            assert [len(s[b]) for s in slices] == split_rows(len(batch), world)


@pytest.mark.parametrize("make", [no_duplicates, class_balanced], ids=["no_duplicates", "class_balanced"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_resume_with_start_batch_and_state_dict(make, world):
    reference = make()
    reference.set_epoch(2)
    expected = list(reference)
    k = len(expected) // 2
    ranks = per_rank(make, world)
    for sampler in ranks:
        sampler.set_epoch(2, start_batch=k)
    assert joined([list(s) for s in ranks]) == expected[k:]

    running = DistributedBatchSampler(make(), rank=1, world_size=world)
    running.set_epoch(2)
    uninterrupted = list(running)  # rank 1's slices of the whole epoch
    running.set_epoch(2)
    it = iter(running)
    head = [next(it) for _ in range(k)]
    state = running.state_dict()
    assert state["batch"] == running.position == k and running.epoch == 2
    resumed = per_rank(make, world)
    for sampler in resumed:
        sampler.load_state_dict(state)
    tail = [list(sampler) for sampler in resumed]
    assert joined(tail) == expected[k:]
    assert head + tail[1] == uninterrupted
    assert resumed[0].batches(2) == expected  # batches() gives the global batches


@pytest.mark.parametrize("world", [2, 3, 4])
def test_no_group_repeats_across_the_ranks_of_one_batch(world):
    ranks = per_rank(lambda: no_duplicates(batch_size=10), world)
    for slices in zip(*ranks, strict=True):
        groups = [GROUPS[i] for s in slices for i in s]
        assert len(groups) == len(set(groups)) == 10


def test_uneven_split_ten_over_four():
    ranks = per_rank(lambda: no_duplicates(batch_size=10), 4)
    first = [next(iter(sampler)) for sampler in ranks]
    assert [len(s) for s in first] == [3, 3, 2, 2]
    assert sum(first, []) == no_duplicates(batch_size=10).batches(0)[0]


def test_plain_batch_sampler_and_delegation():
    plain = torch.utils.data.BatchSampler(range(7), batch_size=3, drop_last=False)
    with pytest.raises(InputError, match=r"global batch of 1 record\(s\).*world_size=2.*at least 2"):
        list(DistributedBatchSampler(plain, rank=1, world_size=2))  # the short last batch [6]
    sampler = DistributedBatchSampler(
        torch.utils.data.BatchSampler(range(8), batch_size=4, drop_last=False), rank=1, world_size=2
    )
    assert list(sampler) == [[2, 3], [6, 7]] and len(sampler) == 2
    for name in ("set_epoch", "state_dict", "load_state_dict", "batches", "position", "epoch"):
        assert not hasattr(sampler, name)
    with pytest.raises(AttributeError, match="set_epoch"):
        sampler.set_epoch(1)


def test_defaults_and_errors():
    sampler = DistributedBatchSampler(no_duplicates())
    assert (sampler.rank, sampler.world_size) == (0, 1)  # no process group
    assert list(sampler) == list(no_duplicates())
    with pytest.raises(
        InputError, match=r"global batch of 2 record\(s\).*world_size=3.*raise the batch size"
    ):
        list(DistributedBatchSampler(no_duplicates(batch_size=2), rank=0, world_size=3))
    with pytest.raises(InputError, match=r"'rank' must be in \[0, 2\).*got 2"):
        DistributedBatchSampler(no_duplicates(), rank=2, world_size=2)
    with pytest.raises(InputError, match="'rank' must be an int >= 0"):
        DistributedBatchSampler(no_duplicates(), rank=-1, world_size=2)
    with pytest.raises(InputError, match="'world_size' must be an int >= 1"):
        DistributedBatchSampler(no_duplicates(), rank=0, world_size=0)
    with pytest.raises(InputError, match=r"'rank' must be in \[0, 1\)"):
        DistributedBatchSampler(no_duplicates(), rank=1)  # world_size defaults to 1


def test_each_rank_loads_its_slice_of_a_manifest(tmp_path):
    rows = "".join(f"caption {i}\t{i // 2}\n" for i in range(24))  # 12 pairs of captions
    (tmp_path / "m.tsv").write_text("text\tpair\n" + rows, encoding="utf-8")
    source = ManifestSource(tmp_path / "m.tsv", group_by="pair")
    data = ContrastiveDataset(source, {"text": lambda text: text.upper()})
    groups = source.groups()[1]
    expected = NoDuplicatesBatchSampler(groups, 6, seed=1).batches(0)
    loaded = []
    for rank in range(4):
        sampler = DistributedBatchSampler(NoDuplicatesBatchSampler(groups, 6, seed=1), rank, 4)
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=Collator())
        batches = list(loader)
        assert [b["index"].tolist() for b in batches] == list(sampler)
        for b in batches:
            assert b["text"] == [f"CAPTION {i}" for i in b["index"].tolist()] and not b["bad"]
        loaded.append([b["index"].tolist() for b in batches])
    assert joined(loaded) == expected
