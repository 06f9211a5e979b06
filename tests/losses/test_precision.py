"""float32 and half-precision inputs agree with float64 within stated tolerances.

Logits and log-sum-exps are computed in float32 for bf16/fp16 inputs, so a half-precision
input gives the float32 loss of its rounded values (to float32 accuracy) and stays finite.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastkit as ck

B, D = 32, 16


def _inputs():
    g = torch.Generator().manual_seed(7)
    x = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(x + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(B) % 5
    return x, y, labels


CASES = {
    "info_nce": lambda x, y, lab: ck.info_nce(x, y, 14.0),
    "info_nce_extra": lambda x, y, lab: ck.info_nce(x, y, 14.0, extra_negatives=y.flip(0)[:4]),
    "clip_loss": lambda x, y, lab: ck.clip_loss(x, y, 14.0, label_smoothing=0.1),
    "clip_ids": lambda x, y, lab: ck.clip_loss(x, y, 14.0, sample_ids=lab),
    "siglip_loss": lambda x, y, lab: ck.siglip_loss(x, y, 10.0, -10.0),
    "nt_xent": lambda x, y, lab: ck.nt_xent(x, y, 0.5),
    "dcl": lambda x, y, lab: ck.dcl(x, y, 0.1, weighted=True),
    "supcon": lambda x, y, lab: ck.supcon(torch.stack([x, y], 1), lab, 0.1),
    "hard_negative": lambda x, y, lab: ck.hard_negative_info_nce(x, y, 2.0, beta=1.0, tau_plus=0.1),
    "mnrl": lambda x, y, lab: ck.mnrl(x, y, y.roll(1, 0)[:, None]),
    "rank_n_contrast": lambda x, y, lab: ck.rank_n_contrast(x, lab.to(x.dtype)),
    "cosine_alignment": lambda x, y, lab: ck.cosine_alignment(x, y),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_float64(name):
    x, y, lab = _inputs()
    want = CASES[name](x, y, lab)
    got = CASES[name](x.float(), y.float(), lab)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_half_inputs_are_computed_in_float32(name, half):
    x, y, lab = _inputs()
    xh = x.to(half).requires_grad_()
    yh = y.to(half).requires_grad_()
    got = CASES[name](xh, yh, lab)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # same rounded values in float32: equal to float32 accuracy
    torch.testing.assert_close(got, CASES[name](xh.float(), yh.float(), lab), rtol=1e-5, atol=1e-5)
    # against the unrounded float64 loss: within the half-precision input error
    torch.testing.assert_close(got.double(), CASES[name](x, y, lab), rtol=3e-2, atol=3e-2)
    got.backward()
    assert xh.grad.dtype == half and torch.isfinite(xh.grad).all()
    assert yh.grad is None or torch.isfinite(yh.grad).all()
