"""TwoStepConditionalStep: step 2 runs exactly when the condition fires, as a second update."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import ContrastkitError, InputError
from contrastkit.losses.crossmodal import SemiPushPullTest, cross_modal_supcon, semi_push_pull_test
from contrastkit.train.twostep import TwoStepConditionalStep


class TinyModel(nn.Module):
    """Two linear heads; records whether grad was enabled at each forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Linear(3, 2)
        self.text = nn.Linear(4, 2)
        self.grad_enabled: list[bool] = []

    def forward(self, batch):
        self.grad_enabled.append(torch.is_grad_enabled())
        return {"image": self.image(batch["x"]), "text": self.text(batch["t"])}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(6, 3, generator=g),
        "t": torch.randn(6, 4, generator=g),
        "labels": torch.tensor([0, 1, 0, 1, 2, 2]),
    }


def _intra(outputs, batch):
    return F.mse_loss(outputs["image"], outputs["text"])


def _cross(outputs, batch):
    return cross_modal_supcon(outputs["image"], outputs["text"], batch["labels"])


class CountingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.calls = 0

    def step(self, closure=None):
        self.calls += 1
        return super().step(closure)


def _always(fires: bool):
    seen = []

    def condition(a, b, labels, alpha):
        seen.append((a.requires_grad, b.requires_grad, alpha))
        return fires

    condition.seen = seen
    return condition


def _parameters(model):
    return [p.detach().clone() for p in model.parameters()]


def _manual_update(model, loss_fn, batch, lr):
    """One plain SGD step of loss_fn done by hand, on a copy of the model's parameters."""
    outputs = model(batch)
    loss = loss_fn(outputs, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= lr * g
    return float(loss.detach())


@pytest.mark.parametrize("fires", [False, True])
def test_step_two_runs_exactly_when_the_condition_fires(fires: bool) -> None:
    model, batch = TinyModel(), _batch()
    optimizer = CountingSGD(model.parameters(), lr=0.1)
    condition = _always(fires)
    step = TwoStepConditionalStep(model, optimizer, _intra, _cross, condition, alpha=0.5)
    stats = step(batch)
    assert stats.fired is fires and stats.test is None
    assert optimizer.calls == (2 if fires else 1)
    assert (stats.step2_loss is not None) is fires
    # forwards: step 1, then the re-forward that the test and (when it fires) step 2 share
    assert model.grad_enabled == [True, True]
    assert condition.seen == [(False, False, 0.5)]


@pytest.mark.parametrize("fires", [False, True])
def test_updates_equal_the_manual_two_step_sequence(fires: bool) -> None:
    model, batch = TinyModel(), _batch(1)
    reference = TinyModel()
    reference.load_state_dict(model.state_dict())
    step = TwoStepConditionalStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _intra, _cross, _always(fires)
    )
    stats = step(batch)
    loss1 = _manual_update(reference, _intra, batch, 0.1)
    assert stats.step1_loss == pytest.approx(loss1, rel=1e-6)
    if fires:
        # step 2 sees the parameters after step 1 (a re-forward, not the step-1 outputs)
        loss2 = _manual_update(reference, _cross, batch, 0.1)
        assert stats.step2_loss == pytest.approx(loss2, rel=1e-6)
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_step_two_trains_on_the_embeddings_the_test_saw() -> None:
    # METHODS 3.5: step 2 contrasts the re-forwarded I', T' of the test, not a third forward
    # (which would draw a fresh dropout mask and train on embeddings the test never saw).
    class Dropping(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, batch):
            out = super().forward(batch)
            return {"image": self.drop(out["image"]), "text": self.drop(out["text"])}

    model, batch, seen = Dropping().train(), _batch(5), {}

    def condition(a, b, labels, alpha):
        seen["test"] = (a.clone(), b.clone())
        return True

    def step2(outputs, batch):
        seen["step2"] = (outputs["image"].detach().clone(), outputs["text"].detach().clone())
        return _intra(outputs, batch)

    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    TwoStepConditionalStep(model, optimizer, _intra, step2, condition)(batch)
    for tested, trained in zip(seen["test"], seen["step2"], strict=True):
        assert torch.equal(tested, trained)
    assert len(model.grad_enabled) == 2


