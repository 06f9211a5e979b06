"""Tracklet SupCon: identity positives from tracking, co-occurring tracklets as sure negatives."""

from __future__ import annotations

import torch

from contrastkit.errors import (
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_labels,
    check_pairs,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import REDUCTIONS
from contrastkit.losses.supervised import supcon


def tracklet_supcon(
    z: torch.Tensor,
    tracklet_id: torch.Tensor,
    cooccur: torch.Tensor | None = None,
    temperature: float = 0.1,
    reduction: str = "mean",
    *,
    merged_id: torch.Tensor | None = None,
) -> torch.Tensor:
    """SupCon (L_out) whose positives are the other frames of an anchor's (merged) tracklet.

    With tracklet t(i) and merged label m(i) = merged_id[i] (default m = t) of frame i:

        P(a) = {p != a : m(p) = m(a) and (t(a), t(p)) not co-occurring},  A(a) = {j != a}
        L_a  = -(1/|P(a)|) sum_{p in P(a)} [ l_ap - LSE_{j in A(a)} l_aj ],  l = <z_a, z_j>/tau

    Two tracklets seen in the same video frame are different individuals: their frames are
    always candidates of the denominator and never positives, even when a clustering
    (``merged_id``) put them in one identity. With plain tracklet labels they are negatives
    already, so ``cooccur`` matters once fragments are merged.

    Args:
        z: (N, D) frame embeddings, or (N, V, D) with V augmented views (other views of the same
            frame are positives); used as given (normalise them first).
        tracklet_id: (N,) integer tracklet id of each frame (any integers).
        cooccur: (K, 2) integer tensor of tracklet-id pairs seen together in some frame (order
            within a pair does not matter; ids absent from the batch are allowed), or None.
            ``contrastkit.mining.clustering.cooccurring_pairs`` builds it from frame ids.
        temperature: tau > 0 (0.1, METHODS 3.22).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per anchor, NaN without a positive).
        merged_id: (N,) integer identity labels after re-labelling (e.g. ``merge_tracklets``);
            None uses the tracklet ids.

    Raises ``NoPositivePairsError`` when no anchor has a positive (every tracklet a singleton).

    Reference: METHODS 3.22 [R] (arXiv 2602.15962); SupCon, Khosla et al. 2020, arXiv 2004.11362.
    """
    fn = "tracklet_supcon"
    check_same_device(fn, z=z, tracklet_id=tracklet_id, cooccur=cooccur, merged_id=merged_id)
    z = check_embeddings(fn, "z", z, shape="(N, D) or (N, V, D)", ndims=(2, 3))
    temperature = check_temperature(fn, "temperature", temperature)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    n = z.shape[0]
    tracklet_id = check_labels(fn, "tracklet_id", tracklet_id, n)
    labels = tracklet_id if merged_id is None else check_labels(fn, "merged_id", merged_id, n)
    positive = labels[:, None] == labels[None, :]
    if cooccur is not None:
        positive = positive & ~_cooccurring_frames(fn, tracklet_id, cooccur)
    try:
        return supcon(z, None, temperature, positive_mask=positive, reduction=reduction)
    except NoPositivePairsError as err:
        raise NoPositivePairsError(
            f"{fn}: no frame has a positive (another frame of its tracklet or merged identity that "
            f"does not co-occur with it) and a negative, so the loss is undefined. Sample several "
            f"frames per tracklet and several tracklets per batch."
        ) from err


def _cooccurring_frames(fn: str, tracklet_id: torch.Tensor, cooccur: object) -> torch.Tensor:
    """(N, N) bool: frames i, j belong to a co-occurring tracklet pair (symmetric). Only the pairs
    of tracklets present in the batch are kept, so a data-set-wide ``cooccur`` costs O(U^2) for the
    batch's U tracklets, not O(T^2) for all of them."""
    pairs = check_pairs(fn, "cooccur", cooccur).long()
    ids, frame = torch.unique(tracklet_id, return_inverse=True)
    present = torch.isin(pairs, ids).all(dim=1)
    pair_index = torch.searchsorted(ids, pairs[present])
    linked = torch.zeros(ids.shape[0], ids.shape[0], dtype=torch.bool, device=tracklet_id.device)
    linked[pair_index[:, 0], pair_index[:, 1]] = True
    linked = linked | linked.T
    return linked[frame][:, frame]
