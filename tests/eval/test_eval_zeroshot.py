"""class_embeddings and zero_shot_accuracy against loop references."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import class_embeddings, zero_shot_accuracy


class FakeEncoder:
    """A fixed random (D,) vector per distinct string, scaled by the string length; records calls."""

    def __init__(self, dim: int = 6) -> None:
        self.dim, self.table, self.calls = dim, {}, []

    def vector(self, text: str) -> torch.Tensor:
        if text not in self.table:
            g = torch.Generator().manual_seed(len(self.table))
            self.table[text] = len(text) * torch.randn(self.dim, generator=g, dtype=torch.float64)
        return self.table[text]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.vector(t) for t in texts])


def test_class_embeddings_match_the_formula():
    enc = FakeEncoder()
    names, templates = ["cat", "dog", "axolotl"], ["a photo of a {}.", "a drawing of the {}", "{}"]
    got = class_embeddings(enc, names, templates)
    assert got.shape == (3, 6) and got.dtype == torch.float64
    assert enc.calls == [[t.format(n) for t in templates] for n in names]  # once per class
    for c, name in enumerate(names):
        units = [enc.vector(t.format(name)) / enc.vector(t.format(name)).norm() for t in templates]
        mean = sum(units) / len(units)
        torch.testing.assert_close(got[c], mean / mean.norm(), atol=1e-15, rtol=0)


def test_default_template_and_no_grad():
    weight = torch.randn(6, 6, requires_grad=True)
    enc = FakeEncoder()
    got = class_embeddings(lambda texts: enc(texts).float() @ weight, ["a", "b"])
    assert enc.calls == [["a photo of a a."], ["a photo of a b."]]
    assert not got.requires_grad
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))


def _ref_accuracy(x, w, labels, k) -> float:
    hits = 0
    for xi, y in zip(x, labels.tolist(), strict=True):
        cos = [float(xi @ wc) / (float(xi.norm()) * float(wc.norm())) for wc in w]
        rank = 1 + sum(1 for c in range(len(w)) if c != y and cos[c] >= cos[y])
        hits += rank <= min(k, len(w))
    return hits / len(labels)


@pytest.mark.parametrize("chunk_size", [1, 6, 1024])
def test_accuracy_matches_reference(chunk_size):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (40,), generator=g)
    x = w[labels] + 1.2 * torch.randn(40, 5, generator=g, dtype=torch.float64)
    got = zero_shot_accuracy(x, w, labels, topk=(1, 2, 5, 9), chunk_size=chunk_size)
    assert list(got) == ["top1", "top2", "top5", "top9"]
    for k in (1, 2, 5, 9):
        assert got[f"top{k}"] == pytest.approx(_ref_accuracy(x, w, labels, k), abs=1e-15)
    assert got["top9"] == 1.0  # clipped to C = 7


def test_ties_are_misses_and_identity_is_perfect():
    w = torch.eye(3, dtype=torch.float64)
    assert zero_shot_accuracy(2 * torch.eye(3), w.float(), torch.arange(3)) == {"top1": 1.0, "top5": 1.0}
    tied = torch.tensor([[1.0, 1.0, 0.0]])  # equally close to classes 0 and 1
    assert zero_shot_accuracy(tied, w.float(), torch.tensor([0]), topk=(1, 2)) == {"top1": 0.0, "top2": 1.0}
    x = torch.tensor([[1.0, 0.0, 0.0]])
    dup = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # two identical class embeddings
    assert zero_shot_accuracy(x, dup, torch.tensor([1]), topk=(1,))["top1"] == 0.0


def test_end_to_end_with_prompts():
    enc = FakeEncoder()
    names = ["red", "green", "blue", "cyan"]
    w = class_embeddings(enc, names, ["{}", "a {} thing"])
    labels = torch.tensor([0, 1, 2, 3, 2])
    acc = zero_shot_accuracy(w[labels] + 0.01 * math.pi, w, labels)
    assert acc == {"top1": 1.0, "top5": 1.0}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_names": []}, "'class_names' must be a non-empty list of strings"),
        ({"class_names": "cat"}, "'class_names' must be a non-empty list"),
        ({"class_names": ["cat", 3]}, "'class_names' must hold strings only; got 3"),
        ({"templates": ["a photo"]}, "'templates' must hold prompts with a '\\{\\}' slot.*'a photo'"),
        ({"templates": []}, "'templates' must be a non-empty list"),
        ({"encode_text": "clip"}, "'encode_text' must be a callable"),
        (
            {"encode_text": lambda t: torch.randn(len(t) + 1, 4)},
            "'encode_text\\(prompts of cat\\)' must have 1 rows",
        ),
        ({"encode_text": lambda t: torch.full((len(t), 4), torch.nan)}, "prompts of cat.*NaN"),
        (
            {"encode_text": lambda t: torch.randn(1, 4 if t[0].endswith("cat.") else 5)},
            "embedding size 5 for 'dog'",
        ),
        ({"encode_text": lambda t: torch.zeros(len(t), 4)}, "all-zero row"),
    ],
)
def test_class_embeddings_bad_inputs(kwargs, match):
    args = {"encode_text": FakeEncoder(), "class_names": ["cat", "dog"], "templates": ["a photo of a {}."]}
    with pytest.raises(InputError, match=f"class_embeddings: .*{match}"):
        class_embeddings(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, torch.zeros(0, 3), "'image_emb' is empty"),
        (1, torch.randn(4, 2), "'class_emb' must have embedding size 3"),
        (0, torch.full((5, 3), torch.inf), "'image_emb' contains 15 NaN/inf"),
        (2, torch.tensor([0, 1, 2, 3, 4]), r"'labels' must hold class ids in \[0, 4\).*got 4"),
        (2, torch.tensor([0, 1, -2, 3, 0]), "'labels' must hold class ids >= 0; got -2"),
        (2, torch.tensor([0, 1, 2]), r"'labels' must have shape \(5,\)"),
    ],
)
def test_accuracy_bad_inputs(index, value, match):
    args = [torch.randn(5, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 3, 0])]
    args[index] = value
    with pytest.raises(InputError, match=f"zero_shot_accuracy: .*{match}"):
        zero_shot_accuracy(*args)
    with pytest.raises(InputError, match="'topk' must be an int >= 1; got 0"):
        zero_shot_accuracy(torch.randn(5, 3), torch.randn(4, 3), torch.zeros(5, dtype=torch.long), topk=(0,))
