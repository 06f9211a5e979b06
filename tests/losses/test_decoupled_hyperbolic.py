"""decoupled_hyperbolic_supcon (EC-Net, METHODS 3.12) against a float64 loop reference of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.geometry import Lorentz, PoincareBall
from contrastkit.losses.hyperbolic import decoupled_hyperbolic_supcon
from contrastkit.losses.supervised import supcon

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])


def _ball_points(n: int, d: int, ball: PoincareBall, *, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return ball.double().expmap0(v).detach().to(dtype).requires_grad_()


def _intensity(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- loop reference


def ref_decoupled(
    x, labels, c, tau_ang=0.1, lambda_rad=0.1, radial_mode="consistency", intensity=None, margin=0.1
):
    """L_ang (SupCon L_out on u = x/||x||) + lambda_rad * L_rad, every sum an explicit loop."""
    n = x.shape[0]
    norms = [torch.sqrt(loop_dot(x[i], x[i])) for i in range(n)]
    rho = [2 / torch.sqrt(c) * torch.atanh(torch.sqrt(c) * norms[i]) for i in range(n)]
    u = [x[i] / norms[i] for i in range(n)]
    anchors = []
    for a in range(n):
        logits = [loop_dot(u[a], u[j]) / tau_ang for j in range(n) if j != a]
        positives = [loop_dot(u[a], u[p]) / tau_ang for p in range(n) if p != a and labels[p] == labels[a]]
        if positives and len(positives) < len(logits):
            lse = loop_lse(logits)
            anchors.append(-sum(p - lse for p in positives) / len(positives))
    angular = sum(anchors) / len(anchors)
    terms = []
    for i in range(n):
        for j in range(n):
            if radial_mode == "consistency" and i != j and labels[i] == labels[j]:
                terms.append((rho[i] - rho[j]) ** 2)
            if radial_mode == "margin" and intensity[i] < intensity[j]:
                terms.append(torch.clamp(rho[i] - rho[j] + margin, min=0))
    return angular + lambda_rad * sum(terms) / len(terms)


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("c", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_consistency_matches_loop(c: float, tau: float) -> None:
    ball = PoincareBall(c=c).double()
    x = _ball_points(8, 5, ball, seed=1)
    assert_matches_reference(
        lambda x: decoupled_hyperbolic_supcon(x, LABELS, ball, tau_ang=tau, lambda_rad=0.3),
        lambda x: ref_decoupled(x, LABELS, ball.c, tau_ang=tau, lambda_rad=0.3),
        x,
        atol=0.0,
        rtol=1e-6,
    )


@pytest.mark.parametrize("margin", [0.0, 0.1, 1.0])
def test_margin_matches_loop(margin: float) -> None:
    ball = PoincareBall(c=1.3).double()
    x = _ball_points(8, 4, ball, seed=2)
    intensity = _intensity(8, 3)
    kwargs = dict(radial_mode="margin", intensity=intensity, margin=margin, lambda_rad=0.5)
    assert_matches_reference(
        lambda x: decoupled_hyperbolic_supcon(x, LABELS, ball, **kwargs),
        lambda x: ref_decoupled(x, LABELS, ball.c, **kwargs),
        x,
        atol=0.0,
        rtol=1e-6,
    )


@pytest.mark.parametrize("radial_mode", ["consistency", "margin"])
def test_learnable_curvature_gets_the_reference_gradient(radial_mode: str) -> None:
    ball = PoincareBall(c=0.8, learnable=True).double()
    x = _ball_points(8, 3, ball, seed=4)
    intensity = _intensity(8, 5) if radial_mode == "margin" else None
    kwargs = dict(radial_mode=radial_mode, intensity=intensity, lambda_rad=1.0)
    assert_matches_reference(
        lambda x, _theta: decoupled_hyperbolic_supcon(x, LABELS, ball, **kwargs),
        lambda x, _theta: ref_decoupled(x, LABELS, ball.c, **kwargs),
        x,
        ball.theta,
        atol=0.0,
        rtol=1e-6,
    )
    (grad,) = torch.autograd.grad(decoupled_hyperbolic_supcon(x, LABELS, ball, **kwargs), ball.theta)
    assert grad.abs() > 0  # the radii depend on c, so the curvature moves


@pytest.mark.parametrize("radial_mode", ["consistency", "margin"])
def test_gradcheck_points_and_curvature(radial_mode: str) -> None:
    ball = PoincareBall(c=1.0, learnable=True).double()
    x = _ball_points(6, 3, ball, seed=6)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    intensity = _intensity(6, 7) if radial_mode == "margin" else None

    def loss(x, theta):
        return decoupled_hyperbolic_supcon(
            x, labels, ball, radial_mode=radial_mode, intensity=intensity, lambda_rad=1.0
        )

    assert torch.autograd.gradcheck(loss, (x, ball.theta))


def test_equal_radii_leave_supcon_on_the_directions() -> None:
    # every point at hyperbolic radius 1: the consistency term is exactly 0
    ball = PoincareBall(c=1.0).double()
    g = torch.Generator().manual_seed(8)
    u = torch.nn.functional.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=1)
    x = math.tanh(0.5) * u  # dist0 = 2 artanh(tanh(0.5)) = 1
    got = decoupled_hyperbolic_supcon(x, LABELS, ball, lambda_rad=5.0)
    torch.testing.assert_close(got, supcon(u, LABELS, 0.1), rtol=1e-12, atol=0.0)


def test_margin_hand_case() -> None:
    # two classes of two; radii 2 artanh(r): the more intense point must be >= margin further out
    ball = PoincareBall(c=1.0).double()
    radii = torch.tensor([0.2, 0.5, 0.3, 0.6], dtype=torch.float64)
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = radii[:, None] * directions
    labels = torch.tensor([0, 1, 0, 1])
    intensity = torch.tensor([0.9, 0.1, 0.5, 0.5])  # the tie (0.5, 0.5) makes no pair
    rho = 2 * torch.atanh(radii)
    pairs = [(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)]  # (less intense, more intense)
    radial = sum(torch.relu(rho[i] - rho[j] + 0.1) for i, j in pairs) / len(pairs)
    angular = supcon(directions, labels, 0.1)
    got = decoupled_hyperbolic_supcon(x, labels, ball, radial_mode="margin", intensity=intensity)
    torch.testing.assert_close(got, angular + 0.1 * radial, rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("radial_mode", ["consistency", "margin"])
def test_float32_agrees_with_float64(radial_mode: str) -> None:
    ball = PoincareBall(c=1.0)
    x64 = _ball_points(16, 8, ball, seed=9)
    labels = torch.arange(16) % 4
    intensity = _intensity(16, 10) if radial_mode == "margin" else None
    kwargs = dict(radial_mode=radial_mode, lambda_rad=0.5)
    want = decoupled_hyperbolic_supcon(x64, labels, ball, intensity=intensity, **kwargs)
    x32 = x64.detach().float()
    i32 = None if intensity is None else intensity.float()
    got = decoupled_hyperbolic_supcon(x32, labels, ball.float(), intensity=i32, **kwargs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("radial_mode", ["consistency", "margin"])
def test_float32_finite_at_the_boundary(radial_mode: str) -> None:
    ball = PoincareBall(c=1.0, learnable=True)
    g = torch.Generator().manual_seed(11)
    x = ball.proj(50 * torch.randn(12, 6, generator=g)).detach().requires_grad_()  # radius 1 - 4e-3
    x_mixed = torch.cat([x[:6], 1e-3 * x[6:]])  # half at the boundary, half near the origin
    labels = torch.arange(12) % 3
    intensity = torch.rand(12, generator=g) if radial_mode == "margin" else None
    loss = decoupled_hyperbolic_supcon(x_mixed, labels, ball, radial_mode=radial_mode, intensity=intensity)
    grads = torch.autograd.grad(loss, (x, ball.theta))
    assert torch.isfinite(loss) and all(bool(torch.isfinite(gr).all()) for gr in grads)


def test_bfloat16_input_is_finite() -> None:
    ball = PoincareBall(c=1.0)
    x = _ball_points(12, 6, ball, seed=12, dtype=torch.bfloat16)
    labels = torch.arange(12) % 3
    loss = decoupled_hyperbolic_supcon(
        x, labels, ball.float(), radial_mode="margin", intensity=torch.rand(12)
    )
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and bool(torch.isfinite(x.grad.float()).all())


# ---------------------------------------------------------------- errors


def _valid():
    ball = PoincareBall(c=1.0).double()
    return _ball_points(8, 4, ball, seed=13), LABELS, ball


def test_margin_needs_intensity_and_consistency_refuses_it() -> None:
    x, labels, ball = _valid()
    with pytest.raises(InputError, match="decoupled_hyperbolic_supcon.*'intensity'"):
        decoupled_hyperbolic_supcon(x, labels, ball, radial_mode="margin")
    with pytest.raises(InputError, match="radial_mode='margin' only"):
        decoupled_hyperbolic_supcon(x, labels, ball, intensity=torch.rand(8))


def test_points_outside_the_ball_raise() -> None:
    x, labels, ball = _valid()
    outside = x.detach().clone()
    outside[3] = outside[3] / outside[3].norm() * 1.01
    with pytest.raises(InputError, match="outside the Poincare ball"):
        decoupled_hyperbolic_supcon(outside, labels, ball)


def test_no_radial_pair_raises() -> None:
    x, _, ball = _valid()
    with pytest.raises(NoPositivePairsError, match="two samples of one class"):
        decoupled_hyperbolic_supcon(x, torch.arange(8), ball)
    with pytest.raises(NoPositivePairsError, match="different intensity"):
        decoupled_hyperbolic_supcon(x, LABELS, ball, radial_mode="margin", intensity=torch.ones(8))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(x_ball=torch.zeros(8)), "'x_ball' must have shape"),
        (dict(x_ball=torch.zeros(0, 4)), "'x_ball' is empty"),
        (dict(x_ball="nan"), "NaN/inf"),
        (dict(x_ball="zero row"), "all-zero row"),
        (dict(labels=torch.zeros(7, dtype=torch.long)), "'labels' must have shape"),
        (dict(labels=torch.zeros(8)), "integer tensor"),
        (dict(radial_mode="angular"), "'radial_mode' must be one of"),
        (dict(tau_ang=0.0), "'tau_ang'"),
        (dict(lambda_rad=-1.0), "'lambda_rad' must be finite and >= 0"),
        (dict(radial_mode="margin", intensity=torch.rand(7)), "'intensity' must have 8 rows"),
        (dict(radial_mode="margin", intensity=torch.rand(8, 1)), "'intensity' must have shape"),
        (dict(radial_mode="margin", intensity=torch.rand(8), margin=-0.1), "'margin'"),
        (dict(margin=-0.1), "'margin' must be finite and >= 0"),  # checked in "consistency" too
        (dict(manifold=Lorentz()), "'manifold' must be a contrastkit.geometry PoincareBall"),
    ],
)
def test_bad_arguments_raise(change: dict, match: str) -> None:
    x, labels, ball = _valid()
    args = dict(x_ball=x.detach().clone(), labels=labels, manifold=ball)
    if change.get("x_ball") == "nan":
        args["x_ball"][0, 0] = float("nan")
        change = {}
    elif change.get("x_ball") == "zero row":
        args["x_ball"][2] = 0.0
        change = {}
    args.update(change)
    with pytest.raises(InputError, match=match):
        decoupled_hyperbolic_supcon(**args)
