"""Property checks (hypothesis): symmetries and invariances each loss must have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import contrastkit as ck

SETTINGS = settings(max_examples=40, deadline=None)


def _pair(seed: int, batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(x + torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    return x, y


def _perm(seed: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))


seeds = st.integers(0, 2**31 - 1)
batches = st.integers(2, 9)
dims = st.integers(1, 6)
scales = st.floats(0.0, 30.0)


@SETTINGS
@given(seeds, batches, dims, scales, st.floats(0.0, 0.5))
def test_clip_loss_joint_permutation_and_swap(seed, batch, dim, scale, eps):
    x, y = _pair(seed, batch, dim)
    p = _perm(seed, batch)
    base = ck.clip_loss(x, y, scale, label_smoothing=eps)
    torch.testing.assert_close(ck.clip_loss(x[p], y[p], scale, label_smoothing=eps), base, atol=1e-12, rtol=0)
    torch.testing.assert_close(ck.clip_loss(y, x, scale, label_smoothing=eps), base, atol=1e-12, rtol=0)
    assert base >= 0


@SETTINGS
@given(seeds, batches, dims, scales, st.floats(-15.0, 15.0))
def test_siglip_joint_permutation(seed, batch, dim, scale, bias):
    x, y = _pair(seed, batch, dim)
    p = _perm(seed, batch)
    torch.testing.assert_close(
        ck.siglip_loss(x[p], y[p], scale, bias), ck.siglip_loss(x, y, scale, bias), atol=1e-12, rtol=1e-12
    )


@SETTINGS
@given(seeds, batches, dims, scales)
def test_info_nce_fast_path_equals_masked_path(seed, batch, dim, scale):
    """The F.cross_entropy path (default diagonal) equals the general multi-positive path."""
    x, y = _pair(seed, batch, dim)
    nothing = torch.zeros(batch, batch, dtype=torch.bool)
    fast = ck.info_nce(x, y, scale, reduction="none")
    masked = ck.info_nce(x, y, scale, ignore_mask=nothing, reduction="none")
    lse = ck.info_nce(x, y, scale, multi_positive="lse", reduction="none")
    exclusive = ck.info_nce(x, y, scale, multi_positive="exclusive", reduction="none")
    for other in (masked, lse, exclusive):  # one positive per row: all modes agree
        torch.testing.assert_close(other, fast, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(seeds, batches, dims, st.floats(0.05, 2.0), st.integers(1, 3))
def test_supcon_sample_permutation(seed, batch, dim, temperature, n_classes):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, 2, dim, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    p = _perm(seed, batch)
    if labels.unique().numel() < 2:  # one class: nothing to contrast
        with pytest.raises(ck.NoPositivePairsError):
            ck.supcon(z, labels, temperature)
        return
    base = ck.supcon(z, labels, temperature)
    torch.testing.assert_close(ck.supcon(z[p], labels[p], temperature), base, atol=1e-12, rtol=1e-12)
    # relabelling the classes changes nothing
    torch.testing.assert_close(ck.supcon(z, labels * 7 + 3, temperature), base, atol=0, rtol=0)
    assert base >= 0


@SETTINGS
@given(seeds, batches, dims, st.floats(0.05, 2.0))
def test_two_view_losses_swap_and_row_scale(seed, batch, dim, temperature):
    x, y = _pair(seed, batch, dim)
    rescale = torch.linspace(0.5, 3.0, batch, dtype=torch.float64)[:, None]
    for loss in (ck.nt_xent, ck.dcl):
        base = loss(x, y, temperature)
        torch.testing.assert_close(loss(y, x, temperature), base, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(loss(x * rescale, y, temperature), base, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(seeds, batches, dims, st.integers(-100, 100))
def test_rank_n_contrast_label_shift_and_permutation(seed, batch, dim, shift):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (batch,), generator=g).to(torch.float64)  # many ties, kept exact by
    # an integer shift (a fractional one would round some label distances apart)
    p = _perm(seed, batch)
    base = ck.rank_n_contrast(z, y)
    torch.testing.assert_close(ck.rank_n_contrast(z[p], y[p]), base, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ck.rank_n_contrast(z, y + shift), base, atol=1e-12, rtol=1e-12)


@SETTINGS
@given(seeds, batches, dims, st.integers(1, 3))
def test_mnrl_joint_permutation_of_triplets(seed, batch, dim, n_neg):
    g = torch.Generator().manual_seed(seed)
    a, p = _pair(seed, batch, dim)
    n = torch.randn(batch, n_neg, dim, generator=g, dtype=torch.float64)
    perm = _perm(seed, batch)
    torch.testing.assert_close(ck.mnrl(a[perm], p[perm], n[perm]), ck.mnrl(a, p, n), atol=1e-12, rtol=1e-12)
