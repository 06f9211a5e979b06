"""cross_modal_supcon and the SPP-SCL batch test against float64 loop references (METHODS 3.5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.crossmodal import (
    cross_modal_supcon,
    semi_push_pull_condition,
    semi_push_pull_test,
)

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 3 is a singleton: its only positive is its pair


def _raw(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()


# ---------------------------------------------------------------- loop reference


def ref_direction(anchors, candidates, labels, temperature, normalize) -> list[torch.Tensor | None]:
    """Per-anchor L_i = LSE_j l_ij - mean_{j: y_j = y_i} l_ij, l_ij = <u_i, v_j>/tau, all j."""
    n = anchors.shape[0]

    def unit(v):
        return v / torch.sqrt(loop_dot(v, v)) if normalize else v

    us = [unit(anchors[i]) for i in range(n)]
    vs = [unit(candidates[j]) for j in range(n)]
    out: list[torch.Tensor | None] = []
    for i in range(n):
        logits = [loop_dot(us[i], vs[j]) / temperature for j in range(n)]
        positives = [logits[j] for j in range(n) if labels[j] == labels[i]]
        if len(positives) == n:  # no negative: nothing to contrast
            out.append(None)
            continue
        out.append(loop_lse(logits) - sum(positives) / len(positives))
    return out


def ref_cross_modal(a, b, labels, temperature=0.07, directions="both", normalize=True, reduction="mean"):
    ab = ref_direction(a, b, labels, temperature, normalize)
    ba = ref_direction(b, a, labels, temperature, normalize)
    per = {"a_to_b": ab, "b_to_a": ba}.get(directions)
    if per is None:
        per = [None if x is None else (x + y) / 2 for x, y in zip(ab, ba, strict=True)]
    return loop_reduce(per, reduction)


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("directions", ["both", "a_to_b", "b_to_a"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_loop_on_raw_inputs_normalised_inside(directions: str, temperature: float) -> None:
    a, b = _raw(7, 5, seed=1), _raw(7, 5, seed=2)
    assert_matches_reference(
        lambda x, y: cross_modal_supcon(x, y, LABELS, temperature, directions=directions),
        lambda x, y: ref_cross_modal(x, y, LABELS, temperature, directions),
        a,
        b,
    )


@pytest.mark.parametrize("directions", ["both", "a_to_b", "b_to_a"])
def test_matches_loop_without_normalisation(directions: str) -> None:
    a, b = _raw(7, 4, seed=3), _raw(7, 4, seed=4)
    assert_matches_reference(
        lambda x, y: cross_modal_supcon(x, y, LABELS, 0.3, directions=directions, normalize=False),
        lambda x, y: ref_cross_modal(x, y, LABELS, 0.3, directions, normalize=False),
        a,
        b,
    )
    normalised = cross_modal_supcon(a, b, LABELS, 0.3, directions=directions)
    assert (
        abs(
            normalised.item()
            - cross_modal_supcon(a, b, LABELS, 0.3, directions=directions, normalize=False).item()
        )
        > 1e-3
    )


def test_directions_differ_and_both_is_their_mean() -> None:
    a, b = unit_rows(7, 5, seed=5), unit_rows(7, 5, seed=6)
    ab = cross_modal_supcon(a, b, LABELS, directions="a_to_b")
    ba = cross_modal_supcon(a, b, LABELS, directions="b_to_a")
    assert abs(ab.item() - ba.item()) > 1e-3
    torch.testing.assert_close(cross_modal_supcon(a, b, LABELS), (ab + ba) / 2, atol=1e-12, rtol=0)
    # a_to_b with the roles swapped is b_to_a
    torch.testing.assert_close(cross_modal_supcon(b, a, LABELS, directions="a_to_b"), ba, atol=1e-12, rtol=0)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_match_loop(reduction: str) -> None:
    a, b = _raw(6, 3, seed=7), _raw(6, 3, seed=8)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    got = cross_modal_supcon(a, b, labels, 0.2, reduction=reduction)
    want = ref_cross_modal(a, b, labels, 0.2, reduction=reduction)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_every_anchor_counts_unless_one_class_fills_the_batch() -> None:
    # Every anchor has its pair as a positive; it is left out only when it has no negative.
    a, b = unit_rows(4, 3, seed=9), unit_rows(4, 3, seed=10)
    per = cross_modal_supcon(a, b, torch.tensor([0, 1, 2, 3]), reduction="none")
    assert per.shape == (4,) and torch.isfinite(per).all()
    with pytest.raises(NoPositivePairsError):
        cross_modal_supcon(a, b, torch.tensor([5, 5, 5, 5]))


def test_distinct_labels_equal_the_clip_direction() -> None:
    # With one sample per class the only positive is the matched pair: InfoNCE per direction.
    a, b = unit_rows(6, 4, seed=11), unit_rows(6, 4, seed=12)
    logits = a @ b.T / 0.1
    target = torch.arange(6)
    want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(cross_modal_supcon(a, b, target, 0.1), want, atol=1e-12, rtol=0)


def test_identical_embeddings_value() -> None:
    # All logits equal: L_i = log B for every anchor.
    a = torch.ones(5, 3, dtype=torch.float64)
    assert abs(cross_modal_supcon(a, a, torch.tensor([0, 1, 0, 1, 2]), 0.3).item() - math.log(5)) < 1e-12


def test_gradcheck() -> None:
    a, b = _raw(5, 3, seed=13), _raw(5, 3, seed=14)
    labels = torch.tensor([0, 1, 0, 2, 1])
    for directions in ("both", "a_to_b"):
        assert torch.autograd.gradcheck(
            lambda x, y, d=directions: cross_modal_supcon(x, y, labels, 0.5, directions=d), (a, b)
        )


def test_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    a, b = _raw(16, 8, seed=15).detach(), _raw(16, 8, seed=16).detach()
    labels = torch.arange(16) % 4
    want = cross_modal_supcon(a, b, labels)
    got = cross_modal_supcon(a.float(), b.float(), labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
    half_a, half_b = a.bfloat16().requires_grad_(), b.bfloat16().requires_grad_()
    loss = cross_modal_supcon(half_a, half_b, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(half_a.grad.float()).all()


# ---------------------------------------------------------------- errors


def test_errors() -> None:
    a, b = unit_rows(4, 3, seed=17), unit_rows(4, 3, seed=18)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(InputError, match="'directions'"):
        cross_modal_supcon(a, b, labels, directions="both_ways")
    with pytest.raises(InputError, match="'temperature'"):
        cross_modal_supcon(a, b, labels, 0.0)
    with pytest.raises(InputError, match="'reduction'"):
        cross_modal_supcon(a, b, labels, reduction="avg")
    with pytest.raises(InputError, match="'normalize'"):
        cross_modal_supcon(a, b, labels, normalize="yes")
    with pytest.raises(InputError, match="'b' must have 4 rows"):
        cross_modal_supcon(a, b[:3], labels)
    with pytest.raises(InputError, match="'b' must have embedding size 3"):
        cross_modal_supcon(a, b[:, :2], labels, normalize=False)
    with pytest.raises(InputError, match="'labels'"):
        cross_modal_supcon(a, b, labels[:3])
    with pytest.raises(InputError, match="'labels'"):
        cross_modal_supcon(a, b, labels.double())
    with pytest.raises(InputError, match="NaN/inf"):
        cross_modal_supcon(a, b.detach().clone().fill_(float("nan")), labels)
    with pytest.raises(InputError, match="all-zero row"):
        cross_modal_supcon(a, torch.zeros(4, 3, dtype=torch.float64), labels)
    with pytest.raises(InputError, match="empty"):
        cross_modal_supcon(a[:0], b[:0], labels[:0])


# ---------------------------------------------------------------- the batch test


def ref_test(image, text, labels, alpha):
    """(fires, count, same_label) from loops over the B^2 pairs."""
    n = image.shape[0]
    sim = [[1 / (1 + math.exp(-float(loop_dot(text[i], image[j])))) for j in range(n)] for i in range(n)]
    d = sum(sim[i][i] for i in range(n)) / n
    count = sum(1 for i in range(n) for j in range(n) if sim[i][j] < d)
    same = sum(1 for i in range(n) for j in range(n) if labels[i] == labels[j])
    return not count >= alpha * same, count, same


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [1 / 3, 2 / 3, 1.0])
def test_condition_matches_loop_counts(seed: int, alpha: float) -> None:
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    got = semi_push_pull_test(image, text, labels, alpha)
    fires, count, same = ref_test(image, text, labels, alpha)
    assert (got.fires, got.count, got.same_label) == (fires, count, same)
    assert semi_push_pull_condition(image, text, labels, alpha) is fires


def _aligned_pair():
    """4 samples whose matched similarity beats every mismatched one: sigmoid(16) on the
    diagonal (its mean is exact in binary), 0.5 elsewhere, so count = 12 off-diagonal pairs."""
    image = torch.eye(4, dtype=torch.float64) * 4
    return image, image.clone()


def test_condition_on_both_sides_of_the_threshold() -> None:
    image, text = _aligned_pair()
    # count = 12.  M = 4 (distinct labels): 12 >= (2/3) 4 -> skip step 2.
    skip = semi_push_pull_test(image, text, torch.tensor([0, 1, 2, 3]))
    assert (skip.fires, skip.count, skip.same_label) == (False, 12, 4)
    # M = 16 (one class): 12 >= (2/3) 16 = 10.67 -> skip; the boundary is inclusive:
    # 12 >= 0.75 * 16 = 12 skips, 12 < 0.76 * 16 runs.
    one_class = torch.tensor([4, 4, 4, 4])
    edge = semi_push_pull_test(image, text, one_class)
    assert (edge.fires, edge.count, edge.same_label) == (False, 12, 16)
    assert not semi_push_pull_test(image, text, one_class, alpha=0.75).fires
    assert semi_push_pull_test(image, text, one_class, alpha=0.76).fires
    # M = 8 (two classes of two): 12 >= (2/3) 8 -> skip.
    assert semi_push_pull_test(image, text, torch.tensor([0, 0, 1, 1])).same_label == 8
    assert not semi_push_pull_condition(image, text, torch.tensor([0, 0, 1, 1]))
    # Collapsed embeddings: every similarity equals d, so count = 0 < alpha M -> step 2 runs.
    zeros = torch.zeros(4, 2)
    collapsed = semi_push_pull_test(zeros, zeros, torch.tensor([0, 1, 2, 3]))
    assert (collapsed.fires, collapsed.count, collapsed.mean_diagonal) == (True, 0, 0.5)


def test_condition_uses_raw_dot_products_and_the_mean_diagonal() -> None:
    # Row norms matter (no normalisation): scaling text changes sigmoid and therefore d.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, -1.0]])
    got = semi_push_pull_test(image, text, torch.tensor([0, 1, 1]))
    sims = torch.sigmoid(text @ image.T)
    assert abs(got.mean_diagonal - sims.diagonal().mean().item()) < 1e-6
    assert got.count == int((sims < sims.diagonal().mean()).sum())


def test_condition_errors() -> None:
    image, text = _aligned_pair()
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(InputError, match="'alpha'"):
        semi_push_pull_test(image, text, labels, alpha=-0.1)
    with pytest.raises(InputError, match="'alpha'"):
        semi_push_pull_test(image, text, labels, alpha=float("nan"))
    with pytest.raises(InputError, match="'text'"):
        semi_push_pull_test(image, text[:2], labels)
    with pytest.raises(InputError, match="'labels'"):
        semi_push_pull_test(image, text, labels[:2])
    with pytest.raises(InputError, match="'labels'"):
        semi_push_pull_test(image, text, labels.float())
    with pytest.raises(InputError, match="'image'"):
        semi_push_pull_test(image[:0], text[:0], labels[:0])
    with pytest.raises(InputError, match="NaN/inf"):
        semi_push_pull_test(image, text.clone().fill_(float("inf")), labels)
