"""knn_accuracy against a loop reference; linear_probe_accuracy against scikit-learn on real digits."""

from __future__ import annotations

import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import knn_accuracy, linear_probe_accuracy


def _ref_knn(train, train_labels, test, test_labels, k, temperature) -> float:
    correct = 0
    for x, y in zip(test, test_labels.tolist(), strict=True):
        cos = [float(x @ t) / (float(x.norm()) * float(t.norm())) for t in train]
        near = sorted(range(len(train)), key=lambda j: (-cos[j], j))[:k]
        votes: dict[int, float] = {}
        for j in near:
            c = int(train_labels[j])
            votes[c] = (
                votes.get(c, 0.0) + torch.tensor(cos[j] / temperature, dtype=torch.float64).exp().item()
            )
        top = max(votes.values())
        correct += min(c for c, v in votes.items() if v >= top * (1 - 1e-12)) == y
    return correct / len(test_labels)


def _blobs(seed: int, n_train: int = 60, n_test: int = 25, n_classes: int = 4, noise: float = 1.2):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, 8, generator=g, dtype=torch.float64)
    ytr = torch.randint(0, n_classes, (n_train,), generator=g)
    yte = torch.randint(0, n_classes, (n_test,), generator=g)
    xtr = centres[ytr] + noise * torch.randn(n_train, 8, generator=g, dtype=torch.float64)
    xte = centres[yte] + noise * torch.randn(n_test, 8, generator=g, dtype=torch.float64)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (5, 0.07), (20, 0.5), (60, 0.01)])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_knn_matches_reference(k, temperature, chunk_size):
    xtr, ytr, xte, yte = _blobs(0)
    got = knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=temperature, chunk_size=chunk_size)
    assert got == pytest.approx(_ref_knn(xtr, ytr, xte, yte, k, temperature), abs=1e-15)


def test_knn_hand_cases():
    x = torch.eye(4)
    assert knn_accuracy(x, torch.arange(4), 3 * x, torch.arange(4), k=1) == 1.0
    # test point (1, 1, 0): two equally close neighbours of classes 1 and 0 -> the vote ties -> class 0
    train = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    test = torch.tensor([[1.0, 1.0, 0.0]])
    assert knn_accuracy(train, torch.tensor([1, 0, 2]), test, torch.tensor([0]), k=2) == 1.0
    # a tiny temperature must not overflow: the closest neighbour dominates
    assert (
        knn_accuracy(
            train,
            torch.tensor([1, 0, 2]),
            torch.tensor([[1.0, 0.9, 0.0]]),
            torch.tensor([1]),
            k=3,
            temperature=1e-4,
        )
        == 1.0
    )


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = torch.tensor(x)[perm], torch.tensor(y)[perm]
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("weight_decay", [1e-3])
def test_linear_probe_agrees_with_sklearn_on_digits(digits, weight_decay):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr, xte, yte = digits
    ours = linear_probe_accuracy(xtr.float(), ytr, xte.float(), yte, weight_decay=weight_decay)
    scaler = StandardScaler().fit(xtr.numpy())
    model = LogisticRegression(C=1.0 / (weight_decay * len(ytr)), max_iter=5000)
    model.fit(scaler.transform(xtr.numpy()), ytr.numpy())
    theirs = model.score(scaler.transform(xte.numpy()), yte.numpy())
    assert ours > 0.9
    assert abs(ours - theirs) <= 0.02


def test_linear_probe_is_deterministic_and_separates_blobs():
    xtr, ytr, xte, yte = _blobs(3, noise=0.2)
    a = linear_probe_accuracy(xtr, ytr, xte, yte, max_iter=50)
    assert a == linear_probe_accuracy(xtr, ytr, xte, yte, max_iter=50) == 1.0
    constant = torch.cat(
        [xtr, torch.ones(len(ytr), 1, dtype=torch.float64)], dim=1
    )  # a zero-variance feature
    test = torch.cat([xte, torch.ones(len(yte), 1, dtype=torch.float64)], dim=1)
    assert linear_probe_accuracy(constant, ytr, test, yte, max_iter=50) == 1.0


@pytest.mark.parametrize("fn", [knn_accuracy, linear_probe_accuracy])
@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, torch.zeros(0, 3), "'train_emb' is empty"),
        (2, torch.randn(4, 5), "'test_emb' must have embedding size 3"),
        (2, torch.full((4, 3), torch.nan), "'test_emb' contains 12 NaN"),
        (1, torch.tensor([0, 1, -1, 0, 1, 0]), "'train_labels' must hold class ids >= 0; got -1"),
        (3, torch.tensor([0, 1]), r"'test_labels' must have shape \(4,\)"),
        (3, torch.zeros(4), "'test_labels' must be an integer tensor"),
    ],
)
def test_bad_inputs(fn, index, value, match):
    args = [
        torch.randn(6, 3),
        torch.tensor([0, 1, 1, 0, 1, 0]),
        torch.randn(4, 3),
        torch.tensor([0, 1, 0, 1]),
    ]
    args[index] = value
    with pytest.raises(InputError, match=f"{fn.__name__}: .*{match}"):
        fn(*args)


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (knn_accuracy, {"k": 7}, "'k' must be <= the number of training points 6; got 7"),
        (knn_accuracy, {"k": 0}, "'k' must be an int >= 1; got 0"),
        (knn_accuracy, {"temperature": 0.0}, "'temperature' must be a finite float > 0"),
        (knn_accuracy, {"chunk_size": 0}, "'chunk_size' must be an int >= 1"),
        (linear_probe_accuracy, {"weight_decay": -1.0}, "'weight_decay' must be finite and >= 0.0"),
        (linear_probe_accuracy, {"max_iter": 0}, "'max_iter' must be an int >= 1"),
        (linear_probe_accuracy, {"seed": -1}, "'seed' must be an int >= 0"),
    ],
)
def test_bad_options(fn, kwargs, match):
    args = [
        torch.randn(6, 3),
        torch.tensor([0, 1, 1, 0, 1, 0]),
        torch.randn(4, 3),
        torch.tensor([0, 1, 0, 1]),
    ]
    defaults = {"k": 3} if fn is knn_accuracy else {}
    with pytest.raises(InputError, match=match):
        fn(*args, **{**defaults, **kwargs})
