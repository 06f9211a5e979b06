"""siglip_loss and SigLIPLoss against a float64 loop reference (METHODS.md 0 and 1.3)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, unit_rows
from contrastkit import InputError, SigLIPLoss, siglip_loss

B, D = 5, 4


def ref_siglip(x, y, scale, bias, sample_ids=None):
    """-(1/B) sum_ij log sigmoid(z_ij l_ij), z = +1 on positives, -1 elsewhere."""
    n = x.shape[0]
    ids = list(range(n)) if sample_ids is None else list(sample_ids)
    total = 0.0
    for i in range(n):
        for j in range(n):
            logit = scale * loop_dot(x[i], y[j]) + bias
            z = 1.0 if ids[i] == ids[j] else -1.0
            total = total + torch.log(torch.sigmoid(z * logit))
    return -total / n


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (3.0, 0.5), (0.0, 1.0)])
def test_siglip_matches_loop_reference(scale: float, bias: float) -> None:
    x, y, s, b = unit_rows(B, D, seed=1), unit_rows(B, D, seed=2), _t(scale), _t(bias)
    got = siglip_loss(x, y, s, b)
    assert got.dtype == torch.float64 and got.shape == ()
    assert_matches_reference(siglip_loss, ref_siglip, x, y, s, b)


def test_siglip_float_scale_and_bias() -> None:
    x, y = unit_rows(B, D, seed=3), unit_rows(B, D, seed=4)
    assert_matches_reference(
        lambda a, c: siglip_loss(a, c, 7.0, -2.0), lambda a, c: ref_siglip(a, c, 7.0, -2.0), x, y
    )


IDS = [3, 1, 3, 7, 1, 3]


def test_siglip_sample_ids() -> None:
    n = len(IDS)
    x, y, s, b = unit_rows(n, D, seed=5), unit_rows(n, D, seed=6), _t(5.0), _t(-3.0)
    ids = torch.tensor(IDS)
    assert_matches_reference(
        lambda *a: siglip_loss(*a, sample_ids=ids), lambda *a: ref_siglip(*a, sample_ids=IDS), x, y, s, b
    )
    plain = siglip_loss(x, y, s, b).detach()
    assert abs(float(siglip_loss(x, y, s, b, sample_ids=ids).detach() - plain)) > 1e-3


def test_siglip_single_pair_hand_case() -> None:
    x = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    s, b = 10.0, -10.0
    logit = s * 0.6 + b  # -4
    want = math.log1p(math.exp(-logit))  # softplus(-(s<x,y> + b))
    assert float(siglip_loss(x, y, s, b)) == pytest.approx(want, abs=1e-12)


def test_siglip_divides_by_b_not_b_squared() -> None:
    # B = 2 orthonormal pairs at scale 0: every logit is b, so L = (1/2)[2 softplus(-b) + 2 softplus(b)]
    x = torch.eye(2, dtype=torch.float64)
    b = 1.5
    want = math.log1p(math.exp(-b)) + math.log1p(math.exp(b))
    assert float(siglip_loss(x, x, 0.0, b)) == pytest.approx(want, abs=1e-12)


def test_siglip_gradcheck() -> None:
    x, y, s, b = unit_rows(4, 3, seed=7), unit_rows(4, 3, seed=8), _t(2.0), _t(-1.0)
    assert torch.autograd.gradcheck(siglip_loss, (x, y, s, b))
    ids = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a, sample_ids=ids), (x, y, s, b))


def test_siglip_rejects_bad_arguments() -> None:
    x, y = unit_rows(B, D), unit_rows(B, D, seed=1)
    with pytest.raises(InputError, match="scale"):
        siglip_loss(x, y, -1.0, 0.0)
    with pytest.raises(InputError, match="bias"):
        siglip_loss(x, y, 1.0, float("nan"))
    with pytest.raises(InputError, match="sample_ids"):
        siglip_loss(x, y, 1.0, 0.0, sample_ids=torch.zeros(B - 1, dtype=torch.long))


# --------------------------------------------------------------------------------------------
# SigLIPLoss
# --------------------------------------------------------------------------------------------


def test_siglip_module_init_values() -> None:
    crit = SigLIPLoss()
    assert crit.scale == pytest.approx(10.0, rel=1e-6)
    assert float(crit.logit_scale.log_scale.detach()) == pytest.approx(math.log(10.0), abs=1e-6)
    assert float(crit.bias.detach()) == -10.0
    assert set(dict(crit.named_parameters())) == {"logit_scale.log_scale", "bias"}


def test_siglip_module_parameters_carry_no_weight_decay() -> None:
    params = list(SigLIPLoss().parameters())
    assert len(params) == 2
    assert all(getattr(p, "no_weight_decay", False) is True for p in params)


def test_siglip_module_value_and_gradients() -> None:
    crit = SigLIPLoss(init_scale=5.0, init_bias=-2.0)
    x, y = unit_rows(B, D, seed=9), unit_rows(B, D, seed=10)
    loss = crit(x, y)
    s_ref, b_ref = _t(float(crit.logit_scale.log_scale.detach().exp())), _t(float(crit.bias.detach()))
    want = ref_siglip(x, y, s_ref, b_ref)
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=0)
    loss.backward()
    g_s, g_b = torch.autograd.grad(want, [s_ref, b_ref])
    assert float(crit.bias.grad) == pytest.approx(float(g_b), rel=1e-5, abs=1e-7)
    assert float(crit.logit_scale.log_scale.grad) == pytest.approx(
        float(s_ref.detach()) * float(g_s), rel=1e-5, abs=1e-7
    )


def test_siglip_module_clamp() -> None:
    crit = SigLIPLoss()
    t = crit.logit_scale.log_scale
    x, y = unit_rows(B, D, seed=11), unit_rows(B, D, seed=12)
    with torch.no_grad():
        t.fill_(10.0)
    loss = crit(x, y)
    assert crit.scale == pytest.approx(100.0, rel=1e-6)
    torch.testing.assert_close(loss, ref_siglip(x, y, crit.scale, -10.0), atol=1e-10, rtol=0)
    loss.backward()
    assert t.grad is not None and float(t.grad) != 0.0 and crit.bias.grad is not None
    with torch.no_grad():
        t.fill_(-1.0)
    crit(x, y)
    assert float(t.detach()) == 0.0 and crit.scale == 1.0


def test_siglip_exact_for_large_logits() -> None:
    # |l_ij| well above 20, where a thresholded softplus (F.softplus) is off by ~e^-20 = 2e-9
    x = unit_rows(B, D, seed=13)
    y = torch.nn.functional.normalize(x.detach() + 0.1 * unit_rows(B, D, seed=14).detach(), dim=1)
    y.requires_grad_()
    s, b = _t(100.0), _t(-5.0)
    logits = 100.0 * x.detach() @ y.detach().T - 5.0
    assert (logits.diagonal() > 20).all() and (logits.abs() > 20).any()
    assert_matches_reference(siglip_loss, ref_siglip, x, y, s, b)
