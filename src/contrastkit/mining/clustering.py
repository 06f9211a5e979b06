"""Agglomerative clustering under cannot-link constraints, for merging tracklet fragments.

The tracklet re-identification schedule (METHODS 3.22): train with ``tracklet_supcon`` on
tracklet labels; every 5 epochs embed all frames, call ``merge_tracklets`` (tracklet-mean
embeddings, cosine average linkage, cannot-link on co-occurring tracklets) and train on the
merged labels (``tracklet_supcon(..., merged_id=...)``) until the next re-labelling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_labels,
    check_nonzero_rows,
    check_pairs,
    check_same_device,
    check_scalar,
)
from contrastkit.functional import group_sums

LINKAGES = ("average", "single", "complete")


def constrained_cluster(
    embeddings: torch.Tensor,
    cannot_link: torch.Tensor | None,
    threshold: float,
    linkage: str = "average",
) -> torch.Tensor:
    """Agglomerative clustering by cosine distance that never merges a cannot-link pair.

    Starting from singletons, repeatedly merge the two clusters A, B with the smallest linkage
    distance among the pairs that hold no cannot-link pair (a in A, b in B), while it is
    < ``threshold`` (strict, as scikit-learn's ``distance_threshold``). With d = 1 - cos:

        average:  d(A, B) = mean_{a in A, b in B} d(a, b)   (UPGMA)
        single:   min,   complete: max

    Ties go to the pair of lowest cluster indices. Without constraints this equals
    ``sklearn.cluster.AgglomerativeClustering(n_clusters=None, metric="cosine",
    linkage=linkage, distance_threshold=threshold)`` up to the numbering of the clusters.

    Args:
        embeddings: (N, D) rows (tracklet means); normalised inside (an all-zero row raises).
        cannot_link: (K, 2) integer row-index pairs in [0, N) that must end in different
            clusters, or None.
        threshold: distance below which clusters merge, finite and >= 0 (0 merges nothing).
        linkage: ``"average"``, ``"single"`` or ``"complete"``.

    Returns:
        (N,) long cluster ids 0..C-1, numbered in order of each cluster's first row.

    Cost: O(N^2) memory and O(N^3) time in the worst case (N a few thousand at most).

    Reference: constrained agglomerative clustering, Davidson & Ravi 2005 (cannot-link);
    METHODS 3.22 (arXiv 2602.15962).
    """
    fn = "constrained_cluster"
    check_same_device(fn, embeddings=embeddings, cannot_link=cannot_link)
    x = check_embeddings(fn, "embeddings", embeddings)
    check_nonzero_rows(fn, "embeddings", x)
    threshold = float(check_scalar(fn, "threshold", threshold, minimum=0.0))
    check_choice(fn, "linkage", linkage, LINKAGES)
    n = x.shape[0]
    x = F.normalize(x.detach().double(), dim=1)
    cos = x @ x.T
    dist = (1 - (cos + cos.T) / 2).clamp(min=0.0)  # exactly symmetric
    blocked = torch.zeros(n, n, dtype=torch.bool, device=x.device)
    if cannot_link is not None:
        pairs = check_pairs(fn, "cannot_link", cannot_link).long()  # uint8 would index as a mask
        if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= n):
            raise InputError(
                f"{fn}: argument 'cannot_link' holds row indices outside [0, {n}); got min "
                f"{int(pairs.min())}, max {int(pairs.max())}. Index the rows of 'embeddings'."
            )
        blocked[pairs[:, 0], pairs[:, 1]] = True
        blocked = blocked | blocked.T
    return _agglomerate(dist, blocked, threshold, linkage)


def _agglomerate(dist: torch.Tensor, blocked: torch.Tensor, threshold: float, linkage: str) -> torch.Tensor:
    """Merge loop over (N, N) cluster distances (Lance-Williams updates); returns cluster ids."""
    n = dist.shape[0]
    owner = torch.arange(n, device=dist.device)  # row -> the cluster slot it lives in
    size = torch.ones(n, dtype=dist.dtype, device=dist.device)
    alive = torch.ones(n, dtype=torch.bool, device=dist.device)
    upper = torch.ones(n, n, dtype=torch.bool, device=dist.device).triu(1)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    while True:
        allowed = upper & alive[:, None] & alive[None, :] & ~blocked
        masked = torch.where(allowed, dist, inf)
        best = int(masked.argmin())  # first minimum in row-major order: lowest (i, j)
        i, j = divmod(best, n)
        if not float(masked[i, j]) < threshold:
            break
        if linkage == "average":
            merged = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
        elif linkage == "single":
            merged = torch.minimum(dist[i], dist[j])
        else:
            merged = torch.maximum(dist[i], dist[j])
        dist[i], dist[:, i] = merged, merged
        blocked[i] = blocked[i] | blocked[j]
        blocked[:, i] = blocked[i]
        size[i] += size[j]
        alive[j] = False
        owner[owner == j] = i
    return _number_by_first_row(owner)


def _number_by_first_row(ids: torch.Tensor) -> torch.Tensor:
    """Renumber cluster ids 0..C-1 in order of their first occurrence."""
    order: dict[int, int] = {}
    for value in ids.tolist():
        order.setdefault(value, len(order))
    return torch.tensor([order[v] for v in ids.tolist()], dtype=torch.long, device=ids.device)


def cooccurring_pairs(frame_id: torch.Tensor, tracklet_id: torch.Tensor) -> torch.Tensor:
    """The (K, 2) distinct tracklet-id pairs (a < b) seen in one video frame.

    Args:
        frame_id: (N,) integer id of the video frame each crop comes from.
        tracklet_id: (N,) integer tracklet id of each crop.

    Returns:
        (K, 2) long, sorted rows; the ``cooccur`` argument of ``tracklet_supcon`` and (for
        tracklet ids 0..T-1) the ``cannot_link`` of ``constrained_cluster``.
    """
    fn = "cooccurring_pairs"
    check_same_device(fn, frame_id=frame_id, tracklet_id=tracklet_id)
    frame_id = check_labels(fn, "frame_id", frame_id, _length(fn, "frame_id", frame_id))
    tracklet_id = check_labels(fn, "tracklet_id", tracklet_id, frame_id.shape[0])
    same_frame = frame_id[:, None] == frame_id[None, :]
    a, b = tracklet_id[:, None].expand_as(same_frame), tracklet_id[None, :].expand_as(same_frame)
    keep = same_frame & (a < b)
    return torch.unique(torch.stack([a[keep], b[keep]], dim=1).long(), dim=0).view(-1, 2)


def merge_tracklets(
    frame_embeddings: torch.Tensor,
    tracklet_id: torch.Tensor,
    cooccur: torch.Tensor | None,
    threshold: float,
    linkage: str = "average",
) -> torch.Tensor:
    """Re-label frames by clustering their tracklets: the merged identity of every frame.

    Tracklet means mu_t = normalize(mean of normalize(z_i) over frames i of tracklet t) are
    clustered with ``constrained_cluster`` (cannot-link = ``cooccur``); frame i gets the cluster
    of its tracklet.

    Args:
        frame_embeddings: (N, D) frame embeddings.
        tracklet_id: (N,) integer tracklet ids (any integers).
        cooccur: (K, 2) tracklet-id pairs that must stay apart (``cooccurring_pairs``), or None.
        threshold, linkage: as ``constrained_cluster``.

    Returns:
        (N,) long merged labels 0..C-1 (the ``merged_id`` of ``tracklet_supcon``).
    """
    fn = "merge_tracklets"
    check_same_device(fn, frame_embeddings=frame_embeddings, tracklet_id=tracklet_id, cooccur=cooccur)
    z = check_embeddings(fn, "frame_embeddings", frame_embeddings)
    check_nonzero_rows(fn, "frame_embeddings", z)
    tracklet_id = check_labels(fn, "tracklet_id", tracklet_id, z.shape[0])
    sums, _, row_of_frame = group_sums(F.normalize(z.detach().double(), dim=1), tracklet_id)
    cancelled = sums.abs().amax(dim=1) == 0
    if bool(cancelled.any()):
        tracklet = torch.unique(tracklet_id)[cancelled][0].item()
        raise InputError(
            f"{fn}: the unit frame embeddings of tracklet {tracklet} in 'frame_embeddings' sum to 0, so "
            f"its mean has no direction to cluster by. Check the encoder or drop that tracklet."
        )
    cannot_link = None
    if cooccur is not None:
        pairs = check_pairs(fn, "cooccur", cooccur)
        ids = torch.unique(tracklet_id)
        known = torch.isin(pairs, ids).all(dim=1)  # pairs of tracklets absent here constrain nothing
        cannot_link = torch.searchsorted(ids, pairs[known].to(ids.dtype).contiguous())
    clusters = constrained_cluster(sums, cannot_link, threshold, linkage)
    return clusters[row_of_frame]


def _length(fn: str, name: str, t: object) -> int:
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"{fn}: argument '{name}' must be a 1-D integer tensor (N,); got {shape}.")
    return t.shape[0]
