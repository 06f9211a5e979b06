"""GradCON scores, the running gradient reference, the GradCON training loss and score binning
against float64 loop references (per-sample loops, explicit cosines) and hand-checked bins."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import loop_dot
from contrastkit.errors import InputError
from contrastkit.losses.supervised import supcon
from contrastkit.mining.severity import (
    GradientReference,
    bin_scores,
    decoder_weight_names,
    gradcon_scores,
    gradcon_training_loss,
)


class TinyAE(nn.Module):
    """6 -> 3 -> 6 with a two-layer decoder (decoder weights: decoder.0.weight, decoder.2.weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class TinyConvAE(nn.Module):
    """1 x 4 x 4 -> 2 x 2 x 2 -> 1 x 4 x 4 (a transposed-conv decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.Tanh())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(2, 1, 2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class UnusedDecoderAE(nn.Module):
    """6 -> 3 -> 6 with a second decoder weight ``spare`` that the forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 3)
        self.decoder = nn.Linear(3, 6)
        self.spare = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class BatchNormAE(nn.Module):
    """TinyAE with batch norm in the encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3))
        self.decoder = nn.Sequential(nn.Linear(3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class WrongShapeAE(nn.Module):
    """Returns (B, 5) for a (B, 6) input: not a reconstruction."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


def _data(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _model(cls=TinyAE, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return cls().to(dtype)


def _random_reference(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=g, dtype=p.dtype)
        for name, p in model.named_parameters()
        if name in decoder_weight_names(model)
    }


# ---------------------------------------------------------------- loop references


def loop_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(), b.flatten()
    return loop_dot(a, b) / torch.sqrt(loop_dot(a, a) * loop_dot(b, b))


def loop_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r, t = recon.flatten(), x.flatten()
    return sum((r[k] - t[k]) ** 2 for k in range(t.shape[0])) / t.shape[0]


def ref_scores(model: nn.Module, x: torch.Tensor, reference: dict, beta: float, layers) -> torch.Tensor:
    """s_i = -MSE_i + beta/L sum_l cos(dMSE_i/dW_l, g_l), one sample at a time."""
    params = dict(model.named_parameters())
    out = []
    for i in range(x.shape[0]):
        mse = loop_mse(model(x[i : i + 1]), x[i : i + 1])
        grads = torch.autograd.grad(mse, [params[n] for n in layers])
        cos = sum(loop_cosine(g, reference[n]) for n, g in zip(layers, grads, strict=True)) / len(layers)
        out.append(-mse.detach() + beta * cos)
    return torch.stack(out)


def ref_training_loss(model: nn.Module, x: torch.Tensor, reference: dict, weight: float) -> torch.Tensor:
    params = dict(model.named_parameters())
    layers = list(reference)
    mse = loop_mse(model(x), x)
    grads = torch.autograd.grad(mse, [params[n] for n in layers], create_graph=True)
    cos = sum(loop_cosine(g, reference[n]) for n, g in zip(layers, grads, strict=True)) / len(layers)
    return mse - weight * cos


def _ready_reference(model: nn.Module, seed: int) -> GradientReference:
    reference = GradientReference(model)
    reference.update(_random_reference(model, seed))
    return reference


# ---------------------------------------------------------------- gradcon_scores


@pytest.mark.parametrize("cls, shape", [(TinyAE, (6,)), (TinyConvAE, (1, 4, 4))])
def test_scores_match_a_per_sample_loop(cls, shape) -> None:
    model = _model(cls)
    x = _data(5, *shape, seed=1)
    reference = _random_reference(model, seed=2)
    layers = decoder_weight_names(model)
    got = gradcon_scores(model, x, reference, beta=0.12, batch_size=2)
    want = ref_scores(model, x, reference, 0.12, layers)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    assert got.dtype == torch.float64 and not got.requires_grad


def test_scores_with_a_layer_subset_and_a_gradient_reference() -> None:
    model = _model()
    x = _data(4, 6, seed=3)
    reference = _ready_reference(model, seed=4)
    got = gradcon_scores(model, x, reference, beta=0.5, layers=["decoder.2.weight"])
    want = ref_scores(model, x, reference.mean, 0.5, ["decoder.2.weight"])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_beta_zero_gives_minus_the_per_sample_mse() -> None:
    model = _model()
    x = _data(7, 6, seed=5)
    got = gradcon_scores(model, x, _random_reference(model, 6), beta=0.0)
    with torch.no_grad():
        torch.testing.assert_close(got, -((model(x) - x) ** 2).mean(1), rtol=1e-12, atol=1e-14)


def test_a_reference_equal_to_a_samples_gradient_gives_cosine_one() -> None:
    model = _model()
    x = _data(1, 6, seed=7)
    params = dict(model.named_parameters())
    layers = decoder_weight_names(model)
    mse = F.mse_loss(model(x), x)
    reference = dict(zip(layers, torch.autograd.grad(mse, [params[n] for n in layers]), strict=True))
    got = gradcon_scores(model, x, reference, beta=1.0)
    torch.testing.assert_close(got, 1.0 - mse.detach().reshape(1), rtol=1e-10, atol=1e-12)


def test_scores_float32_agree_with_float64_and_bf16_input_is_finite() -> None:
    model64 = _model(TinyConvAE)
    model32 = _model(TinyConvAE, dtype=torch.float32)
    x = _data(6, 1, 4, 4, seed=8)
    reference = _random_reference(model64, seed=9)
    s64 = gradcon_scores(model64, x, reference)
    s32 = gradcon_scores(model32, x.float(), {n: g.float() for n, g in reference.items()})
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-6)
    s_bf16 = gradcon_scores(model32, x.bfloat16(), {n: g.float() for n, g in reference.items()})
    assert bool(torch.isfinite(s_bf16).all())
    model_bf16 = _model(TinyConvAE, dtype=torch.bfloat16)
    reference_bf16 = {n: g.bfloat16() for n, g in reference.items()}
    s_all_bf16 = gradcon_scores(model_bf16, x.bfloat16(), reference_bf16)
    assert s_all_bf16.dtype == torch.float32 and bool(torch.isfinite(s_all_bf16).all())


