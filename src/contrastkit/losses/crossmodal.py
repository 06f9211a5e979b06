"""Cross-modal supervised contrast and the batch test of SPP-SCL (arXiv 2602.20767)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contrastkit.errors import (
    check_choice,
    check_embeddings,
    check_flag,
    check_labels,
    check_range,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import multi_positive_cross_entropy, reduce_anchor_losses, scaled_logits
from contrastkit.losses.pairs import unit_pair

DIRECTIONS = ("both", "a_to_b", "b_to_a")


def cross_modal_supcon(
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    *,
    directions: str = "both",
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """SupCon (L_out form) across two modalities: anchors of one, candidates of the other.

    With l_ij = <a_i, b_j>/tau (unit rows when ``normalize``) and P(i) = {j : y_j = y_i}, the
    matched pair j = i included, the a -> b loss of anchor i is

        L_i^{a->b} = LSE_j l_ij - (1/|P(i)|) sum_{p in P(i)} l_ip

    over all B columns (nothing is excluded: the cross-modal "self" pair is a positive); b -> a
    is the same with l^T. ``"both"`` averages the two directions per anchor. An anchor whose
    class fills the whole batch has no negative and is left out; if none is left,
    ``NoPositivePairsError`` is raised.

    Args:
        a, b: (B, D) paired embeddings of two modalities (row i of both is sample i).
        labels: (B,) integer class ids.
        temperature: tau > 0 (SPP-SCL: 0.07).
        directions: ``"both"`` (mean of a->b and b->a), ``"a_to_b"`` or ``"b_to_a"``.
        normalize: L2-normalise a and b first (default True: SPP-SCL's step 2 contrasts
            normalised embeddings); False uses them as given.
        reduction: ``"mean"``, ``"sum"`` over valid anchors, or ``"none"`` -> (B,), NaN at
            anchors without a negative.

    Reference: SPP-SCL step 2 (arXiv 2602.20767); SupCon, Khosla et al. (arXiv 2004.11362).
    """
    fn = "cross_modal_supcon"
    check_choice(fn, "directions", directions, DIRECTIONS)
    temperature = check_temperature(fn, "temperature", temperature)
    if check_flag(fn, "normalize", normalize):
        a, b = unit_pair(fn, a, b, ("a", "b"))
    else:
        check_same_device(fn, a=a, b=b)
        a = check_embeddings(fn, "a", a)
        b = check_embeddings(fn, "b", b, rows=a.shape[0], dim=a.shape[1], like="a")
    check_same_device(fn, a=a, labels=labels)
    labels = check_labels(fn, "labels", labels, a.shape[0])
    logits = scaled_logits(a, b, 1.0 / temperature)
    positive = labels[:, None] == labels[None, :]
    per_direction = []
    if directions != "b_to_a":
        per_direction.append(multi_positive_cross_entropy(logits, positive))
    if directions != "a_to_b":
        per_direction.append(multi_positive_cross_entropy(logits.T, positive))
    # an anchor's positives and negatives are the same columns in both directions (positive is
    # symmetric and no column is ignored), so both directions keep the same anchors
    loss = sum(anchor_loss for anchor_loss, _ in per_direction) / len(per_direction)
    return reduce_anchor_losses(fn, loss, per_direction[0][1], reduction)


@dataclass(frozen=True)
class SemiPushPullTest:
    """The outcome of SPP-SCL's batch test, with the counts behind it (for logging).

    fires: True when step 2 (the cross-modal push-pull) should run, i.e. count < alpha * same_label.
    count: #{(i, j) : sigmoid(<t_i, v_j>) < mean diagonal}, over all B^2 pairs.
    same_label: #{(i, j) : y_i = y_j}, diagonal included.
    mean_diagonal: d = mean_i sigmoid(<t_i, v_i>).
    """

    fires: bool
    count: int
    same_label: int
    mean_diagonal: float


@torch.no_grad()
def semi_push_pull_test(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, alpha: float = 2 / 3
) -> SemiPushPullTest:
    """SPP-SCL's condition for the cross-modal step, with its counts.

        sim = sigmoid(T I^T) on raw dot products,  d = mean_i sim_ii,
        count = #{(i, j) : sim_ij < d},  M = #{(i, j) : y_i = y_j} (diagonal included),
        step 2 is skipped if count >= alpha * M.

    Few pairs below the matched-pair level means the modalities are not yet separated, so the
    cross-modal step runs. Computed without gradient, in float64 for half-precision-proof
    counts.

    Args:
        image, text: (B, D) embeddings (raw, not normalised, as the release uses them).
        labels: (B,) integer class ids.
        alpha: the threshold factor, >= 0 (default 2/3).

    Reference: SPP-SCL, arXiv 2602.20767 (the released training loop).
    """
    fn = "semi_push_pull_test"
    check_same_device(fn, image=image, text=text, labels=labels)
    image = check_embeddings(fn, "image", image)
    text = check_embeddings(fn, "text", text, rows=image.shape[0], dim=image.shape[1], like="image")
    labels = check_labels(fn, "labels", labels, image.shape[0])
    alpha = check_range(fn, "alpha", alpha, 0.0, float("inf"), high_open=True)
    sim = torch.sigmoid(text.double() @ image.double().T)
    mean_diagonal = sim.diagonal().mean()
    count = int((sim < mean_diagonal).sum())
    same_label = int((labels[:, None] == labels[None, :]).sum())
    return SemiPushPullTest(
        fires=not count >= alpha * same_label,
        count=count,
        same_label=same_label,
        mean_diagonal=float(mean_diagonal),
    )


def semi_push_pull_condition(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, alpha: float = 2 / 3
) -> bool:
    """True when SPP-SCL's step 2 should run: ``semi_push_pull_test(...).fires`` (see there)."""
    return semi_push_pull_test(image, text, labels, alpha).fires
