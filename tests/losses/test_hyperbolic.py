"""hyperbolic_info_nce against a float64 loop reference of METHODS 3.11 (logits -d_c/tau, symmetric CE)."""

from __future__ import annotations

import pytest
import torch

from conftest import loop_dot, loop_lse
from contrastkit.errors import InputError
from contrastkit.geometry import Euclidean, Lorentz, PoincareBall
from contrastkit.losses.hyperbolic import hyperbolic_info_nce


def _tangent(n: int, d: int, *, seed: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_()


def ref_poincare_dist(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(2/sqrt c) artanh(sqrt c ||(-x) (+)_c y||), the Mobius sum written out coordinate by coordinate."""
    xy, x2, y2 = -loop_dot(x, y), loop_dot(x, x), loop_dot(y, y)
    den = 1 + 2 * c * xy + c**2 * x2 * y2
    m = [((1 + 2 * c * xy + c * y2) * -x[k] + (1 - c * x2) * y[k]) / den for k in range(x.shape[0])]
    return 2 / torch.sqrt(c) * torch.atanh(torch.sqrt(c) * torch.sqrt(sum(v * v for v in m)))


def ref_lorentz_dist(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(1/sqrt c) arcosh(-c <x, y>_L)."""
    inner = -x[0] * y[0] + sum(x[k] * y[k] for k in range(1, x.shape[0]))
    return torch.acosh(-c * inner) / torch.sqrt(c)


def ref_hyperbolic_info_nce(u, w, dist, temperature: float, symmetric: bool) -> torch.Tensor:
    """Loop reference: l_ij = -dist(u_i, w_j)/tau; mean_i [LSE_j l_ij - l_ii], and the column twin."""
    b = u.shape[0]
    logits = [[-dist(u[i], w[j]) / temperature for j in range(b)] for i in range(b)]
    rows = sum(loop_lse(logits[i]) - logits[i][i] for i in range(b)) / b
    if not symmetric:
        return rows
    cols = sum(loop_lse([logits[i][j] for i in range(b)]) - logits[j][j] for j in range(b)) / b
    return 0.5 * (rows + cols)


def _reference_dist(manifold):
    if isinstance(manifold, PoincareBall):
        return lambda x, y: ref_poincare_dist(x, y, manifold.c)
    if isinstance(manifold, Lorentz):
        return lambda x, y: ref_lorentz_dist(x, y, manifold.c)
    return lambda x, y: torch.sqrt(sum((x[k] - y[k]) ** 2 for k in range(x.shape[0])))


MANIFOLDS = [
    lambda: PoincareBall(0.8, learnable=True),
    lambda: Lorentz(1.5, learnable=True),
    lambda: PoincareBall(1.0),
    lambda: Euclidean(),
]


@pytest.mark.parametrize(
    "make", MANIFOLDS, ids=["poincare-learnable", "lorentz-learnable", "poincare", "euclid"]
)
@pytest.mark.parametrize("symmetric", [True, False])
def test_matches_the_loop_reference_values_and_gradients(make, symmetric: bool) -> None:
    manifold = make().double()
    v, vw = _tangent(5, 3, seed=0), _tangent(5, 3, seed=1)
    wrt = [v, vw, *manifold.parameters()]

    def run(loss_fn):
        u, w = manifold.expmap0(v), manifold.expmap0(vw)
        value = loss_fn(u, w)
        return value, torch.autograd.grad(value, wrt)

    got, got_grads = run(lambda u, w: hyperbolic_info_nce(u, w, manifold, 0.3, symmetric))
    want, want_grads = run(
        lambda u, w: ref_hyperbolic_info_nce(u, w, _reference_dist(manifold), 0.3, symmetric)
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, r in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-12)
    if list(manifold.parameters()):
        assert float(got_grads[-1].abs()) > 0  # the curvature does get a gradient


def test_identical_collapsed_points_give_log_batch() -> None:
    ball = PoincareBall().double()
    u = torch.zeros(6, 2, dtype=torch.float64)
    loss = hyperbolic_info_nce(u, u, ball)
    torch.testing.assert_close(loss, torch.log(torch.tensor(6.0, dtype=torch.float64)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("cls", [PoincareBall, Lorentz])
def test_gradcheck_with_learnable_curvature(cls) -> None:
    m = cls(0.7, learnable=True).double()
    v, vw = _tangent(4, 2, seed=2), _tangent(4, 2, seed=3)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return hyperbolic_info_nce(m.expmap0(a), m.expmap0(b), m, 0.5)

    assert torch.autograd.gradcheck(loss, (v, vw))
    # d loss / d theta against a central difference
    (grad,) = torch.autograd.grad(loss(v, vw), m.theta)
    eps = 1e-6
    with torch.no_grad():
        m.theta += eps
        up = loss(v, vw)
        m.theta -= 2 * eps
        down = loss(v, vw)
        m.theta += eps
    torch.testing.assert_close(grad, (up - down) / (2 * eps), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("make", MANIFOLDS[:2], ids=["poincare", "lorentz"])
def test_float32_agrees_with_float64_and_bf16_is_finite(make) -> None:
    manifold = make()
    v, vw = _tangent(8, 4, seed=4, scale=0.5), _tangent(8, 4, seed=5, scale=0.5)
    l64 = hyperbolic_info_nce(manifold.double().expmap0(v), manifold.expmap0(vw), manifold)
    manifold = manifold.float()
    l32 = hyperbolic_info_nce(manifold.expmap0(v.float()), manifold.expmap0(vw.float()), manifold)
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), l64.detach(), rtol=1e-4, atol=0)
    u16 = manifold.expmap0(v.detach()).bfloat16()
    w16 = manifold.expmap0(vw.detach()).bfloat16()
    if isinstance(manifold, Lorentz):  # rounding to bf16 leaves the hyperboloid: put x0 back
        u16, w16 = manifold.proj(u16), manifold.proj(w16)
    assert torch.isfinite(hyperbolic_info_nce(u16, w16, manifold))


@pytest.mark.parametrize("make", MANIFOLDS[:2], ids=["poincare", "lorentz"])
def test_float32_at_the_projection_radius_is_finite(make) -> None:
    manifold = make()
    v = _tangent(16, 3, seed=6, scale=10.0, dtype=torch.float32)
    vw = _tangent(16, 3, seed=7, scale=10.0, dtype=torch.float32)
    loss = hyperbolic_info_nce(manifold.expmap0(v), manifold.expmap0(vw), manifold)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(v.grad).all() and torch.isfinite(manifold.theta.grad)


def test_errors() -> None:
    ball, hyp = PoincareBall(), Lorentz()
    u = ball.expmap0(torch.randn(4, 3))
    with pytest.raises(
        InputError, match="hyperbolic_info_nce: argument 'u' has 1 row.*outside the Poincare ball"
    ):
        hyperbolic_info_nce(torch.cat((u[:3], torch.tensor([[1.0, 0.0, 0.0]]))), u, ball)
    with pytest.raises(InputError, match="argument 'w' has 1 row.*off the hyperboloid"):
        x = hyp.expmap0(torch.randn(4, 3))
        hyperbolic_info_nce(x, torch.cat((x[:3], torch.tensor([[1.0, 2.0, 0.0, 0.0]]))), hyp)
    with pytest.raises(InputError, match="argument 'w' must have 4 rows"):
        hyperbolic_info_nce(u, u[:3], ball)
    with pytest.raises(InputError, match="argument 'w' must have embedding size 3"):
        hyperbolic_info_nce(u, ball.expmap0(torch.randn(4, 2)), ball)
    with pytest.raises(InputError, match="argument 'u' must have shape"):
        hyperbolic_info_nce(u[0], u[0], ball)
    with pytest.raises(InputError, match="argument 'u' is empty"):
        hyperbolic_info_nce(u[:0], u[:0], ball)
    with pytest.raises(InputError, match="NaN/inf"):
        hyperbolic_info_nce(torch.full((4, 3), float("nan")), u, ball)
    with pytest.raises(InputError, match="argument 'manifold' must be a contrastkit.geometry manifold"):
        hyperbolic_info_nce(u, u, "poincare")
    with pytest.raises(InputError, match="argument 'temperature'"):
        hyperbolic_info_nce(u, u, ball, temperature=0.0)
    with pytest.raises(InputError, match="argument 'symmetric'"):
        hyperbolic_info_nce(u, u, ball, symmetric="no")
    with pytest.raises(InputError, match="at least one negative"):
        hyperbolic_info_nce(u[:1], u[:1], ball)


@pytest.mark.parametrize("make", [PoincareBall, Euclidean], ids=["poincare", "euclid"])
def test_mixed_float64_and_float32_inputs_compute_in_float64(make) -> None:
    manifold = make()
    u = manifold.expmap0(_tangent(5, 3, seed=8, scale=0.5)).detach()
    w = manifold.expmap0(_tangent(5, 3, seed=9, scale=0.5)).detach().float()
    got = hyperbolic_info_nce(u, w, manifold)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, hyperbolic_info_nce(u, w.double(), manifold), rtol=1e-12, atol=0)