# ---------------------------------------------------------------- GradientReference


def test_reference_default_layers_are_the_decoder_weights() -> None:
    assert decoder_weight_names(_model()) == ("decoder.0.weight", "decoder.2.weight")
    assert decoder_weight_names(_model(TinyConvAE)) == ("decoder.0.weight",)
    with pytest.raises(InputError, match="decoder"):
        decoder_weight_names(nn.Sequential(nn.Linear(2, 2)))


def test_reference_keeps_the_running_mean_or_an_exponential_average() -> None:
    model = _model()
    steps = [_random_reference(model, seed) for seed in range(3)]
    running = GradientReference(model)
    ema = GradientReference(model, momentum=0.25)
    assert not running.ready
    for grads in steps:
        running.update(grads)
        ema.update(grads)
    assert running.ready and running.count == 3
    for name in running.layers:
        torch.testing.assert_close(running.mean[name], sum(s[name] for s in steps) / 3)
        # EMA from zero: 0.25 g2 + 0.25*0.75 g1 + 0.25*0.75^2 g0
        want = 0.25 * steps[2][name] + 0.1875 * steps[1][name] + 0.140625 * steps[0][name]
        torch.testing.assert_close(ema.mean[name], want)


def test_reference_errors() -> None:
    model = _model()
    with pytest.raises(InputError, match="momentum"):
        GradientReference(model, momentum=0.0)
    with pytest.raises(InputError, match="momentum"):
        GradientReference(model, momentum=1.5)
    with pytest.raises(InputError, match="layers"):
        GradientReference(model, layers=["decoder.9.weight"])
    with pytest.raises(InputError, match="layers"):
        GradientReference(model, layers="decoder.0.weight")
    with pytest.raises(InputError, match="autoencoder"):
        GradientReference(object())
    reference = GradientReference(model)
    with pytest.raises(InputError, match="lacks layer"):
        reference.update({"decoder.0.weight": torch.zeros(4, 3, dtype=torch.float64)})
    bad = _random_reference(model, 0)
    bad["decoder.2.weight"] = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(InputError, match="shape"):
        reference.update(bad)
    bad = _random_reference(model, 0)
    bad["decoder.2.weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        reference.update(bad)
    assert reference.count == 0


# ---------------------------------------------------------------- gradcon_training_loss


def test_training_loss_matches_the_loop_reference_with_gradients() -> None:
    model = _model()
    x = _data(5, 6, seed=10)
    reference = _ready_reference(model, seed=11)
    params = list(model.parameters())
    got = gradcon_training_loss(model, x, reference, weight=0.03)
    want = ref_training_loss(model, x, reference.mean, 0.03)
    torch.testing.assert_close(got.loss, want, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(got.reconstruction, F.mse_loss(model(x), x))
    for g, w in zip(torch.autograd.grad(got.loss, params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)
    # the alignment term is trained through (create_graph), not a constant
    plain = torch.autograd.grad(F.mse_loss(model(x), x), params)
    aligned = torch.autograd.grad(gradcon_training_loss(model, x, reference, weight=1.0).loss, params)
    assert any(not torch.allclose(a, p) for a, p in zip(aligned, plain, strict=True))


def test_training_loss_gradcheck_in_x() -> None:
    model = _model()
    reference = _ready_reference(model, seed=12)
    x = _data(3, 6, seed=13).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gradcon_training_loss(model, t, reference, 0.5).loss, (x,))


def test_training_loss_before_the_first_update_is_the_reconstruction_and_its_grads_feed_update() -> None:
    model = _model()
    x = _data(4, 6, seed=14)
    reference = GradientReference(model)
    out = gradcon_training_loss(model, x, reference)
    assert out.alignment is None and out.loss is out.reconstruction
    params = dict(model.named_parameters())
    want = torch.autograd.grad(F.mse_loss(model(x), x), [params[n] for n in reference.layers])
    for name, w in zip(reference.layers, want, strict=True):
        torch.testing.assert_close(out.grads[name], w)
        assert not out.grads[name].requires_grad
    out.loss.backward()  # the graph is still there for the optimiser step
    reference.update(out.grads)
    second = gradcon_training_loss(model, x, reference)
    # the reference is this batch's own gradient: cos = 1 on every layer
    torch.testing.assert_close(second.alignment, torch.tensor(-1.0, dtype=torch.float64))


def test_training_loss_float32_agrees_and_bf16_is_finite() -> None:
    model64, model32 = _model(), _model(dtype=torch.float32)
    x = _data(5, 6, seed=15)
    ref64 = _ready_reference(model64, seed=16)
    ref32 = GradientReference(model32)
    ref32.update({n: g.float() for n, g in ref64.mean.items()})
    l64 = gradcon_training_loss(model64, x, ref64).loss
    l32 = gradcon_training_loss(model32, x.float(), ref32).loss
    torch.testing.assert_close(l32.double(), l64, rtol=1e-4, atol=1e-7)
    model16 = _model(dtype=torch.bfloat16)
    ref16 = GradientReference(model16)
    assert all(m.dtype == torch.float32 for m in ref16.mean.values())  # the running mean stays fp32
    ref16.update({n: g.bfloat16() for n, g in ref64.mean.items()})
    out = gradcon_training_loss(model16, x.bfloat16(), ref16)
    out.loss.backward()
    assert math.isfinite(float(out.loss.detach())) and all(
        torch.isfinite(p.grad).all() for p in model16.parameters()
    )


def test_training_loss_errors() -> None:
    model = _model()
    reference = GradientReference(model)
    with pytest.raises(InputError, match="'x'"):
        gradcon_training_loss(model, torch.full((2, 6), float("nan"), dtype=torch.float64), reference)
    with pytest.raises(InputError, match="'x'"):
        gradcon_training_loss(model, torch.zeros(0, 6, dtype=torch.float64), reference)
    with pytest.raises(InputError, match="'weight'"):
        gradcon_training_loss(model, _data(2, 6, seed=0), reference, weight=-1.0)
    with pytest.raises(InputError, match="'reference'"):
        gradcon_training_loss(model, _data(2, 6, seed=0), {"decoder.0.weight": torch.ones(4, 3)})
    with pytest.raises(InputError, match="not parameters"):
        gradcon_training_loss(model.encoder, _data(2, 6, seed=0), reference)
    wrong = _model(WrongShapeAE)
    with pytest.raises(InputError, match="reconstruction"):
        gradcon_training_loss(wrong, _data(2, 6, seed=0), GradientReference(wrong))
    # not a module: the check runs before named_parameters() (an AttributeError before)
    with pytest.raises(
        InputError, match="gradcon_training_loss: argument 'autoencoder' must be a torch.nn.Module"
    ):
        gradcon_training_loss(object(), _data(2, 6, seed=0), reference)
    # a chosen weight the forward pass never uses: a clear error, not torch's "not used in the graph"
    spare = UnusedDecoderAE().double()
    for ready in (False, True):
        unused = GradientReference(spare, layers=["decoder.weight", "spare.weight"])
        if ready:
            unused.update({n: torch.ones_like(p) for n, p in spare.named_parameters() if n in unused.layers})
        with pytest.raises(
            InputError, match=r"gradcon_training_loss: layers \['spare.weight'\] do not take part"
        ):
            gradcon_training_loss(spare, _data(2, 6, seed=0), unused)


# ---------------------------------------------------------------- gradcon_scores errors


def test_score_errors() -> None:
    model = _model()
    x = _data(3, 6, seed=0)
    reference = _random_reference(model, 1)
    with pytest.raises(InputError, match="no update"):
        gradcon_scores(model, x, GradientReference(model))
    with pytest.raises(InputError, match="all zero"):
        gradcon_scores(model, x, {n: torch.zeros_like(g) for n, g in reference.items()})
    with pytest.raises(InputError, match="shape"):
        gradcon_scores(model, x, {"decoder.0.weight": torch.ones(2, 2, dtype=torch.float64)})
    with pytest.raises(InputError, match="no gradient for layer"):
        gradcon_scores(model, x, reference, layers=["encoder.0.weight"])
    with pytest.raises(InputError, match="not parameters"):
        gradcon_scores(model, x, reference, layers=["decoder.7.weight"])
    with pytest.raises(InputError, match="reference_grads"):
        gradcon_scores(model, x, {})
    with pytest.raises(InputError, match="'x'"):
        gradcon_scores(model, x.clone().fill_(float("inf")), reference)
    with pytest.raises(InputError, match="'x'"):
        gradcon_scores(model, x[:0], reference)
    with pytest.raises(InputError, match="'beta'"):
        gradcon_scores(model, x, reference, beta=float("nan"))
    with pytest.raises(InputError, match="'batch_size'"):
        gradcon_scores(model, x, reference, batch_size=0)
    wrong = _model(WrongShapeAE)
    with pytest.raises(InputError, match="reconstruction"):
        gradcon_scores(wrong, x, _random_reference(wrong, 2))
    # a non-finite reference: NaN was reported as "all zero", inf gave NaN scores silently
    for bad in (math.nan, math.inf):
        poisoned = {n: g.clone() for n, g in reference.items()}
        poisoned["decoder.0.weight"][0, 0] = bad
        with pytest.raises(
            InputError,
            match=r"gradcon_scores: argument 'reference_grads\['decoder.0.weight'\]' contains 1 NaN/inf",
        ):
            gradcon_scores(model, x, poisoned)
    # batch norm in training mode mixes the samples (torch raised a bare ValueError here)
    bn = _model(BatchNormAE)
    with pytest.raises(
        InputError, match=r"gradcon_scores: .*batch norm or dropout in training mode.*eval\(\)"
    ):
        gradcon_scores(bn, x, _random_reference(bn, 3))
    assert gradcon_scores(bn.eval(), x, _random_reference(bn, 3)).shape == (3,)


# ---------------------------------------------------------------- bin_scores


def test_quantile_bins_hand_checked() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8])
    # ranks 6 0 3 2 4 1 5 -> floor(r * 3 / 7) = 2 0 1 0 1 0 2 (sizes 3, 2, 2)
    assert bin_scores(scores, 3).tolist() == [2, 0, 1, 0, 1, 0, 2]
    assert bin_scores(scores, 1).tolist() == [0] * 7
    assert bin_scores(scores, 7).tolist() == [6, 0, 3, 2, 4, 1, 5]
    # ties keep index order: the three 1.0s get ranks 1, 2, 3 -> bins 0, 1, 1
    ties = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert bin_scores(ties, 2).tolist() == [0, 0, 1, 1]
    assert bin_scores(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [0, 1, 0, 1]


def test_quantile_bins_are_equal_count_and_monotone() -> None:
    scores = _data(103, seed=20, dtype=torch.float32)
    bins = bin_scores(scores, 10)
    assert bins.dtype == torch.long
    counts = torch.bincount(bins, minlength=10)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 103
    order = scores.argsort()
    assert bool((bins[order].diff() >= 0).all())


def test_uniform_bins_hand_checked() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    # width 10/4 = 2.5: [0, 2.5) [2.5, 5) [5, 7.5) [7.5, 10]
    assert bin_scores(scores, 4, mode="uniform").tolist() == [0, 0, 0, 1, 3]
    assert bin_scores(scores, 8, mode="uniform").tolist() == [0, 0, 1, 2, 7]  # more bins than scores
    assert bin_scores(torch.full((3,), 2.0), 5, mode="uniform").tolist() == [0, 0, 0]


def test_bin_errors() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="'n_bins'"):
        bin_scores(scores, 0)
    with pytest.raises(InputError, match="'n_bins'.*quantile"):
        bin_scores(scores, 4)
    with pytest.raises(InputError, match="'n_bins'"):
        bin_scores(scores, 2.0)
    with pytest.raises(InputError, match="'mode'"):
        bin_scores(scores, 2, mode="kmeans")
    with pytest.raises(InputError, match="NaN"):
        bin_scores(torch.tensor([0.1, float("nan")]), 1)
    with pytest.raises(InputError, match=r"\(N,\)"):
        bin_scores(scores[None], 1)
    with pytest.raises(InputError, match="empty"):
        bin_scores(scores[:0], 1)


def test_bins_feed_supcon_as_labels() -> None:
    g = torch.Generator().manual_seed(21)
    z = F.normalize(torch.randn(8, 2, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    bins = bin_scores(torch.randn(8, generator=g), 3)
    loss = supcon(z, bins, temperature=0.07, base_temperature=0.07)
    (grad,) = torch.autograd.grad(loss, z)
    assert math.isfinite(float(loss.detach())) and bool(torch.isfinite(grad).all())
