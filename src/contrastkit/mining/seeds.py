"""PSQE pseudo-seeds: cluster-proportional seed pairs between two entity sets, and their upkeep.

Unsupervised entity alignment trains on pseudo-seeds (l, r): pairs believed to be the same
entity in the left and the right graph. They are both the positives and, through the batch, the
negatives of the contrastive loss, so PSQE (METHODS 3.9) makes them accurate *and* spread:

1. ``cluster_resample_seeds``: k-means on the fused features of L and R together, then in each
   cluster c a quota k_c = floor(budget (|L_c| + |R_c|) / N) of greedy one-to-one pairs from the
   top ``candidate_factor * k_c`` raw dot products of the side features ([r; a]).
   ``global_top_seeds`` is the usual baseline: the same greedy rule over all entities at once.
2. During training, ``add_unseeded_pairs`` adds the greedy top pairs of still-unseeded entities
   each epoch, and ``row_max_filter`` keeps the seeds that are their row's maximum at the end.
3. ``neighbour_expand`` grows the seeds through neighbour pairs, then filters them again.

Every index is a (S,) int64 tensor of row numbers into the left / right inputs. Similarity
matrices are computed in row blocks and only their top entries are kept, so N of tens of
thousands per side fits in memory.

Reference: PSQE, arXiv 2602.22903.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_generator,
    check_int,
    check_nonzero_rows,
    check_same_device,
    check_tensor,
    is_integer_tensor,
)
from contrastkit.functional import compute_dtype

BLOCK_ENTRIES = 1 << 22  # similarity entries computed at once (16 MiB in fp32)
EXPAND_QUOTAS = (6.0, 3.0)  # seed i of n accepts floor(6 - 3 i/n) neighbour pairs
EXPAND_THRESHOLDS = (0.8, 0.9)  # ... with cosine similarity > 0.8 + 0.1 i/n


class ClusterSeeds(NamedTuple):
    """Seed pairs of ``cluster_resample_seeds`` and how they spread over the clusters."""

    left: torch.Tensor  # (S,) left row of each seed pair, cluster by cluster
    right: torch.Tensor  # (S,) its right partner
    per_cluster: torch.Tensor  # (C,) seed pairs found in each cluster (<= quota)
    quota: torch.Tensor  # (C,) k_c = floor(budget (|L_c| + |R_c|) / N)
    cluster_left: torch.Tensor  # (N_L,) k-means cluster of each left entity
    cluster_right: torch.Tensor  # (N_R,) k-means cluster of each right entity


def cluster_resample_seeds(
    feat_left: torch.Tensor,
    feat_right: torch.Tensor,
    fused_left: torch.Tensor,
    fused_right: torch.Tensor,
    n_clusters: int = 5,
    budget: int = 1000,
    candidate_factor: int = 100,
    generator: torch.Generator | None = None,
) -> ClusterSeeds:
    """PSQE stage 1: seed pairs in proportion to each k-means cluster's size.

    k-means (scikit-learn, k-means++, seeded from ``generator``) on the rows of [fused_left;
    fused_right] gives clusters with L_c, R_c left and right members; N = N_L + N_R. Cluster c
    gets the quota k_c = floor(budget (|L_c| + |R_c|) / N) and its seeds are
    ``greedy_one_to_one`` pairs over the top ``candidate_factor * k_c`` entries of the raw dot
    products S_c = feat_left[L_c] feat_right[R_c]^T (fewer than k_c when those entries run out
    of unused rows and columns, as in the paper).

    Args:
        feat_left, feat_right: (N_L, F), (N_R, F) side features compared by raw dot product
            (PSQE: [relation; attribute] features).
        fused_left, fused_right: (N_L, G), (N_R, G) features to cluster (PSQE: [0.8 v;
            0.1 norm(a); 0.1 norm(r)]).
        n_clusters: k of k-means, 1 <= k <= N.
        budget: total seed budget (>= 1).
        candidate_factor: top entries scanned per seed of quota (>= 1).
        generator: seeds k-means (its random_state); None draws from torch's global RNG.

    Returns:
        ``ClusterSeeds`` (left, right, per_cluster, quota, cluster_left, cluster_right).

    Raises:
        InputError: bad shapes, NaN/inf, bad counts, or scikit-learn missing.
    """
    fn = "cluster_resample_seeds"
    check_same_device(
        fn, feat_left=feat_left, feat_right=feat_right, fused_left=fused_left, fused_right=fused_right
    )
    feat_left = check_embeddings(fn, "feat_left", feat_left, shape="(N_L, F)")
    feat_right = check_embeddings(
        fn, "feat_right", feat_right, shape="(N_R, F)", dim=feat_left.shape[1], like="feat_left"
    )
    fused_left = check_embeddings(
        fn, "fused_left", fused_left, shape="(N_L, G)", rows=feat_left.shape[0], like="feat_left"
    )
    fused_right = check_embeddings(
        fn,
        "fused_right",
        fused_right,
        shape="(N_R, G)",
        rows=feat_right.shape[0],
        dim=fused_left.shape[1],
        like="feat_right / fused_left",
    )
    n_left, n_right = feat_left.shape[0], feat_right.shape[0]
    n_clusters = check_int(fn, "n_clusters", n_clusters, 1, n_left + n_right)
    budget = check_int(fn, "budget", budget, 1)
    candidate_factor = check_int(fn, "candidate_factor", candidate_factor, 1)
    check_generator(fn, generator)
    clusters = _kmeans(fn, torch.cat([fused_left, fused_right]), n_clusters, generator)
    cluster_left, cluster_right = clusters[:n_left], clusters[n_left:]
    device = feat_left.device
    lefts, rights, found, quotas = [], [], [], []
    for c in range(n_clusters):
        members_left = (cluster_left == c).nonzero()[:, 0].to(device)
        members_right = (cluster_right == c).nonzero()[:, 0].to(device)
        quota = budget * (len(members_left) + len(members_right)) // (n_left + n_right)
        rows, cols = _greedy_top(
            _dot_blocks(feat_left[members_left], feat_right[members_right]),
            len(members_left),
            len(members_right),
            quota,
            candidate_factor * quota,
        )
        lefts.append(members_left[rows])
        rights.append(members_right[cols])
        found.append(len(rows))
        quotas.append(quota)
    return ClusterSeeds(
        torch.cat(lefts),
        torch.cat(rights),
        torch.tensor(found),
        torch.tensor(quotas),
        cluster_left,
        cluster_right,
    )


def global_top_seeds(
    feat_left: torch.Tensor, feat_right: torch.Tensor, budget: int = 1000, candidate_factor: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global top-K baseline: greedy one-to-one pairs over the top ``candidate_factor *
    budget`` raw dot products feat_left feat_right^T of all entities (one cluster).

    Args:
        feat_left, feat_right: (N_L, F), (N_R, F) side features.
        budget: seed pairs wanted (>= 1); fewer come back if the candidates run out.
        candidate_factor: top entries scanned per seed (>= 1).

    Returns:
        (left (S,), right (S,)) int64 row indices, in greedy order (best first).
    """
    fn = "global_top_seeds"
    check_same_device(fn, feat_left=feat_left, feat_right=feat_right)
    feat_left = check_embeddings(fn, "feat_left", feat_left, shape="(N_L, F)")
    feat_right = check_embeddings(
        fn, "feat_right", feat_right, shape="(N_R, F)", dim=feat_left.shape[1], like="feat_left"
    )
    budget = check_int(fn, "budget", budget, 1)
    candidate_factor = check_int(fn, "candidate_factor", candidate_factor, 1)
    return _greedy_top(
        _dot_blocks(feat_left, feat_right),
        feat_left.shape[0],
        feat_right.shape[0],
        budget,
        candidate_factor * budget,
    )


