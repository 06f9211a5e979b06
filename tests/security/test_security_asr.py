"""attack_success_rate against a loop reference on a transparent stub model; persistence_curve
against the trapezoid by hand."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from contrastkit.errors import InputError
from contrastkit.security.asr import PERSISTENCE_STEPS, attack_success_rate, persistence_curve
from contrastkit.security.triggers import badnet_patch, blended_trigger

CLASSES = ["red", "green", "blue"]
BLUE = 2


class ColourModel(nn.Module):
    """Image embedding: the mean of each (normalised) channel; text embedding: a fixed row per
    prompt id. Everything about its predictions can be recomputed by hand."""

    def __init__(self, text_table: torch.Tensor) -> None:
        super().__init__()
        self.text_table = nn.Parameter(text_table, requires_grad=False)

    def encode(self, modality: str, batch, normalize: bool = True) -> torch.Tensor:
        z = batch.mean(dim=(2, 3)) if modality == "image" else self.text_table[batch]
        return nn.functional.normalize(z, dim=-1)


def _prompts(templates):
    return [t.format(c) for c in CLASSES for t in templates]


def _setup(templates=("a photo of a {}.",), seed=0):
    prompts = _prompts(templates)
    g = torch.Generator().manual_seed(seed)
    table = torch.eye(3).repeat_interleave(len(templates), 0) + 0.3 * torch.randn(
        len(prompts), 3, generator=g
    )
    tokenizer = lambda texts: torch.tensor([prompts.index(t) for t in texts])  # noqa: E731
    return ColourModel(table), tokenizer


def _colour_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = 0.45 * torch.rand(n, 3, 4, 4, generator=g)
    for i in range(n):
        images[i, labels[i]] += 0.5
    return images, labels


def ref_predict(model: ColourModel, tokenizer, images: torch.Tensor, templates) -> list[int]:
    """Zero-shot argmax by loops: class vector = normalised mean of normalised prompt rows."""
    classes = []
    for name in CLASSES:
        rows = [model.text_table[int(tokenizer([t.format(name)])[0])].double() for t in templates]
        rows = [r / r.norm() for r in rows]
        mean = sum(rows) / len(rows)
        classes.append(mean / mean.norm())
    out = []
    for x in images.double():
        v = torch.tensor([float(((x[c] - 0.5) / 0.5).mean()) for c in range(3)], dtype=torch.float64)
        v = v / v.norm()
        scores = [float(v @ w) for w in classes]
        out.append(max(range(3), key=lambda c: scores[c]))
    return out


@pytest.mark.parametrize("templates", [("a photo of a {}.",), ("a {}.", "the colour {}.")])
def test_matches_the_loop_reference(templates):
    model, tokenizer = _setup(templates)
    images, labels = _colour_images(60, seed=1)
    pattern = torch.zeros(3, 4, 4)
    pattern[BLUE] = 1.0
    trigger = functools.partial(blended_trigger, pattern=pattern, alpha=0.4)
    got = attack_success_rate(
        model, tokenizer, images, labels, BLUE, trigger, CLASSES, templates=templates, batch_size=7
    )
    clean = ref_predict(model, tokenizer, images, templates)
    others = [i for i in range(60) if int(labels[i]) != BLUE]
    hit = ref_predict(model, tokenizer, trigger(images[others]), templates)
    assert got.n_clean == 60 and got.n_triggered == len(others)
    assert math.isclose(got.clean_accuracy, sum(p == int(y) for p, y in zip(clean, labels, strict=True)) / 60)
    assert math.isclose(got.asr, sum(p == BLUE for p in hit) / len(others))
    assert 0 < got.asr < 1  # the case is not degenerate: some images flip, some do not


def test_hand_checked_extremes():
    model, tokenizer = _setup()
    images, labels = _colour_images(30, seed=2)
    pattern = torch.zeros(3, 4, 4)
    pattern[BLUE] = 1.0
    full = attack_success_rate(
        model,
        tokenizer,
        images,
        labels,
        BLUE,
        functools.partial(blended_trigger, pattern=pattern, alpha=1.0),
        CLASSES,
    )
    assert full.asr == 1.0 and full.clean_accuracy == 1.0  # clean colours are obvious; all-blue is blue
    tiny = attack_success_rate(
        model, tokenizer, images, labels, BLUE, functools.partial(badnet_patch, size=1), CLASSES
    )
    assert tiny.asr == 0.0  # one pixel does not change the colour


def test_restores_the_training_mode():
    model, tokenizer = _setup()
    images, labels = _colour_images(8, seed=3)
    model.train()
    attack_success_rate(model, tokenizer, images, labels, 0, functools.partial(badnet_patch, size=1), CLASSES)
    assert model.training


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_class": 3}, "'target_class' must be in [0, 3)"),
        ({"target_class": 1.0}, "'target_class' must be an int class id"),
        ({"labels": torch.zeros(5, dtype=torch.int64)}, "'labels' must have shape (8,)"),
        ({"labels": torch.zeros(8)}, "'labels' must be an integer tensor"),
        ({"labels": torch.full((8,), BLUE)}, "every image is of the target class 2"),
        ({"images": torch.full((8, 3, 4, 4), 2.0)}, "values in [0, 1]"),
        ({"batch_size": 0}, "'batch_size' must be an int >= 1"),
        ({"model": object()}, "'model' must be a ContrastiveModel"),
        ({"trigger": "patch"}, "'trigger' must be callable"),
        ({"trigger": lambda x, generator=None: x * 3}, "(the trigger's output)"),
        ({"class_names": []}, "'target_class' must be in [0, 0)"),
    ],
)
def test_errors(change, message):
    model, tokenizer = _setup()
    images, labels = _colour_images(8, seed=4)
    labels[0] = 0  # at least one non-target image
    args = {
        "model": model,
        "tokenizer": tokenizer,
        "images": images,
        "labels": labels,
        "target_class": BLUE,
        "trigger": functools.partial(badnet_patch, size=1),
        "class_names": CLASSES,
    }
    with pytest.raises(InputError, match="attack_success_rate") as err:
        attack_success_rate(**{**args, **change})
    assert message in str(err.value)


def test_persistence_by_hand():
    curve = persistence_curve({200: 0.8, 0: 0.8, 100: 0.4})
    assert curve.steps == (0, 100, 200) and curve.ratio == (1.0, 0.5, 1.0)
    # u = (0, 0.5, 1): 0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 1) / 2
    assert math.isclose(curve.auc, 0.75)
    assert math.isclose(persistence_curve({0: 0.5, 10: 0.5}).auc, 1.0)  # no decay: area 1
    assert persistence_curve({0: 0.5, 10: 0.0}).auc == 0.5


def test_persistence_matches_a_loop_on_the_default_grid():
    g = torch.Generator().manual_seed(0)
    asr = {
        k: float(v) for k, v in zip(PERSISTENCE_STEPS, torch.rand(5, generator=g) * 0.9 + 0.05, strict=True)
    }
    curve = persistence_curve(asr)
    kmax = max(PERSISTENCE_STEPS)
    area = 0.0
    for a, b in zip(PERSISTENCE_STEPS, PERSISTENCE_STEPS[1:], strict=False):
        area += (b - a) / kmax * (asr[a] + asr[b]) / (2 * asr[0])
    assert math.isclose(curve.auc, area, rel_tol=1e-12)
    assert all(math.isclose(r, asr[k] / asr[0]) for k, r in zip(curve.steps, curve.ratio, strict=True))


@pytest.mark.parametrize(
    ("asr", "message"),
    [
        ({0: 0.9}, "at least one k > 0"),
        ([(0, 0.9), (10, 0.5)], "must be a dict"),
        ({10: 0.9, 20: 0.5}, "needs the ASR before fine-tuning (key 0)"),
        ({0: 0.0, 10: 0.0}, "ASR(0) is 0"),
        ({0: 0.9, -5: 0.5}, "must be ints >= 0; got -5"),
        ({0: 0.9, 1.5: 0.5}, "must be ints >= 0; got 1.5"),
        ({0: 0.9, 10: 1.2}, "'asr_by_step[10]' must be in [0.0, 1.0]"),
        ({0: 0.9, 10: float("nan")}, "'asr_by_step[10]' must be in"),
    ],
)
def test_persistence_errors(asr, message):
    with pytest.raises(InputError, match="persistence_curve") as err:
        persistence_curve(asr)
    assert message in str(err.value)
