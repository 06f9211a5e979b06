"""GradCache equals one backward pass through the full batch, dropout included."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import contrastkit.train.gradcache as gc
from contrastkit.errors import InputError
from contrastkit.losses import CLIPLoss
from contrastkit.train import gradcache_step, split_batch


class TwoTowers(nn.Module):
    """Two small towers with dropout; returns {"image": (B, 8), "text": (B, 8)}, normalised."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 8))
        self.text = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 8))
        self.double()

    def forward(self, batch):
        return {
            "image": F.normalize(self.image(batch["image"]), dim=1),
            "text": F.normalize(self.text(batch["text"]["ids"]), dim=1),
        }


def make_batch(n: int = 10, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 6, generator=g, dtype=torch.float64),
        "text": {"ids": torch.randn(n, 5, generator=g, dtype=torch.float64)},
        "caption": [f"caption {i}" for i in range(n)],
    }


def clip_criterion() -> CLIPLoss:
    return CLIPLoss(init_temperature=0.1).double()


def grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for m, module in enumerate(modules):
        for name, p in module.named_parameters():
            out[f"{m}.{name}"] = p.grad.clone()
    return out


def reference_step(model, criterion, batch, micro, seed, weight=1.0):
    """Embed micro-batch by micro-batch WITH grad (same RNG order), one loss, one backward."""
    torch.manual_seed(seed)
    outs = [model(part) for part in split_batch(batch, micro)]
    reps = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    loss = weight * criterion(reps["image"], reps["text"])
    loss.backward()
    return loss.detach()


def cached_step(model, criterion, batch, micro, seed, weight=1.0, **kwargs):
    torch.manual_seed(seed)
    return gradcache_step(
        model, batch, lambda reps: weight * criterion(reps["image"], reps["text"]), micro, **kwargs
    )


def assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(
            got[name], want[name], atol=1e-12, rtol=0.0, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("micro", [1, 3, 4, 10, 64])
def test_gradcache_equals_the_full_batch_gradient_with_dropout(micro):
    batch = make_batch()
    model, criterion = TwoTowers(), clip_criterion()
    want_loss = reference_step(model, criterion, batch, micro, seed=5)
    want = grads(model, criterion)

    model2, criterion2 = TwoTowers(), clip_criterion()
    got_loss = cached_step(model2, criterion2, batch, micro, seed=5)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-12, rtol=0)
    assert not got_loss.requires_grad
    assert_same_grads(grads(model2, criterion2), want)


def test_without_dropout_it_equals_one_plain_forward_of_the_whole_batch():
    batch = make_batch(9)
    model, criterion = TwoTowers(dropout=0.0), clip_criterion()
    reps = model(batch)
    criterion(reps["image"], reps["text"]).backward()
    want = grads(model, criterion)
    model2, criterion2 = TwoTowers(dropout=0.0), clip_criterion()
    cached_step(model2, criterion2, batch, 2, seed=0)
    assert_same_grads(grads(model2, criterion2), want)


def test_a_tiled_loss_inside_gradcache_gives_the_same_gradient():
    batch = make_batch(11)
    model, criterion = TwoTowers(), clip_criterion()
    reference_step(model, criterion, batch, 4, seed=2)
    want = grads(model, criterion)
    model2, criterion2 = TwoTowers(), CLIPLoss(init_temperature=0.1, chunk_size=3).double()
    cached_step(model2, criterion2, batch, 4, seed=2)
    assert_same_grads(grads(model2, criterion2), want)


def test_outer_accumulation_sums_the_steps():
    first, second = make_batch(8, seed=3), make_batch(8, seed=4)
    model, criterion = TwoTowers(), clip_criterion()
    reference_step(model, criterion, first, 3, seed=7, weight=0.5)
    reference_step(model, criterion, second, 3, seed=8, weight=0.5)
    want = grads(model, criterion)
    model2, criterion2 = TwoTowers(), clip_criterion()
    cached_step(model2, criterion2, first, 3, seed=7, weight=0.5)
    cached_step(model2, criterion2, second, 3, seed=8, weight=0.5)
    assert_same_grads(grads(model2, criterion2), want)