def greedy_one_to_one(
    scores: torch.Tensor, k: int, *, candidates: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one matching: walk the entries of ``scores`` from the highest down and keep
    (i, j) when neither row i nor column j is taken yet, until k pairs are kept.

    Ties go to the lower row, then the lower column (except among equal entries that straddle
    the ``candidates`` cut, which the cut keeps in no particular order).

    Args:
        scores: (R, C) finite similarities.
        k: pairs wanted (>= 1); at most min(R, C) come back.
        candidates: scan only the top ``candidates`` entries (PSQE: 100 k); None scans all, which
            gives min(k, R, C) pairs.

    Returns:
        (rows (S,), cols (S,)) int64, in the order they were taken (best first).
    """
    fn = "greedy_one_to_one"
    scores = check_embeddings(fn, "scores", scores, shape="(R, C)")
    k = check_int(fn, "k", k, 1)
    n_rows, n_cols = scores.shape
    if candidates is None:
        candidates = n_rows * n_cols
    candidates = check_int(fn, "candidates", candidates, 1)
    return _greedy_top(_matrix_blocks(scores.to(compute_dtype(scores))), n_rows, n_cols, k, candidates)


def row_max_filter(left: torch.Tensor, right: torch.Tensor, *, mutual: bool = False) -> torch.Tensor:
    """Which seed pairs (left_i, right_i) are the maximum of their row of S = left right^T.

    Seed i is kept when S_ii >= S_ij for every j (PSQE's filter, METHODS 3.9); ``mutual`` also
    asks S_ii >= S_ji (the column maximum, a stricter filter that PSQE does not use). S is
    computed in row blocks; to filter a ready matrix S pass ``left=S, right=torch.eye(n)``.

    Args:
        left, right: (n, D) embeddings of the n seed pairs, row i of each the two sides of seed
            i, used as given (normalise them for cosine).
        mutual: also require the column maximum.

    Returns:
        (n,) bool: True for the seeds to keep.
    """
    fn = "row_max_filter"
    check_same_device(fn, left=left, right=right)
    left = check_embeddings(fn, "left", left, shape="(n, D)")
    right = check_embeddings(
        fn, "right", right, shape="(n, D)", rows=left.shape[0], dim=left.shape[1], like="left"
    )
    mutual = check_flag(fn, "mutual", mutual)
    keep = _is_row_max(left, right)
    return keep & _is_row_max(right, left) if mutual else keep


def add_unseeded_pairs(
    fused_left: torch.Tensor,
    fused_right: torch.Tensor,
    left_idx: torch.Tensor,
    right_idx: torch.Tensor,
    budget: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PSQE's per-epoch seed addition: the exact greedy one-to-one top ``budget`` pairs by cosine
    similarity of the fused embeddings, among the entities that no seed uses yet.

    Args:
        fused_left, fused_right: (N_L, G), (N_R, G) current fused embeddings (normalised inside).
        left_idx, right_idx: (S,) int64 current seed pairs.
        budget: pairs to add (>= 1); fewer when the unseeded entities run out.

    Returns:
        (left (S + A,), right (S + A,)): the seeds, then the A added pairs in greedy order.
    """
    fn = "add_unseeded_pairs"
    fused_left, fused_right = _unit_sides(fn, fused_left, fused_right)
    left_idx, right_idx = _check_pairs(fn, left_idx, right_idx, fused_left.shape[0], fused_right.shape[0])
    budget = check_int(fn, "budget", budget, 1)
    free_left = _unused(fused_left.shape[0], left_idx)
    free_right = _unused(fused_right.shape[0], right_idx)
    rows, cols = _greedy_top(
        _dot_blocks(fused_left[free_left], fused_right[free_right]),
        len(free_left),
        len(free_right),
        budget,
        None,
    )
    return torch.cat([left_idx, free_left[rows]]), torch.cat([right_idx, free_right[cols]])


def neighbour_expand(
    fused_left: torch.Tensor,
    fused_right: torch.Tensor,
    left_idx: torch.Tensor,
    right_idx: torch.Tensor,
    neighbours_left: torch.Tensor,
    neighbours_right: torch.Tensor,
    *,
    mutual: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PSQE stage 3: grow the seeds through their neighbours, then apply ``row_max_filter``.

    Seeds are visited in the order given (i = 0 .. n-1; PSQE's are best first). Seed i = (l, r)
    accepts up to floor(6 - 3 i/n) pairs (a, b) with a a neighbour of l, b a neighbour of r,
    cosine similarity > 0.8 + 0.1 i/n, and neither a nor b used by any seed or accepted pair
    (greedy by similarity). Finally the seeds and accepted pairs whose left side is not the
    maximum of its row of cos(left, right) over that whole set are dropped.

    Args:
        fused_left, fused_right: (N_L, G), (N_R, G) embeddings (normalised inside).
        left_idx, right_idx: (n,) int64 seed pairs, n >= 1.
        neighbours_left, neighbours_right: (N_L, K_L), (N_R, K_R) int64 neighbour lists (graph
            neighbours or k-nearest neighbours), padded with -1.
        mutual: passed to ``row_max_filter`` (also require the column maximum).

    Returns:
        (left, right) int64: the kept pairs, seeds first, then the accepted pairs.
    """
    fn = "neighbour_expand"
    fused_left, fused_right = _unit_sides(fn, fused_left, fused_right)
    n_left, n_right = fused_left.shape[0], fused_right.shape[0]
    left_idx, right_idx = _check_pairs(fn, left_idx, right_idx, n_left, n_right)
    if left_idx.numel() == 0:
        raise InputError(f"{fn}: arguments 'left_idx' and 'right_idx' are empty; expansion grows from seeds.")
    neighbours_left = _check_neighbours(fn, "neighbours_left", neighbours_left, n_left)
    neighbours_right = _check_neighbours(fn, "neighbours_right", neighbours_right, n_right)
    used_left, used_right = set(left_idx.tolist()), set(right_idx.tolist())
    added_left: list[int] = []
    added_right: list[int] = []
    n = len(left_idx)
    (q_start, q_end), (t_start, t_end) = EXPAND_QUOTAS, EXPAND_THRESHOLDS
    for i, (seed_left, seed_right) in enumerate(zip(left_idx.tolist(), right_idx.tolist(), strict=True)):
        quota = math.floor(q_start + (q_end - q_start) * i / n)
        threshold = t_start + (t_end - t_start) * i / n
        near_left = [a for a in neighbours_left[seed_left].tolist() if a >= 0 and a not in used_left]
        near_right = [b for b in neighbours_right[seed_right].tolist() if b >= 0 and b not in used_right]
        if not near_left or not near_right:
            continue
        near_left_t = torch.tensor(near_left, device=fused_left.device)
        near_right_t = torch.tensor(near_right, device=fused_right.device)
        sim = fused_left[near_left_t] @ fused_right[near_right_t].T
        sim = sim.masked_fill(sim <= threshold, float("-inf"))
        n_above = int(torch.isfinite(sim).sum())
        if n_above == 0:
            continue
        rows, cols = _greedy_top(_matrix_blocks(sim), *sim.shape, quota, n_above)
        for a, b in zip(near_left_t[rows].tolist(), near_right_t[cols].tolist(), strict=True):
            used_left.add(a)
            used_right.add(b)
            added_left.append(a)
            added_right.append(b)
    left = torch.cat([left_idx, torch.tensor(added_left, dtype=torch.long, device=left_idx.device)])
    right = torch.cat([right_idx, torch.tensor(added_right, dtype=torch.long, device=right_idx.device)])
    keep = row_max_filter(fused_left[left], fused_right[right], mutual=mutual)
    return left[keep], right[keep]


# ---- blockwise top entries and the greedy walk ---------------------------------------------------

ScoreBlocks = Callable[[int, int], torch.Tensor]  # (start, stop) -> rows start:stop of S


def _dot_blocks(left: torch.Tensor, right: torch.Tensor) -> ScoreBlocks:
    """Row blocks of S = left right^T in the compute dtype."""
    dtype = compute_dtype(left, right)
    left, right = left.to(dtype), right.to(dtype)
    return lambda start, stop: left[start:stop] @ right.T


def _matrix_blocks(scores: torch.Tensor) -> ScoreBlocks:
    """Row blocks of a ready matrix S."""
    return lambda start, stop: scores[start:stop]


def _top_entries(blocks: ScoreBlocks, n_rows: int, n_cols: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m largest entries of S (n_rows, n_cols) as (rows, cols), sorted by value descending,
    then row, then column; S is visited in row blocks of about ``BLOCK_ENTRIES`` entries.
    Entries equal to -inf (excluded) are never returned."""
    block = max(1, BLOCK_ENTRIES // max(n_cols, 1))
    best_values, best_flat = None, None
    for start in range(0, n_rows, block):
        scores = blocks(start, min(start + block, n_rows)).flatten()
        values, flat = scores.topk(min(m, scores.numel()))
        flat = flat + start * n_cols
        if best_values is not None:
            values, flat = torch.cat([best_values, values]), torch.cat([best_flat, flat])
            values, pick = values.topk(min(m, values.numel()))
            flat = flat[pick]
        best_values, best_flat = values, flat
    keep = best_values > float("-inf")
    values, flat = best_values[keep].cpu().numpy(), best_flat[keep].cpu().numpy()
    order = np.lexsort((flat, -values))  # value descending, then row-major position
    flat = torch.from_numpy(flat[order]).to(best_flat.device)
    return flat // n_cols, flat % n_cols


def _greedy_top(
    blocks: ScoreBlocks, n_rows: int, n_cols: int, k: int, candidates: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one pairs over the top ``candidates`` entries of S, at most k of them.

    ``candidates=None`` gives the exact greedy over all of S, scanning the top 4k, 16k, ...
    entries until k pairs are found (greedy on a sorted prefix equals greedy on the whole list
    as long as it fills up within the prefix)."""
    k = min(k, n_rows, n_cols)
    if k == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    total = n_rows * n_cols
    m = min(total, 4 * k if candidates is None else candidates)
    while True:
        rows, cols = _top_entries(blocks, n_rows, n_cols, m)
        kept = _greedy_walk(rows.tolist(), cols.tolist(), k)
        if candidates is not None or len(kept) == k or m >= total or len(rows) < m:
            break
        m = min(total, 4 * m)
    index = torch.tensor(kept, dtype=torch.long, device=rows.device)
    return rows[index], cols[index]


def _greedy_walk(rows: list[int], cols: list[int], k: int) -> list[int]:
    """Positions of the entries kept by the greedy walk (row and column unused), at most k."""
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    kept = []
    for position, (r, c) in enumerate(zip(rows, cols, strict=True)):
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        kept.append(position)
        if len(kept) == k:
            break
    return kept


def _is_row_max(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(n,) bool: <left_i, right_i> >= max_j <left_i, right_j>, in row blocks."""
    blocks = _dot_blocks(left, right)
    n = left.shape[0]
    block = max(1, BLOCK_ENTRIES // n)
    keep = []
    for start in range(0, n, block):
        scores = blocks(start, min(start + block, n))
        own = scores.diagonal(offset=start)
        keep.append(own >= scores.amax(dim=1))
    return torch.cat(keep)


# ---- checks and small helpers --------------------------------------------------------------------


def _kmeans(fn: str, x: torch.Tensor, n_clusters: int, generator: torch.Generator | None) -> torch.Tensor:
    """(N,) int64 k-means++ cluster ids of the rows of x (scikit-learn, seeded from generator)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError as error:
        raise InputError(f"{fn}: needs scikit-learn; pip install 'contrastkit[cluster]'") from error
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    data = x.detach().to(torch.float64).cpu().numpy()
    labels = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed).fit_predict(data)
    return torch.from_numpy(labels).long()


def _unit_sides(fn: str, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_device(fn, fused_left=left, fused_right=right)
    left = check_embeddings(fn, "fused_left", left, shape="(N_L, G)")
    right = check_embeddings(fn, "fused_right", right, shape="(N_R, G)", dim=left.shape[1], like="fused_left")
    check_nonzero_rows(fn, "fused_left", left)
    check_nonzero_rows(fn, "fused_right", right)
    dtype = compute_dtype(left, right)
    return F.normalize(left.detach().to(dtype), dim=1), F.normalize(right.detach().to(dtype), dim=1)


def _check_pairs(
    fn: str, left_idx: object, right_idx: object, n_left: int, n_right: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed pairs: equal-length int64 index vectors in range, no entity used twice per side."""
    checked = []
    for name, idx, n in (("left_idx", left_idx, n_left), ("right_idx", right_idx, n_right)):
        idx = check_tensor(fn, name, idx, floating=False)
        if not is_integer_tensor(idx) or idx.dim() != 1:
            raise InputError(
                f"{fn}: argument '{name}' must be a 1-D integer index tensor; "
                f"got {idx.dtype} of shape {tuple(idx.shape)}."
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise InputError(
                f"{fn}: argument '{name}' holds indices outside [0, {n}); "
                f"got the range [{int(idx.min())}, {int(idx.max())}]."
            )
        if idx.unique().numel() != idx.numel():
            raise InputError(f"{fn}: argument '{name}' uses an entity twice; seed pairs are one-to-one.")
        checked.append(idx.long())
    if checked[0].shape != checked[1].shape:
        raise InputError(
            f"{fn}: 'left_idx' and 'right_idx' must pair up (one right per left); "
            f"got shapes {tuple(checked[0].shape)} and {tuple(checked[1].shape)}."
        )
    return checked[0], checked[1]


def _check_neighbours(fn: str, name: str, neighbours: object, n: int) -> torch.Tensor:
    neighbours = check_tensor(fn, name, neighbours, floating=False)
    if not is_integer_tensor(neighbours) or neighbours.dim() != 2 or neighbours.shape[0] != n:
        raise InputError(
            f"{fn}: argument '{name}' must be a ({n}, K) integer tensor of neighbour rows padded with -1; "
            f"got {neighbours.dtype} {tuple(neighbours.shape)}."
        )
    if neighbours.numel() and (int(neighbours.min()) < -1 or int(neighbours.max()) >= n):
        raise InputError(f"{fn}: argument '{name}' holds indices outside [-1, {n}); -1 is the padding.")
    return neighbours


def _unused(n: int, used: torch.Tensor) -> torch.Tensor:
    """(n - |used|,) the indices in [0, n) that ``used`` does not hold."""
    free = torch.ones(n, dtype=torch.bool, device=used.device)
    free[used] = False
    return free.nonzero()[:, 0]
