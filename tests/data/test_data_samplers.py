"""NoDuplicatesBatchSampler and ClassBalancedBatchSampler: invariants, determinism, resuming."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from contrastkit.data import ClassBalancedBatchSampler, NoDuplicatesBatchSampler
from contrastkit.errors import InputError


def random_groups(rng: random.Random) -> list[int]:
    n_groups = rng.randint(3, 40)
    return [rng.randrange(n_groups) for _ in range(rng.randint(n_groups, 200))]


@pytest.mark.parametrize("case", range(50))
def test_no_duplicates_random_cases(case):
    rng = random.Random(case)
    groups = random_groups(rng)
    batch_size = rng.randint(1, len(set(groups)))
    drop_last = bool(case % 2)
    sampler = NoDuplicatesBatchSampler(groups, batch_size, seed=case, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))  # at most once per epoch
    for b in batches:
        assert len({groups[i] for i in b}) == len(b)  # no duplicate group in a batch
        assert len(b) == batch_size or not drop_last
    if not drop_last:
        assert sorted(used) == list(range(len(groups)))  # every record exactly once


def test_no_duplicates_coverage_with_five_captions_per_image():
    groups = torch.arange(600).repeat_interleave(5)  # like Flickr8k: 5 captions per image
    sampler = NoDuplicatesBatchSampler(groups, batch_size=64, seed=0)
    used = [i for b in sampler for i in b]
    assert len(sampler) == len(used) // 64 and len(used) >= 3000 - 64  # almost nothing is dropped


def test_no_duplicates_epochs_are_deterministic_and_differ():
    groups = [i // 3 for i in range(90)]
    a, b = NoDuplicatesBatchSampler(groups, 8, seed=1), NoDuplicatesBatchSampler(groups, 8, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(NoDuplicatesBatchSampler(groups, 8, seed=2)) != first


@pytest.mark.parametrize("k", [0, 3, 7])
def test_no_duplicates_resume_from_state_dict(k):
    groups = [i // 2 for i in range(100)]
    full = NoDuplicatesBatchSampler(groups, 10, seed=5)
    full.set_epoch(2)
    expected = list(full)
    run = NoDuplicatesBatchSampler(groups, 10, seed=5)
    run.set_epoch(2)
    it = iter(run)
    head = [next(it) for _ in range(k)]
    state = run.state_dict()
    assert state == {"seed": 5, "epoch": 2, "batch": k}
    resumed = NoDuplicatesBatchSampler(groups, 10, seed=5)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    assert list(resumed) == expected  # the following pass is a whole epoch again


def test_resume_with_start_batch_and_end_of_epoch_state():
    groups = list(range(40))
    sampler = NoDuplicatesBatchSampler(groups, 4, seed=0)
    sampler.set_epoch(3)
    expected = list(sampler)
    sampler.set_epoch(3, start_batch=6)
    assert list(sampler) == expected[6:]
    finished = sampler.state_dict()
    assert finished["batch"] == len(expected)
    other = NoDuplicatesBatchSampler(groups, 4, seed=0)
    other.load_state_dict(finished)
    assert other.epoch == 4 and other.state_dict()["batch"] == 0
    with pytest.raises(InputError, match="seed 1"):
        NoDuplicatesBatchSampler(groups, 4, seed=0).load_state_dict({"seed": 1, "epoch": 0, "batch": 0})


def test_no_duplicates_errors():
    with pytest.raises(InputError, match="distinct groups"):
        NoDuplicatesBatchSampler([0, 0, 1], batch_size=3)
    with pytest.raises(InputError, match="batch_size"):
        NoDuplicatesBatchSampler([0, 1], batch_size=0)
    with pytest.raises(InputError, match="empty"):
        NoDuplicatesBatchSampler([], batch_size=1)


def test_class_balanced_counts_and_at_most_once():
    labels = [c for c in range(6) for _ in range(10 + 3 * c)]
    sampler = ClassBalancedBatchSampler(
        torch.tensor(labels), classes_per_batch=3, samples_per_class=4, seed=0
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0 and sampler.batch_size == 12
    for b in batches:
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 3 and set(counts.values()) == {4}
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used))
    chunks = sum(n // 4 for n in Counter(labels).values())
    assert len(batches) * 3 >= chunks - 3 * 2  # nearly every full chunk is used


@pytest.mark.parametrize("case", range(10))
def test_class_balanced_random_cases_and_resume(case):
    rng = random.Random(100 + case)
    n_classes, per_class = rng.randint(2, 8), rng.randint(1, 4)
    labels = [f"c{rng.randrange(n_classes)}" for _ in range(rng.randint(8 * n_classes, 120))]
    present = Counter(labels)
    if min(present.values()) < per_class or len(present) < 2:
        pytest.skip("case draws a class too small")
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=per_class, seed=case)
    batches = list(sampler)
    for b in batches:
        assert sorted(Counter(labels[i] for i in b).values()) == [per_class, per_class]
    k = len(batches) // 2
    resumed = ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=per_class, seed=case)
    resumed.load_state_dict({"seed": case, "epoch": 0, "batch": k})
    assert list(resumed) == batches[k:]
    resumed.set_epoch(1)
    assert list(resumed) != batches


def test_class_balanced_errors():
    with pytest.raises(InputError, match=r"only 2 classes"):
        ClassBalancedBatchSampler([0, 0, 1, 1], classes_per_batch=3, samples_per_class=1)
    with pytest.raises(InputError, match=r"1 class\(es\) have fewer than samples_per_class=2.*7: 1"):
        ClassBalancedBatchSampler([0, 0, 1, 1, 7], classes_per_batch=2, samples_per_class=2)
    with pytest.raises(InputError, match="samples_per_class"):
        ClassBalancedBatchSampler([0, 1], classes_per_batch=2, samples_per_class=0)
