"""PoincareBall, Lorentz and Euclidean against closed forms, identities, loop references and geoopt."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from conftest import loop_dot
from contrastkit.errors import InputError
from contrastkit.geometry import Euclidean, Lorentz, PoincareBall


def _tangent(n: int, d: int, *, seed: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g, dtype=dtype)


def _ball_points(n: int, d: int, *, seed: int, c: float = 1.0) -> torch.Tensor:
    return PoincareBall(c).double().expmap0(_tangent(n, d, seed=seed))


# ---------------------------------------------------------------- loop references (METHODS 3.11)


def ref_poincare_dist(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(2/sqrt c) artanh(sqrt c ||(-x) (+) y||) from the Mobius formula, one coordinate at a time."""
    xy, x2, y2 = -loop_dot(x, y), loop_dot(x, x), loop_dot(y, y)
    den = 1 + 2 * c * xy + c**2 * x2 * y2
    m = [((1 + 2 * c * xy + c * y2) * -x[k] + (1 - c * x2) * y[k]) / den for k in range(x.shape[0])]
    norm = torch.sqrt(sum(v * v for v in m))
    return 2 / torch.sqrt(c) * torch.atanh(torch.sqrt(c) * norm)


def ref_lorentz_dist(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    inner = -x[0] * y[0] + sum(x[k] * y[k] for k in range(1, x.shape[0]))
    return torch.acosh(-c * inner) / torch.sqrt(c)


@pytest.mark.parametrize("c", [1.0, 0.3, 2.5])
def test_poincare_dist_matches_the_loop_reference_and_the_arcosh_form(c: float) -> None:
    ball = PoincareBall(c).double()
    x, y = _ball_points(6, 3, seed=0, c=c), _ball_points(6, 3, seed=1, c=c)
    want = torch.stack([ref_poincare_dist(x[i], y[i], ball.c) for i in range(6)])
    torch.testing.assert_close(ball.dist(x, y), want, rtol=1e-6, atol=0)
    pairwise = ball.pairwise_dist(x, y)
    torch.testing.assert_close(pairwise.diag(), want, rtol=1e-6, atol=0)
    for i in range(6):
        for j in range(6):
            torch.testing.assert_close(
                pairwise[i, j], ref_poincare_dist(x[i], y[j], ball.c), rtol=1e-6, atol=0
            )


@pytest.mark.parametrize("c", [1.0, 0.3, 2.5])
def test_lorentz_dist_matches_the_loop_reference(c: float) -> None:
    hyp = Lorentz(c).double()
    x, y = hyp.expmap0(_tangent(5, 3, seed=2)), hyp.expmap0(_tangent(5, 3, seed=3))
    want = torch.stack(
        [torch.stack([ref_lorentz_dist(x[i], y[j], hyp.c) for j in range(5)]) for i in range(5)]
    )
    torch.testing.assert_close(hyp.pairwise_dist(x, y), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(hyp.dist(x, y), want.diag(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("manifold", [PoincareBall(0.7), Lorentz(0.7), Euclidean()], ids=lambda m: m.name)
def test_distance_axioms(manifold) -> None:
    manifold = manifold.double()
    x, y = manifold.expmap0(_tangent(7, 4, seed=4)), manifold.expmap0(_tangent(7, 4, seed=5))
    # 0 up to the arcosh floor (1e-15 in float64: 5e-8) and rounding of the Minkowski inner product
    assert float(manifold.dist(x, x).abs().max()) < 1e-6
    assert float(manifold.pairwise_dist(x, x).diag().abs().max()) < 1e-6
    torch.testing.assert_close(manifold.dist(x, y), manifold.dist(y, x), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        manifold.pairwise_dist(x, y), manifold.pairwise_dist(y, x).T, rtol=1e-10, atol=0
    )
    z = manifold.expmap0(_tangent(7, 4, seed=6))
    assert bool((manifold.dist(x, z) <= manifold.dist(x, y) + manifold.dist(y, z) + 1e-12).all())


@pytest.mark.parametrize("c", [1.0, 0.4])
def test_distance_from_origin_closed_forms(c: float) -> None:
    ball, hyp = PoincareBall(c).double(), Lorentz(c).double()
    v = _tangent(6, 3, seed=7)
    y = ball.expmap0(v)
    closed = 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * y.norm(dim=-1))
    torch.testing.assert_close(ball.dist(torch.zeros_like(y), y), closed, rtol=1e-10, atol=0)
    torch.testing.assert_close(ball.dist0(y), closed, rtol=1e-10, atol=0)
    # the geodesic from 0 along v has length 2 ||v|| on the ball (metric factor 2), ||v|| on the hyperboloid
    torch.testing.assert_close(closed, 2 * v.norm(dim=-1), rtol=1e-10, atol=0)
    origin = hyp.proj(torch.zeros(1, 4, dtype=torch.float64))
    torch.testing.assert_close(hyp.dist(origin, hyp.expmap0(v)), v.norm(dim=-1), rtol=1e-10, atol=0)
    torch.testing.assert_close(hyp.dist0(hyp.expmap0(v)), v.norm(dim=-1), rtol=1e-10, atol=0)


@pytest.mark.parametrize("manifold", [PoincareBall(1.3), Lorentz(1.3), Euclidean()], ids=lambda m: m.name)
def test_logmap0_inverts_expmap0(manifold) -> None:
    manifold = manifold.double()
    v = _tangent(8, 5, seed=8, scale=0.8)
    v[0] = 0.0
    v[1] = 1e-9
    torch.testing.assert_close(manifold.logmap0(manifold.expmap0(v)), v, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("c", [1.0, 0.25, 3.0])
def test_poincare_lorentz_isometry(c: float) -> None:
    ball, hyp = PoincareBall(c).double(), Lorentz(c).double()
    x, y = _ball_points(6, 3, seed=9, c=c), _ball_points(6, 3, seed=10, c=c)
    lx, ly = ball.to_lorentz(x), ball.to_lorentz(y)
    hyp.check_point("test", "lx", lx)
    torch.testing.assert_close(hyp.pairwise_dist(lx, ly), ball.pairwise_dist(x, y), rtol=1e-9, atol=0)
    torch.testing.assert_close(hyp.to_poincare(lx), x, rtol=1e-12, atol=1e-15)
    # the ball's metric is 2x conformal at 0: its expmap0(v) is the hyperboloid's expmap0(2 v)
    v = _tangent(6, 3, seed=11, scale=0.5)
    torch.testing.assert_close(ball.to_lorentz(ball.expmap0(v)), hyp.expmap0(2 * v), rtol=1e-9, atol=1e-12)


def test_mobius_add_identities() -> None:
    ball = PoincareBall(0.8).double()
    x, y = _ball_points(5, 3, seed=12, c=0.8), _ball_points(5, 3, seed=13, c=0.8)
    torch.testing.assert_close(ball.mobius_add(torch.zeros_like(x), y), y, rtol=1e-12, atol=0)
    torch.testing.assert_close(ball.mobius_add(x, torch.zeros_like(y)), x, rtol=1e-12, atol=0)
    assert float(ball.mobius_add(-x, x).abs().max()) < 1e-15
    # left cancellation: (-x) (+) (x (+) y) = y
    torch.testing.assert_close(ball.mobius_add(-x, ball.mobius_add(x, y)), y, rtol=1e-9, atol=1e-12)


def test_proj_radius_and_lorentz_constraint() -> None:
    for dtype, delta in ((torch.float64, 1e-5), (torch.float32, 4e-3)):
        ball = PoincareBall(2.0).to(dtype)
        x = _tangent(6, 3, seed=14, scale=5.0, dtype=dtype)
        radius = (1 - delta) / math.sqrt(2.0)
        torch.testing.assert_close(ball.proj(x).norm(dim=-1), torch.full((6,), radius, dtype=dtype))
        inside = 0.1 * x / x.norm(dim=-1, keepdim=True)
        assert torch.equal(ball.proj(inside), inside)
    hyp = Lorentz(0.5).double()
    p = hyp.proj(_tangent(5, 4, seed=15))
    torch.testing.assert_close(
        hyp.c * (p[:, 1:].pow(2).sum(-1) - p[:, 0] ** 2), -torch.ones(5, dtype=torch.float64)
    )


def test_curvature_parameterisation() -> None:
    for c in (1.0, 0.05, 4.0):
        ball = PoincareBall(c, learnable=True)
        assert abs(float(ball.c.detach()) - c) < 1e-6
        assert isinstance(ball.theta, torch.nn.Parameter)
    assert abs(float(PoincareBall().theta) - math.log(math.e - 1)) < 1e-3
    fixed = Lorentz(2.0)
    assert not list(fixed.parameters()) and abs(float(fixed.c.detach()) - 2.0) < 1e-6
    ball = PoincareBall(learnable=True)
    ball.theta.data.fill_(-50.0)
    assert float(ball.c.detach()) >= 1e-4


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), 1e-5, "1"])
def test_bad_curvature_raises(bad) -> None:
    with pytest.raises(InputError, match="PoincareBall: argument 'c'"):
        PoincareBall(bad)
    with pytest.raises(InputError, match="Lorentz: argument 'c'"):
        Lorentz(bad)


def test_bad_learnable_flag_raises() -> None:
    with pytest.raises(InputError, match="'learnable'"):
        PoincareBall(1.0, learnable="yes")


@pytest.mark.parametrize("cls", [PoincareBall, Lorentz])
def test_gradcheck_maps_and_distances_with_learnable_curvature(cls) -> None:
    m = cls(0.7, learnable=True).double()
    v = _tangent(3, 3, seed=16, scale=0.6).requires_grad_()
    w = _tangent(3, 3, seed=17, scale=0.6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: m.dist(m.expmap0(a), m.expmap0(b)), (v, w))
    assert torch.autograd.gradcheck(lambda a, b: m.pairwise_dist(m.expmap0(a), m.expmap0(b)), (v, w))
    assert torch.autograd.gradcheck(lambda a: m.logmap0(m.expmap0(a)), (v,))
    assert torch.autograd.gradcheck(lambda a: m.dist0(m.expmap0(a)), (v,))
    # curvature: d dist / d theta against a central difference through the Parameter
    x, y = m.expmap0(v.detach()).detach(), m.expmap0(w.detach()).detach()
    (grad,) = torch.autograd.grad(m.dist(x, y).sum(), m.theta)
    eps = 1e-6
    with torch.no_grad():
        m.theta += eps
        up = m.dist(x, y).sum()
        m.theta -= 2 * eps
        down = m.dist(x, y).sum()
        m.theta += eps
    torch.testing.assert_close(grad, (up - down) / (2 * eps), rtol=1e-6, atol=1e-9)


def test_float32_is_finite_at_the_projection_radius() -> None:
    for manifold in (PoincareBall(1.0, learnable=True), Lorentz(1.0, learnable=True)):
        v = _tangent(16, 4, seed=18, dtype=torch.float32)
        v = (10 * v / v.norm(dim=-1, keepdim=True)).requires_grad_()  # far beyond the radius
        x = manifold.expmap0(v)
        if isinstance(manifold, PoincareBall):
            torch.testing.assert_close(x.norm(dim=-1), torch.full((16,), 1 - 4e-3))
        else:  # expmap0 stops at the ball's projection radius: 2 artanh(1 - 4e-3) from the origin
            torch.testing.assert_close(manifold.dist0(x), torch.full((16,), 2 * math.atanh(1 - 4e-3)))
        y = torch.cat((x[1:], x[:1]))
        out = manifold.dist(x, y).sum() + manifold.pairwise_dist(x, x).sum() + manifold.logmap0(x).sum()
        out = out + manifold.dist0(x).sum() + manifold.dist(x, x).sum()
        assert torch.isfinite(out)
        out.backward()
        assert torch.isfinite(v.grad).all() and torch.isfinite(manifold.theta.grad)


def test_float32_agrees_with_float64() -> None:
    for manifold in (PoincareBall(0.9), Lorentz(0.9)):
        v, w = _tangent(6, 3, seed=19, scale=0.5), _tangent(6, 3, seed=20, scale=0.5)
        d64 = manifold.double().pairwise_dist(manifold.expmap0(v), manifold.expmap0(w))
        d32 = manifold.float().pairwise_dist(manifold.expmap0(v.float()), manifold.expmap0(w.float()))
        torch.testing.assert_close(d32.double(), d64, rtol=1e-4, atol=1e-5)


def test_half_inputs_compute_in_float32() -> None:
    ball = PoincareBall()
    x = ball.expmap0(torch.randn(4, 3).bfloat16())
    assert x.dtype == torch.float32 and torch.isfinite(ball.pairwise_dist(x, x)).all()


def test_check_point_errors() -> None:
    ball, hyp = PoincareBall(4.0), Lorentz()
    with pytest.raises(InputError, match="f: argument 'x' has 1 row.*outside the Poincare ball"):
        ball.check_point("f", "x", torch.tensor([[0.1, 0.0], [0.6, 0.0]]))
    ball.check_point("f", "x", ball.proj(torch.randn(5, 2) * 10))
    with pytest.raises(InputError, match="off the hyperboloid"):
        hyp.check_point("f", "x", torch.tensor([[1.0, 0.5, 0.0]]))
    with pytest.raises(InputError, match="off the hyperboloid"):
        hyp.check_point("f", "x", -hyp.expmap0(torch.randn(2, 2)))
    with pytest.raises(InputError, match="D >= 1"):
        hyp.check_point("f", "x", torch.ones(3, 1))
    hyp.check_point("f", "x", hyp.expmap0(torch.randn(5, 3) * 3))


# ---------------------------------------------------------------- geoopt (optional extra)


def _geoopt():
    with warnings.catch_warnings():  # geoopt 0.5.1 uses torch.jit.script, deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("geoopt")


def test_against_geoopt() -> None:
    geoopt = _geoopt()
    for c in (1.0, 0.6):
        ball = PoincareBall(c).double()
        ref = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
        x, y = _ball_points(6, 3, seed=21, c=c), _ball_points(6, 3, seed=22, c=c)
        v = _tangent(6, 3, seed=23)
        torch.testing.assert_close(ball.dist(x, y), ref.dist(x, y), rtol=1e-9, atol=0)
        torch.testing.assert_close(ball.mobius_add(x, y), ref.mobius_add(x, y), rtol=1e-9, atol=0)
        torch.testing.assert_close(ball.expmap0(v), ref.expmap0(v), rtol=1e-9, atol=0)
        torch.testing.assert_close(ball.logmap0(x), ref.logmap0(x), rtol=1e-9, atol=0)
        hyp, lref = (
            Lorentz(c).double(),
            geoopt.Lorentz(k=torch.tensor(1 / c, dtype=torch.float64)),
        )  # geoopt: <x, x>_L = -k
        lx, ly = hyp.expmap0(v), hyp.expmap0(_tangent(6, 3, seed=24))
        torch.testing.assert_close(hyp.dist(lx, ly), lref.dist(lx, ly), rtol=1e-7, atol=0)


def test_geoopt_riemannian_adam_step_on_ball_points() -> None:
    geoopt = _geoopt()
    ball = PoincareBall(1.0)
    target = ball.expmap0(torch.tensor([[0.5, -0.2]]))
    point = geoopt.ManifoldParameter(
        ball.expmap0(torch.tensor([[-1.0, 1.5]])), manifold=geoopt.PoincareBall(c=1.0)
    )
    opt = geoopt.optim.RiemannianAdam([point], lr=0.1)
    before = float(ball.dist(point.detach(), target).sum())
    for _ in range(20):
        opt.zero_grad()
        ball.dist(point, target).sum().backward()
        opt.step()
    ball.check_point("test", "point", point.detach())
    assert float(ball.dist(point.detach(), target).sum()) < before - 0.5


@pytest.mark.parametrize("cls", [PoincareBall, Lorentz])
def test_large_and_tiny_curvatures_start_exactly(cls) -> None:
    # theta0 = softplus^-1(c - 1e-4) without exp(c - 1e-4): no OverflowError for c > 710
    for c in (1000.0, 50.0, 1e-4 + 1e-8):
        manifold = cls(c, learnable=True)
        assert math.isclose(float(manifold.c.detach()), c, rel_tol=1e-9)


def test_poincare_pairwise_dist_of_close_points_near_the_boundary_is_accurate_in_float32() -> None:
    # ||x - y||^2 by cdist, not ||x||^2 + ||y||^2 - 2<x, y> (which cancels to ~1e-7 absolute and,
    # divided by (1 - ||x||^2)(1 - ||y||^2) ~ 1e-4, put errors of several % into d ~ 0.2)
    ball = PoincareBall(1.0).double()
    v = _tangent(8, 8, seed=25)
    v = 3.0 * v / v.norm(dim=-1, keepdim=True)  # ||x|| = tanh(3) = 0.995, inside the float32 radius
    x = ball.expmap0(v).float()
    y = ball.expmap0(v + 0.002 * _tangent(8, 8, seed=26)).float()
    want = ball.dist(x.double(), y.double())  # the exact distance of the float32 points
    got = ball.float().pairwise_dist(x, y).diag()
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=0)
