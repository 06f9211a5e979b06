"""supcon (L_out) against a float64 loop reference of METHODS 1.6 and Khosla et al.'s SupConLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_reduce, unit_rows
from contrastkit import InputError, NoPositivePairsError, supcon


def _raw(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()


def _unit_views(n: int, v: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, v, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()


# ---------------------------------------------------------------- loop reference


def ref_supcon_anchors(
    z: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    base_temperature: float | None = None,
    positive_mask: torch.Tensor | None = None,
    ignore_mask: torch.Tensor | None = None,
) -> list[torch.Tensor | None]:
    """Per-anchor L_a (None where P(a) is empty), anchors in view-major order a = v*N + i.

    P(a): anchors p != a of the same class (or positive_mask[i, j], or the same sample), not
    ignored; A(a): anchors j != a whose sample is not ignored by a's sample.
    """
    base = temperature if base_temperature is None else base_temperature
    zz = z if z.dim() == 3 else z[:, None, :]
    n, v = zz.shape[0], zz.shape[1]
    # anchor index a -> (view, sample)
    anchors = [(vi, i) for vi in range(v) for i in range(n)]

    def positive(i: int, j: int) -> bool:
        if i == j:
            return True
        if labels is not None:
            return bool(labels[i] == labels[j])
        return bool(positive_mask[i, j])

    def ignored(i: int, j: int) -> bool:
        return ignore_mask is not None and bool(ignore_mask[i, j])

    out: list[torch.Tensor | None] = []
    for a, (va, i) in enumerate(anchors):
        za = zz[i, va]
        cands, poss = [], []
        for b, (vb, j) in enumerate(anchors):
            if b == a or ignored(i, j):
                continue
            logit = (za * zz[j, vb]).sum() / temperature
            cands.append(logit)
            if positive(i, j):
                poss.append(logit)
        if not poss:
            out.append(None)
            continue
        lse = torch.logsumexp(torch.stack(cands), dim=0)
        mean_term = sum(p - lse for p in poss) / len(poss)
        out.append(-(temperature / base) * mean_term)
    return out


def ref_supcon(*args, reduction: str = "mean", **kwargs) -> torch.Tensor:
    return loop_reduce(ref_supcon_anchors(*args, **kwargs), reduction)


def _hobbitlong_supcon(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07, base_temperature: float = 0.07
) -> torch.Tensor:
    """SupConLoss of Khosla et al. (HobbitLong/SupContrast losses.py, contrast_mode='all')."""
    batch_size = features.shape[0]
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).to(features.dtype)
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, torch.ones_like(mask_pos_pairs), mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


LABELS_8 = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_supcon_single_view_matches_loop(temperature: float) -> None:
    z = unit_rows(8, 5, seed=1)
    assert_matches_reference(
        lambda x: supcon(x, LABELS_8, temperature), lambda x: ref_supcon(x, LABELS_8, temperature), z
    )


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_multi_view_matches_loop(views: int) -> None:
    z = _unit_views(6, views, 4, seed=2 + views)
    labels = torch.tensor([3, 1, 3, 0, 1, 7])  # 0 and 7 are singletons: positives only via views
    assert_matches_reference(lambda x: supcon(x, labels, 0.1), lambda x: ref_supcon(x, labels, 0.1), z)


def test_supcon_multi_view_is_view_major() -> None:
    # A sample-major stacking would give a different loss once views differ.
    z = _unit_views(5, 2, 3, seed=9)
    labels = torch.tensor([0, 1, 1, 2, 0])
    got = supcon(z, labels, 0.1, reduction="none")
    want = ref_supcon(z, labels, 0.1, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    sample_major = supcon(z.detach().reshape(10, 3), labels.repeat_interleave(2), 0.1, reduction="none")
    # Same anchors, different order: the values agree only after reordering view-major.
    torch.testing.assert_close(sample_major.view(5, 2).T.reshape(-1), got.detach(), atol=1e-10, rtol=0)
    assert (sample_major - got.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("base_temperature", [0.07, 0.2, 1.0])
def test_supcon_base_temperature(base_temperature: float) -> None:
    z = _unit_views(6, 2, 4, seed=11)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    assert_matches_reference(
        lambda x: supcon(x, labels, 0.1, base_temperature=base_temperature),
        lambda x: ref_supcon(x, labels, 0.1, base_temperature=base_temperature),
        z,
    )
    ratio = supcon(z, labels, 0.1, base_temperature=base_temperature) / supcon(z, labels, 0.1)
    assert abs(ratio.item() - 0.1 / base_temperature) < 1e-12


def test_supcon_raw_features_are_used_as_given() -> None:
    # supcon does not normalise: non-unit rows still match the reference on the raw dot product.
    z = _raw(7, 4, seed=12)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    assert_matches_reference(lambda x: supcon(x, labels, 0.5), lambda x: ref_supcon(x, labels, 0.5), z)
    assert abs(supcon(z, labels, 0.5).item() - supcon(F.normalize(z, dim=1), labels, 0.5).item()) > 1e-3


def test_supcon_positive_mask_matches_loop() -> None:
    z = _unit_views(6, 2, 4, seed=13)
    g = torch.Generator().manual_seed(14)
    pos = torch.rand(6, 6, generator=g) < 0.3  # not symmetric, not an equivalence relation
    assert_matches_reference(
        lambda x: supcon(x, None, 0.1, positive_mask=pos),
        lambda x: ref_supcon(x, None, 0.1, positive_mask=pos),
        z,
    )


def test_supcon_positive_mask_from_labels_equals_labels() -> None:
    z = unit_rows(8, 5, seed=15)
    mask = LABELS_8[:, None] == LABELS_8[None, :]
    torch.testing.assert_close(
        supcon(z, None, 0.1, positive_mask=mask), supcon(z, LABELS_8, 0.1), atol=1e-13, rtol=0
    )


def test_supcon_ignore_mask_matches_loop() -> None:
    z = _unit_views(6, 2, 4, seed=16)
    labels = torch.tensor([0, 0, 1, 1, 0, 2])
    ignore = torch.zeros(6, 6, dtype=torch.bool)
    ignore[0, 1] = True  # drops a positive of sample 0
    ignore[0, 2] = True  # drops a negative of sample 0
    ignore[3, 5] = True
    ignore[5, 4] = True
    assert_matches_reference(
        lambda x: supcon(x, labels, 0.1, ignore_mask=ignore),
        lambda x: ref_supcon(x, labels, 0.1, ignore_mask=ignore),
        z,
    )
    assert abs(supcon(z, labels, 0.1, ignore_mask=ignore).item() - supcon(z, labels, 0.1).item()) > 1e-4


def test_supcon_ignore_mask_with_positive_mask() -> None:
    z = unit_rows(6, 4, seed=17)
    g = torch.Generator().manual_seed(18)
    pos = torch.rand(6, 6, generator=g) < 0.5
    ignore = torch.rand(6, 6, generator=g) < 0.2
    assert_matches_reference(
        lambda x: supcon(x, None, 0.2, positive_mask=pos, ignore_mask=ignore),
        lambda x: ref_supcon(x, None, 0.2, positive_mask=pos, ignore_mask=ignore),
        z,
    )


def test_supcon_reduction_none_has_nan_exactly_at_anchors_without_positive() -> None:
    z = unit_rows(6, 4, seed=19)
    labels = torch.tensor([0, 1, 0, 2, 3, 1])  # samples 3 and 4 have no positive
    got = supcon(z, labels, 0.1, reduction="none")
    assert got.shape == (6,)
    assert torch.isnan(got).tolist() == [False, False, False, True, True, False]
    want = ref_supcon(z, labels, 0.1, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0, equal_nan=True)
    # The gradient of the valid anchors' sum is NaN-free and matches the reference.
    keep = ~torch.isnan(got)
    g_got = torch.autograd.grad(got[keep].sum(), z)[0]
    g_want = torch.autograd.grad(want[keep].sum(), z)[0]
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, atol=1e-10, rtol=0)


def test_supcon_reduction_none_multi_view_nan_per_anchor() -> None:
    # With a positive_mask a sample can lack positives only if V = 1; with V = 2, ignoring the
    # sample itself removes its other view too, so both of its anchors have none.
    z = _unit_views(4, 2, 3, seed=20)
    labels = torch.tensor([0, 1, 2, 3])
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[2, 2] = True
    got = supcon(z, labels, 0.1, ignore_mask=ignore, reduction="none")
    assert torch.isnan(got).tolist() == [False, False, True, False] * 2
    torch.testing.assert_close(
        got,
        ref_supcon(z, labels, 0.1, ignore_mask=ignore, reduction="none"),
        atol=1e-10,
        rtol=0,
        equal_nan=True,
    )


def test_supcon_mean_and_sum_exclude_anchors_without_positive() -> None:
    z = unit_rows(6, 4, seed=21)
    labels = torch.tensor([0, 1, 0, 2, 3, 1])
    per = supcon(z, labels, 0.1, reduction="none").detach()
    valid = per[~torch.isnan(per)]
    assert valid.numel() == 4
    torch.testing.assert_close(supcon(z, labels, 0.1), valid.mean(), atol=1e-13, rtol=0)
    torch.testing.assert_close(supcon(z, labels, 0.1, reduction="sum"), valid.sum(), atol=1e-13, rtol=0)
    # Counting the invalid anchors as zeros would give 4/6 of the mean: make sure it does not.
    assert abs(supcon(z, labels, 0.1).item() - valid.sum().item() / 6) > 1e-3
    assert_matches_reference(lambda x: supcon(x, labels, 0.1), lambda x: ref_supcon(x, labels, 0.1), z)


def test_supcon_all_distinct_single_view_raises() -> None:
    z = unit_rows(5, 3, seed=22)
    with pytest.raises(NoPositivePairsError):
        supcon(z, torch.arange(5), 0.1)
    with pytest.raises(NoPositivePairsError):
        supcon(z, None, 0.1, positive_mask=torch.zeros(5, 5, dtype=torch.bool))
    # Control: with two views the other view is a positive, so it does not raise.
    assert torch.isfinite(supcon(_unit_views(5, 2, 3, seed=23), torch.arange(5), 0.1))


def test_supcon_requires_exactly_one_of_labels_and_positive_mask() -> None:
    z = unit_rows(4, 3, seed=24)
    labels = torch.tensor([0, 0, 1, 1])
    mask = labels[:, None] == labels[None, :]
    with pytest.raises(InputError, match="exactly one"):
        supcon(z, labels, 0.1, positive_mask=mask)
    with pytest.raises(InputError, match="exactly one"):
        supcon(z, None, 0.1)


def test_supcon_gradcheck() -> None:
    z = _raw(4, 2, 3, seed=25)
    labels = torch.tensor([0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda x: supcon(x, labels, 0.5, base_temperature=0.7), (z,))
    z1 = _raw(5, 3, seed=26)
    ignore = torch.zeros(5, 5, dtype=torch.bool)
    ignore[1, 3] = True
    assert torch.autograd.gradcheck(
        lambda x: supcon(x, torch.tensor([0, 1, 0, 1, 2]), 0.5, ignore_mask=ignore), (z1,)
    )


@pytest.mark.parametrize("temperature, base_temperature", [(0.07, 0.07), (0.1, 0.07), (0.5, 1.0)])
def test_supcon_matches_khosla_reference_for_two_views(temperature: float, base_temperature: float) -> None:
    z = _unit_views(8, 2, 6, seed=27)
    labels = torch.tensor([4, 2, 4, 1, 2, 2, 0, 1])
    assert_matches_reference(
        lambda x: supcon(x, labels, temperature, base_temperature=base_temperature),
        lambda x: _hobbitlong_supcon(x, labels, temperature, base_temperature),
        z,
    )


def test_supcon_identical_embeddings_value() -> None:
    # All logits equal: L_a = log(n - 1) for every anchor with a positive (n = V*N anchors).
    z = torch.ones(5, 2, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert abs(supcon(z, labels, 0.3).item() - math.log(9)) < 1e-12


def test_single_view_tensor_equals_plain_rows() -> None:
    z = unit_rows(6, 5, seed=31)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(supcon(z[:, None], labels), supcon(z, labels), atol=0, rtol=0)