def test_missing_labels_are_named() -> None:
    model = TinyModel()
    step = TwoStepConditionalStep(model, torch.optim.SGD(model.parameters(), lr=0.1), _intra, _cross)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with pytest.raises(InputError, match="'labels'"):
        step(batch)


def test_default_condition_is_the_spp_test_on_the_reforwarded_outputs() -> None:
    model, batch = TinyModel(), _batch(2)
    step = TwoStepConditionalStep(model, torch.optim.SGD(model.parameters(), lr=0.1), _intra, _cross)
    after_step1 = TinyModel()
    after_step1.load_state_dict(model.state_dict())
    _manual_update(after_step1, _intra, batch, 0.1)
    with torch.no_grad():
        out = after_step1(batch)
        want = semi_push_pull_test(out["image"], out["text"], batch["labels"], 2 / 3)
    stats = step(batch)
    assert isinstance(stats.test, SemiPushPullTest)
    assert (stats.test.count, stats.test.same_label, stats.fired) == (want.count, want.same_label, want.fires)


def test_counters_and_firing_rate() -> None:
    model = TinyModel()
    pattern = [True, False, False, True, True]
    answers = iter(pattern)
    step = TwoStepConditionalStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        _intra,
        _cross,
        lambda a, b, y, alpha: next(answers),
    )
    assert step.steps == 0 and math.isnan(step.firing_rate)
    fired = [step(_batch(i)).fired for i in range(len(pattern))]
    assert fired == pattern
    assert (step.steps, step.fired) == (5, 3)
    assert step.firing_rate == pytest.approx(0.6)


def test_grad_clip_bounds_the_update() -> None:
    model, batch = TinyModel(), _batch(3)
    before = _parameters(model)

    def big(outputs, batch):
        return 1e4 * _intra(outputs, batch)

    step = TwoStepConditionalStep(
        model, torch.optim.SGD(model.parameters(), lr=1.0), big, _cross, _always(False), grad_clip=0.01
    )
    step(batch)
    moved = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before, strict=True)))
    assert moved.item() == pytest.approx(0.01, rel=1e-4)  # lr 1 x clipped norm 0.01


def test_custom_modalities_and_labels_key() -> None:
    class Renamed(TinyModel):
        def forward(self, batch):
            out = super().forward(batch)
            return {"audio": out["image"], "caption": out["text"]}

    model = Renamed()
    batch = _batch(4)
    batch = {"x": batch["x"], "t": batch["t"], "y": batch["labels"]}
    seen = []

    def condition(a, b, labels, alpha):
        seen.append(labels)
        return False

    step = TwoStepConditionalStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda o, b: F.mse_loss(o["audio"], o["caption"]),
        _cross,
        condition,
        modalities=("audio", "caption"),
        label_key="y",
    )
    step(batch)
    assert seen[0] is batch["y"]


def test_errors() -> None:
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputError, match="'optimizer'"):
        TwoStepConditionalStep(model, "sgd", _intra, _cross)
    with pytest.raises(InputError, match="'step2_loss'"):
        TwoStepConditionalStep(model, optimizer, _intra, 3.0)
    with pytest.raises(InputError, match="'condition'"):
        TwoStepConditionalStep(model, optimizer, _intra, _cross, condition=0.5)
    with pytest.raises(InputError, match="'modalities'"):
        TwoStepConditionalStep(model, optimizer, _intra, _cross, modalities=("image",))
    with pytest.raises(InputError, match="'grad_clip'"):
        TwoStepConditionalStep(model, optimizer, _intra, _cross, grad_clip=0)
    with pytest.raises(InputError, match="lack \\['audio'\\]"):
        TwoStepConditionalStep(model, optimizer, _intra, _cross, modalities=("audio", "text"))(_batch())
    with pytest.raises(InputError, match="'alpha'"):
        TwoStepConditionalStep(model, optimizer, _intra, _cross, alpha=-1.0)(_batch())


def test_non_finite_loss_raises_before_stepping() -> None:
    model = TinyModel()
    before = _parameters(model)
    step = TwoStepConditionalStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda o, b: o["image"].sum() * math.nan, _cross
    )
    with pytest.raises(ContrastkitError, match="step1_loss is nan"):
        step(_batch())
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