def test_negative_control_without_rng_replay_the_gradient_differs(monkeypatch):
    batch = make_batch()
    model, criterion = TwoTowers(), clip_criterion()
    reference_step(model, criterion, batch, 3, seed=5)
    want = grads(model, criterion)
    monkeypatch.setattr(gc.RandomState, "replay", lambda self: contextlib.nullcontext())
    model2, criterion2 = TwoTowers(), clip_criterion()
    cached_step(model2, criterion2, batch, 3, seed=5)
    got = grads(model2, criterion2)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) > 1e-3


def test_only_the_last_micro_batch_synchronises():
    entered = []

    class FakeDDP(TwoTowers):
        @contextlib.contextmanager
        def no_sync(self):
            entered.append(True)
            yield

    cached_step(FakeDDP(), clip_criterion(), make_batch(10), 3, seed=0)
    assert len(entered) == 3  # 4 micro-batches: 10 = 3 + 3 + 3 + 1


def test_the_scaler_scales_every_gradient():
    class TimesEight:
        def scale(self, loss):
            return 8 * loss

    batch = make_batch()
    model, criterion = TwoTowers(), clip_criterion()
    cached_step(model, criterion, batch, 4, seed=1)
    want = {k: 8 * v for k, v in grads(model, criterion).items()}
    model2, criterion2 = TwoTowers(), clip_criterion()
    cached_step(model2, criterion2, batch, 4, seed=1, scaler=TimesEight())
    assert_same_grads(grads(model2, criterion2), want)


def test_rng_after_the_step_continues_as_after_the_first_pass():
    model = TwoTowers()
    cached_step(model, clip_criterion(), make_batch(), 4, seed=3)
    after_step = torch.rand(3)
    torch.manual_seed(3)
    with torch.no_grad():
        for part in split_batch(make_batch(), 4):
            model(part)
    torch.testing.assert_close(after_step, torch.rand(3), atol=0, rtol=0)


def test_frozen_outputs_are_skipped_in_the_replay():
    model = TwoTowers(dropout=0.0)
    model.text.requires_grad_(False)
    cached_step(model, clip_criterion(), make_batch(), 4, seed=0)
    assert all(p.grad is None for p in model.text.parameters())
    assert all(p.grad is not None for p in model.image.parameters())


def test_batch_norm_is_warned_about():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="BatchNorm"):
        gradcache_step(model, x, lambda z: z.square().sum(), 3)


def test_tuples_are_structure_and_row_counts_must_agree():
    images, texts = torch.randn(6, 3), torch.randn(6, 2)
    parts = split_batch((images, texts), 4)
    assert [tuple(p[0].shape) for p in parts] == [(4, 3), (2, 3)]
    with pytest.raises(InputError, match=r"different row counts \[5, 6\]"):
        split_batch({"image": images, "caption": ["x"] * 5}, 2)


def test_outputs_with_different_row_counts_get_their_own_gradient_slices():
    model = nn.Linear(3, 2).double()
    x = torch.randn(6, 3, dtype=torch.float64)

    def encode(part):
        z = model(part)
        return {"row": z, "pairs": torch.cat([z, z])}  # twice as many rows as the micro-batch

    def loss_fn(reps):
        return reps["row"].square().sum() + reps["pairs"].sin().sum()

    gradcache_step(model, x, loss_fn, 4, encode=encode)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    outs = [encode(part) for part in split_batch(x, 4)]
    loss_fn({k: torch.cat([o[k] for o in outs]) for k in outs[0]}).backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-12, rtol=0)


def test_split_batch_slices_tensors_lists_and_nested_dicts():
    parts = split_batch(make_batch(5), 2)
    assert [p["image"].shape[0] for p in parts] == [2, 2, 1]
    assert parts[2]["caption"] == ["caption 4"]
    assert parts[1]["text"]["ids"].shape == (2, 5)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_micro_batch_size_is_named(bad):
    with pytest.raises(InputError, match="'micro_batch_size' must be an int >= 1"):
        gradcache_step(TwoTowers(), make_batch(), lambda r: r["image"].sum(), bad)


def test_bad_encoder_output_and_loss_are_named():
    model = TwoTowers()
    with pytest.raises(InputError, match="encoder must return a tensor"):
        gradcache_step(model, make_batch(), lambda r: r, 3, encode=lambda b: "nope")
    with pytest.raises(InputError, match="0-d tensor"):
        gradcache_step(model, make_batch(), lambda r: r["image"], 3)
    with pytest.raises(InputError, match="cannot find the batch size"):
        gradcache_step(model, {"x": 3}, lambda r: r, 3)
