"""kway_zero_shot against a float64 loop reference that replays the same generator draws."""

from __future__ import annotations

import pytest
import torch

from conftest import loop_dot
from contrastkit.errors import InputError
from contrastkit.eval.kway import kway_zero_shot
from contrastkit.eval.zeroshot import zero_shot_accuracy


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ref_kway(pred, class_emb, labels, k, topk, n_draws, seed):
    """Per draw, keys = rand(N, C) from the seeded generator; trial i's distractors are the k - 1
    other classes with the smallest keys; rank = 1 + #{distractor cos >= true cos}."""
    g = torch.Generator().manual_seed(seed)
    n, c = pred.shape[0], class_emb.shape[0]

    def cos(a, b):
        return float(loop_dot(a, b) / (loop_dot(a, a).sqrt() * loop_dot(b, b).sqrt()))

    sims = [[cos(pred[i], class_emb[j]) for j in range(c)] for i in range(n)]
    hits = dict.fromkeys(topk, 0)
    for _ in range(n_draws):
        keys = torch.rand(n, c, generator=g)
        for i in range(n):
            y = int(labels[i])
            others = sorted((float(keys[i, j]), j) for j in range(c) if j != y)
            distractors = [j for _, j in others[: k - 1]]
            rank = 1 + sum(sims[i][j] >= sims[i][y] for j in distractors)
            for kk in topk:
                hits[kk] += rank <= kk
    return {f"top{kk}": hits[kk] / (n_draws * n) for kk in topk}


@pytest.mark.parametrize("k, chunk_size", [(2, 1024), (5, 1024), (5, 4), (9, 1), (9, 7)])
def test_matches_loop_reference(k: int, chunk_size: int) -> None:
    pred, class_emb = _randn(13, 4, seed=1), _randn(9, 4, seed=2)
    labels = torch.randint(0, 9, (13,), generator=torch.Generator().manual_seed(3))
    topk = tuple(kk for kk in (1, 2, 5) if kk <= k)
    got = kway_zero_shot(
        pred, class_emb, labels, k=k, topk=topk, n_draws=3,
        generator=torch.Generator().manual_seed(11), chunk_size=chunk_size,
    )  # fmt: skip
    want = ref_kway(pred, class_emb, labels, k, topk, 3, seed=11)
    assert got.keys() == want.keys()
    for key in want:
        assert abs(got[key] - want[key]) < 1e-12, (key, got, want)


def test_instance_identification_matches_loop() -> None:
    # the AVDE protocol: each test item is its own class (labels = arange)
    target = _randn(15, 6, seed=4)
    pred = target + 1.5 * _randn(15, 6, seed=5)
    got = kway_zero_shot(pred, target, torch.arange(15), k=6, topk=(1, 3), n_draws=4,
                         generator=torch.Generator().manual_seed(7))  # fmt: skip
    want = ref_kway(pred, target, torch.arange(15), 6, (1, 3), 4, seed=7)
    assert 0 < got["top1"] < 1 and got == pytest.approx(want, abs=1e-12)


def test_perfect_predictor_scores_one() -> None:
    class_emb = _randn(50, 8, seed=6)
    labels = torch.randint(0, 50, (120,), generator=torch.Generator().manual_seed(8))
    got = kway_zero_shot(3.0 * class_emb[labels], class_emb, labels, k=20, topk=(1, 5))
    assert got == {"top1": 1.0, "top5": 1.0}


def test_random_predictions_are_at_chance() -> None:
    pred, class_emb = _randn(2000, 16, seed=9).float(), _randn(400, 16, seed=10).float()
    labels = torch.randint(0, 400, (2000,), generator=torch.Generator().manual_seed(12))
    got = kway_zero_shot(pred, class_emb, labels, k=50, topk=(1, 5), n_draws=5)
    assert abs(got["top1"] - 1 / 50) < 0.01 and abs(got["top5"] - 5 / 50) < 0.025


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_classes_equals_ordinary_top_k(dtype: torch.dtype) -> None:
    pred, class_emb = _randn(200, 8, seed=13).to(dtype), _randn(30, 8, seed=14).to(dtype)
    labels = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(15))
    got = kway_zero_shot(pred, class_emb, labels, k=30, topk=(1, 5, 30), n_draws=2)
    assert got == zero_shot_accuracy(pred, class_emb, labels, topk=(1, 5, 30))
    assert got["top30"] == 1.0 and 0 < got["top1"] < got["top5"] < 1


def test_ties_count_as_misses() -> None:
    class_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = kway_zero_shot(torch.tensor([[1.0, 0.0]]), class_emb, torch.tensor([0]), k=3, topk=(1, 2))
    assert got == {"top1": 0.0, "top2": 1.0}


def test_draws_are_seeded() -> None:
    pred, class_emb = _randn(60, 4, seed=16), _randn(40, 4, seed=17)
    labels = torch.arange(60) % 40

    def run(generator):
        return kway_zero_shot(pred, class_emb, labels, k=8, topk=(1,), n_draws=2, generator=generator)

    assert run(None) == run(torch.Generator().manual_seed(0))
    assert run(torch.Generator().manual_seed(1)) == run(torch.Generator().manual_seed(1))
    assert len({run(torch.Generator().manual_seed(s))["top1"] for s in range(5)}) > 1


# ---------------------------------------------------------------- errors


def _ok() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(6, 3), torch.randn(10, 3), torch.arange(6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"k": 11}, "k"),
        ({"k": 1}, "k"),
        ({"k": 2.5}, "k"),
        ({"k": 4, "topk": (1, 5)}, "topk"),
        ({"topk": ()}, "topk"),
        ({"topk": (0,)}, "topk"),
        ({"n_draws": 0}, "n_draws"),
        ({"generator": 3}, "generator"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_options_raise(kwargs: dict, argument: str) -> None:
    pred, class_emb, labels = _ok()
    kwargs = {"k": 5, **kwargs}
    with pytest.raises(InputError, match=f"kway_zero_shot: argument '{argument}'"):
        kway_zero_shot(pred, class_emb, labels, **kwargs)


def test_bad_inputs_raise() -> None:
    pred, class_emb, labels = _ok()
    cases = [
        (pred[0], class_emb, labels, "pred"),
        (torch.randn(0, 3), class_emb, labels[:0], "pred"),
        (pred.masked_fill(torch.eye(6, 3, dtype=torch.bool), float("nan")), class_emb, labels, "pred"),
        (pred, torch.randn(10, 4), labels, "class_emb"),
        (pred, class_emb.index_fill(0, torch.tensor([2]), 0.0), labels, "class_emb"),
        (pred, class_emb, torch.arange(5), "labels"),
        (pred, class_emb, labels.float(), "labels"),
        (pred, class_emb, torch.tensor([0, 1, 2, 3, 4, 10]), "labels"),
        (pred, class_emb, torch.tensor([0, 1, 2, 3, 4, -1]), "labels"),
    ]
    for p, w, y, argument in cases:
        with pytest.raises(InputError, match=f"kway_zero_shot: argument '{argument}'"):
            kway_zero_shot(p, w, y, k=5)
