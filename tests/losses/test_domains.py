"""cross_domain_supcon and crcc_loss against float64 loop references of METHODS 3.17 / 1.6."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.domains import crcc_loss, cross_domain_supcon
from contrastkit.losses.supervised import supcon

# 10 samples, 2 segments per subject: subjects 0, 4 (label 0) and 1 (label 1) at site 0, subjects
# 2 (label 0) and 3 (label 1) at site 1. Every anchor has a cross-site positive.
LABELS = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
SUBJECT = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
SITE = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])


# ---------------------------------------------------------------- loop reference


def ref_anchors(z, labels, subject, site, temperature, require_cross_site=True):
    """Per-anchor L_i (None where P(i) or the negatives are empty), straight from the formula."""
    n = z.shape[0]
    out = []
    for i in range(n):
        candidates, positives, negatives = [], [], 0
        for j in range(n):
            if subject[j] == subject[i]:  # self and same-subject pairs leave the denominator
                continue
            logit = loop_dot(z[i], z[j]) / temperature
            candidates.append(logit)
            cross_site = site[j] != site[i] or not require_cross_site
            if labels[j] == labels[i] and cross_site:
                positives.append(logit)
            else:
                negatives += 1
        if not positives or not negatives:
            out.append(None)
            continue
        lse = loop_lse(candidates)
        out.append(-sum(p - lse for p in positives) / len(positives))
    return out


def ref_loss(z, labels, subject, site, temperature, require_cross_site=True, reduction="mean"):
    return loop_reduce(ref_anchors(z, labels, subject, site, temperature, require_cross_site), reduction)


def ref_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    rows = [
        loop_lse([logits[i, c] for c in range(logits.shape[1])]) - logits[i, targets[i]]
        for i in range(logits.shape[0])
    ]
    return sum(rows) / len(rows)


def _random_domains(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    subject = torch.randint(0, n // 2, (n,), generator=g)
    site = subject % 3  # one site per subject
    labels = (subject * 7 + 3) % 2  # one label per subject
    return labels, subject, site


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("require_cross_site", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_loop_reference(require_cross_site: bool, reduction: str, temperature: float) -> None:
    z = unit_rows(10, 4, seed=1)
    assert_matches_reference(
        lambda x: cross_domain_supcon(
            x, LABELS, SUBJECT, SITE, temperature, require_cross_site=require_cross_site, reduction=reduction
        ),
        lambda x: ref_loss(x, LABELS, SUBJECT, SITE, temperature, require_cross_site, reduction),
        z,
    )


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_matches_loop_reference_on_random_domains(seed: int) -> None:
    labels, subject, site = _random_domains(16, seed)
    z = unit_rows(16, 5, seed=seed)
    assert_matches_reference(
        lambda x: cross_domain_supcon(x, labels, subject, site, 0.2),
        lambda x: ref_loss(x, labels, subject, site, 0.2),
        z,
    )


def test_reduction_none_has_nan_exactly_at_anchors_without_cross_site_positive() -> None:
    # Label 1 lives at site 0 (subject 1) and site 1 (subject 3): every label-1 anchor is valid.
    # Label 0: subjects 0 and 4 at site 0, subject 2 at site 1; all have a cross-site positive.
    # Move subject 2 to site 0: label 0 is then single-site and its anchors have no positive.
    site = SITE.clone()
    site[4:6] = 0
    z = unit_rows(10, 4, seed=5)
    got = cross_domain_supcon(z, LABELS, SUBJECT, site, 0.1, reduction="none")
    assert torch.isnan(got).tolist() == [bool(y == 0) for y in LABELS]
    want = ref_loss(z, LABELS, SUBJECT, site, 0.1, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0, equal_nan=True)
    kept = got[~torch.isnan(got)]
    torch.testing.assert_close(cross_domain_supcon(z, LABELS, SUBJECT, site, 0.1), kept.mean())
    # Without the site condition the label-0 anchors get their other-subject positives back.
    assert not torch.isnan(
        cross_domain_supcon(z, LABELS, SUBJECT, site, 0.1, require_cross_site=False, reduction="none")
    ).any()


def test_same_subject_pairs_leave_the_denominator() -> None:
    # L_i does not depend on the other segments of subject i: their gradient is exactly zero.
    z = unit_rows(10, 4, seed=6)
    per_anchor = cross_domain_supcon(z, LABELS, SUBJECT, SITE, 0.1, reduction="none")
    (grad,) = torch.autograd.grad(per_anchor[0], z)
    assert torch.equal(grad[1], torch.zeros(4, dtype=torch.float64))
    assert grad[4:8].abs().sum() > 0  # other subjects do enter L_0


def test_same_site_same_label_pairs_stay_negatives() -> None:
    # Anchor 0 (label 0, site 0): subject 4 (label 0, site 0) is no positive but is a candidate.
    z = unit_rows(10, 4, seed=7)
    per_anchor = cross_domain_supcon(z, LABELS, SUBJECT, SITE, 0.1, reduction="none")
    (grad,) = torch.autograd.grad(per_anchor[0], z)
    assert grad[8].abs().sum() > 0


def test_unique_subjects_without_site_rule_equal_supcon() -> None:
    z = unit_rows(8, 5, seed=8)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    got = cross_domain_supcon(
        z, labels, torch.arange(8), torch.zeros(8, dtype=torch.long), 0.1, require_cross_site=False
    )
    torch.testing.assert_close(got, supcon(z, labels, 0.1), atol=1e-12, rtol=0)


def test_identical_embeddings_give_log_of_candidate_count() -> None:
    # All logits equal: L_i = log |A(i)| = log(N - segments of subject i) = log 8 here.
    z = torch.ones(10, 3, dtype=torch.float64)
    assert abs(cross_domain_supcon(z, LABELS, SUBJECT, SITE, 0.3).item() - math.log(8)) < 1e-12


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(9)
    z = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: cross_domain_supcon(x, LABELS, SUBJECT, SITE, 0.5), (z,))


def test_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    labels, subject, site = _random_domains(24, 10)
    z64 = unit_rows(24, 8, seed=10)
    want = cross_domain_supcon(z64, labels, subject, site, 0.1)
    got = cross_domain_supcon(z64.detach().float(), labels, subject, site, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    zb = z64.detach().bfloat16().requires_grad_()
    loss = cross_domain_supcon(zb, labels, subject, site, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zb.grad.float()).all()


# ---------------------------------------------------------------- errors


def test_single_site_batch_raises_naming_the_fix() -> None:
    z = unit_rows(10, 4, seed=11)
    one_site = torch.zeros(10, dtype=torch.long)
    with pytest.raises(NoPositivePairsError, match="at least 2 sites"):
        cross_domain_supcon(z, LABELS, SUBJECT, one_site, 0.1)
    with pytest.raises(NoPositivePairsError, match="cross_domain_supcon"):
        cross_domain_supcon(z, LABELS, torch.zeros(10, dtype=torch.long), SITE, 0.1, require_cross_site=False)
    assert torch.isfinite(cross_domain_supcon(z, LABELS, SUBJECT, one_site, 0.1, require_cross_site=False))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"z": torch.randn(10)}, "'z' must have shape"),
        ({"z": torch.randn(10, 2, 3)}, "'z' must have shape"),
        ({"z": torch.full((10, 4), float("nan"))}, "NaN"),
        ({"z": torch.zeros(0, 4)}, "empty"),
        ({"labels": LABELS[:9]}, "'labels' must have shape"),
        ({"subject": SUBJECT.float()}, "'subject' must be an integer"),
        ({"site": SITE[:, None]}, "'site' must have shape"),
        ({"temperature": 0.0}, "'temperature'"),
        ({"require_cross_site": "yes"}, "'require_cross_site'"),
        ({"reduction": "avg"}, "'reduction'"),
    ],
)
def test_bad_inputs_raise(change: dict, match: str) -> None:
    args = {"z": torch.randn(10, 4), "labels": LABELS, "subject": SUBJECT, "site": SITE, "temperature": 0.1}
    args.update(change)
    options = {k: args.pop(k) for k in ("require_cross_site", "reduction") if k in args}
    with pytest.raises(InputError, match=match) as info:
        cross_domain_supcon(**args, **options)
    assert "cross_domain_supcon" in str(info.value)


# ---------------------------------------------------------------- the CRCC objective


def _objective_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(10, 2, generator=g, dtype=torch.float64, requires_grad=True)
    site_logits = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return class_logits, unit_rows(10, 4, seed=seed), site_logits


def test_crcc_loss_matches_loop_reference() -> None:
    class_logits, z, site_logits = _objective_inputs(12)

    def reference(c, x, s):
        return (
            ref_cross_entropy(c, LABELS)
            + 0.5 * ref_loss(x, LABELS, SUBJECT, SITE, 0.1)
            + 2.0 * ref_cross_entropy(s, SITE)
        )

    assert_matches_reference(
        lambda c, x, s: crcc_loss(c, x, s, LABELS, SUBJECT, SITE, contrast_weight=0.5, site_weight=2.0),
        reference,
        class_logits,
        z,
        site_logits,
    )


def test_crcc_loss_ablations_drop_their_terms() -> None:
    class_logits, z, site_logits = _objective_inputs(13)
    ce = ref_cross_entropy(class_logits, LABELS)
    got = crcc_loss(class_logits, z, None, LABELS, SUBJECT, SITE, contrast_weight=0.0)
    torch.testing.assert_close(got, ce, atol=1e-12, rtol=0)
    # With contrast_weight=0 the contrast is not computed: a single-site batch does not raise.
    one_site = torch.zeros(10, dtype=torch.long)
    got = crcc_loss(class_logits, z, site_logits[:, :1], LABELS, SUBJECT, one_site, contrast_weight=0.0)
    torch.testing.assert_close(got, ce, atol=1e-12, rtol=0)  # one site: its CE is log 1 = 0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"labels": torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 0, 2])}, "'labels' must hold ids in \\[0, 2\\)"),
        ({"site": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 3])}, "'site' must hold ids in \\[0, 3\\)"),
        ({"contrast_weight": -1.0}, "'contrast_weight'"),
        ({"site_weight": float("nan")}, "'site_weight'"),
        ({"z": torch.randn(9, 4)}, "'z' must have 10 rows"),
        ({"site_logits": torch.randn(9, 3)}, "'site_logits' must have 10 rows"),
        ({"class_logits": torch.randn(10)}, "'class_logits' must have shape"),
    ],
)
def test_crcc_loss_bad_inputs_raise(change: dict, match: str) -> None:
    class_logits, z, site_logits = _objective_inputs(14)
    args = {"class_logits": class_logits, "z": z, "site_logits": site_logits, "labels": LABELS}
    args |= {"subject": SUBJECT, "site": SITE}
    args.update(change)
    options = {k: args.pop(k) for k in ("contrast_weight", "site_weight") if k in args}
    with pytest.raises(InputError, match=match) as info:
        crcc_loss(**args, **options)
    assert "crcc_loss" in str(info.value)
