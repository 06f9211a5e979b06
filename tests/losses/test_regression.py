"""regression_clip_loss against a float64 loop of METHODS 1.12: w [a MSE + (1 - a) L_CLIP]."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.regression import regression_clip_loss

MODES = [(False, False), (False, True), (True, False), (True, True)]  # (normalize, exp_scale)
T0 = math.log(1 / 0.07)


def _raw(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def _scale_param(value: float = T0) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


# ---------------------------------------------------------------- loop reference


def ref_regression_clip(pred, target, t, alpha=0.8, weight=10.0, normalize=False, exp_scale=False):
    """The formula with explicit loops: normalise rows (if asked), MSE over every element, and the
    symmetric CE over l_ij = s <e_i, v_j> with s = exp(t) or t."""
    b, d = pred.shape
    e, v = list(pred), list(target)
    if normalize:
        e = [row / loop_dot(row, row).sqrt() for row in e]
        v = [row / loop_dot(row, row).sqrt() for row in v]
    s = torch.exp(torch.as_tensor(t, dtype=torch.float64)) if exp_scale else t
    mse = sum((e[i][k] - v[i][k]) ** 2 for i in range(b) for k in range(d)) / (b * d)
    logits = [[s * loop_dot(e[i], v[j]) for j in range(b)] for i in range(b)]
    rows = sum(loop_lse(logits[i]) - logits[i][i] for i in range(b)) / b
    cols = sum(loop_lse([logits[i][j] for i in range(b)]) - logits[j][j] for j in range(b)) / b
    return weight * (alpha * mse + (1 - alpha) * 0.5 * (rows + cols))


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("normalize, exp_scale", MODES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_matches_loop_in_every_mode(normalize: bool, exp_scale: bool, alpha: float) -> None:
    pred, target, t = _raw(5, 3, seed=1), _raw(5, 3, seed=2), _scale_param(1.3)

    def ours(p, y, s):
        return regression_clip_loss(
            p, y, s, alpha=alpha, weight=3.0, normalize=normalize, exp_scale=exp_scale
        )

    def ref(p, y, s):
        return ref_regression_clip(p, y, s, alpha, 3.0, normalize, exp_scale)

    assert_matches_reference(ours, ref, pred, target, t, atol=0, rtol=1e-6)


@pytest.mark.parametrize("normalize, exp_scale", MODES)
def test_float_scale_equals_tensor_scale(normalize: bool, exp_scale: bool) -> None:
    pred, target = _raw(5, 3, seed=3), _raw(5, 3, seed=4)
    got = regression_clip_loss(pred, target, 0.7, normalize=normalize, exp_scale=exp_scale)
    want = ref_regression_clip(pred, target, 0.7, normalize=normalize, exp_scale=exp_scale)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6)


@pytest.mark.parametrize("normalize, exp_scale", MODES)
def test_gradient_reaches_the_learnable_scale(normalize: bool, exp_scale: bool) -> None:
    pred, target, t = _raw(8, 5, seed=5), _raw(8, 5, seed=6), _scale_param()
    regression_clip_loss(pred, target, t, normalize=normalize, exp_scale=exp_scale).backward()
    assert t.grad is not None and t.grad.abs() > 1e-6
    # d/dt of exp(t) vs t: the exp-mode gradient is exp(t) times the plain one at the same scale
    if not exp_scale:
        s = _scale_param(math.exp(T0))
        regression_clip_loss(pred.detach(), target.detach(), s, normalize=normalize).backward()
        u = _scale_param()
        regression_clip_loss(
            pred.detach(), target.detach(), u, normalize=normalize, exp_scale=True
        ).backward()
        torch.testing.assert_close(u.grad, s.grad * math.exp(T0), atol=0, rtol=1e-10)


@pytest.mark.parametrize("normalize, exp_scale", MODES)
def test_gradcheck(normalize: bool, exp_scale: bool) -> None:
    pred, target, t = _raw(3, 2, seed=7), _raw(3, 2, seed=8), _scale_param(0.9)
    assert torch.autograd.gradcheck(
        lambda p, y, s: regression_clip_loss(p, y, s, normalize=normalize, exp_scale=exp_scale),
        (pred, target, t),
    )


def test_defaults_are_the_faithful_avde_loss() -> None:
    # 10 [0.8 MSE + 0.2 CLIP] with the raw t as the scale, on raw vectors
    pred, target = _raw(7, 6, seed=9), _raw(7, 6, seed=10)
    got = regression_clip_loss(pred, target, T0)
    want = 10 * (0.8 * F.mse_loss(pred, target) + 0.2 * clip_loss(pred, target, T0))
    torch.testing.assert_close(got, want, atol=0, rtol=1e-12)


@pytest.mark.parametrize("b", [2, 5])
def test_zero_embeddings_hand_case(b: int) -> None:
    # MSE 0 and all logits 0: CLIP = log B, so L = w (1 - alpha) log B
    zeros = torch.zeros(b, 3, dtype=torch.float64)
    got = regression_clip_loss(zeros, zeros, T0, alpha=0.25, weight=2.0)
    assert abs(got.item() - 2.0 * 0.75 * math.log(b)) < 1e-12


def test_normalize_true_mse_sees_the_unit_rows() -> None:
    # documented choice: both terms see e/|e| and v/|v|; MSE = mean_i (2 - 2 cos_i) / D
    pred, target = _raw(6, 5, seed=11).detach(), _raw(6, 5, seed=12).detach()
    cos = F.cosine_similarity(pred, target, dim=1)
    got = regression_clip_loss(pred, target, T0, alpha=1.0, weight=1.0, normalize=True)
    torch.testing.assert_close(got, ((2 - 2 * cos) / 5).mean(), atol=0, rtol=1e-12)
    raw_mse = regression_clip_loss(pred, target, T0, alpha=1.0, weight=1.0)
    torch.testing.assert_close(raw_mse, F.mse_loss(pred, target), atol=0, rtol=1e-12)


@pytest.mark.parametrize("exp_scale", [False, True])
def test_normalize_true_is_invariant_to_row_scales(exp_scale: bool) -> None:
    pred, target = _raw(6, 5, seed=13).detach(), _raw(6, 5, seed=14).detach()
    factors = torch.tensor([0.1, 3.0, 1.0, 7.0, 0.5, 2.0], dtype=torch.float64)[:, None]
    base = regression_clip_loss(pred, target, 1.1, normalize=True, exp_scale=exp_scale)
    scaled = regression_clip_loss(pred * factors, target * 4.0, 1.1, normalize=True, exp_scale=exp_scale)
    torch.testing.assert_close(scaled, base, atol=0, rtol=1e-12)
    raw = regression_clip_loss(pred * factors, target * 4.0, 1.1, exp_scale=exp_scale)
    assert abs(raw.item() - base.item()) > 1e-3  # the raw mode is not invariant


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("normalize, exp_scale", MODES)
def test_float32_matches_float64(normalize: bool, exp_scale: bool) -> None:
    pred, target = _raw(16, 8, seed=15).detach(), _raw(16, 8, seed=16).detach()
    want = regression_clip_loss(pred, target, 1.5, normalize=normalize, exp_scale=exp_scale)
    got = regression_clip_loss(pred.float(), target.float(), 1.5, normalize=normalize, exp_scale=exp_scale)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=0, rtol=1e-4)


@pytest.mark.parametrize("normalize, exp_scale", MODES)
def test_bfloat16_input_is_finite_and_computed_in_float32(normalize: bool, exp_scale: bool) -> None:
    pred = _raw(16, 8, seed=17).detach().bfloat16().requires_grad_()
    target = _raw(16, 8, seed=18).detach().bfloat16()
    t = torch.tensor(T0, requires_grad=True)
    got = regression_clip_loss(pred, target, t, normalize=normalize, exp_scale=exp_scale)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    want = regression_clip_loss(pred.float(), target.float(), T0, normalize=normalize, exp_scale=exp_scale)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-5)
    got.backward()
    assert pred.grad.dtype == torch.bfloat16 and torch.isfinite(pred.grad).all() and torch.isfinite(t.grad)


# ---------------------------------------------------------------- errors


def _ok() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3), torch.randn(4, 3)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"normalize": "yes"}, "normalize"),
        ({"exp_scale": 1}, "exp_scale"),
    ],
)
def test_bad_options_raise(kwargs: dict, argument: str) -> None:
    pred, target = _ok()
    with pytest.raises(InputError, match=f"regression_clip_loss: argument '{argument}'"):
        regression_clip_loss(pred, target, T0, **kwargs)


@pytest.mark.parametrize(
    "scale, exp_scale",
    [(-0.5, False), (float("nan"), False), (float("inf"), True), (torch.ones(2), True), ("2.6", False)],
)
def test_bad_logit_scale_raises(scale: object, exp_scale: bool) -> None:
    pred, target = _ok()
    with pytest.raises(InputError, match="regression_clip_loss: argument 'logit_scale'"):
        regression_clip_loss(pred, target, scale, exp_scale=exp_scale)


def test_negative_raw_scale_is_fine_with_exp() -> None:
    pred, target = _ok()
    assert torch.isfinite(regression_clip_loss(pred, target, -0.5, exp_scale=True))


@pytest.mark.parametrize("normalize", [False, True])
def test_bad_shapes_and_values_raise(normalize: bool) -> None:
    pred, target = _ok()
    cases = [
        (pred, torch.randn(5, 3), "target"),
        (pred, torch.randn(4, 2), "target"),
        (pred[0], target[0], "pred"),
        (torch.randn(0, 3), torch.randn(0, 3), "pred"),
        (pred.masked_fill(torch.eye(4, 3, dtype=torch.bool), float("nan")), target, "pred"),
        (pred, target.masked_fill(torch.eye(4, 3, dtype=torch.bool), float("inf")), "target"),
        (pred.long(), target, "pred"),
    ]
    for p, y, argument in cases:
        with pytest.raises(InputError, match=f"regression_clip_loss: argument '{argument}'"):
            regression_clip_loss(p, y, T0, normalize=normalize)


def test_single_pair_raises() -> None:
    with pytest.raises(InputError, match="regression_clip_loss: each anchor needs at least one negative"):
        regression_clip_loss(torch.randn(1, 3), torch.randn(1, 3), T0)


def test_zero_row_raises_only_when_normalising() -> None:
    pred, target = _ok()
    pred[2] = 0
    with pytest.raises(InputError, match="regression_clip_loss: argument 'pred' has 1 all-zero row"):
        regression_clip_loss(pred, target, T0, normalize=True)
    assert torch.isfinite(regression_clip_loss(pred, target, T0))


@pytest.mark.parametrize("t", [1000.0, torch.tensor(1000.0), torch.tensor(100.0)])
def test_overflowing_exp_scale_names_the_argument(t: object) -> None:
    # exp(t) overflows (a float t: math.exp raises OverflowError; a float32 tensor: inf)
    pred, target = _ok()
    with pytest.raises(InputError, match="regression_clip_loss: argument 'logit_scale'"):
        regression_clip_loss(pred, target, t, exp_scale=True)
