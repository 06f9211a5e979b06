"""Exact, chunked cross-modal retrieval: Recall@K, mean/median rank, and top-k neighbours.

Scores are cosine similarities (inputs are normalised inside) in the compute dtype (float64 if
an input is float64, else float32). Only ``chunk_size`` query rows are scored at once, so a
100k x 100k similarity matrix never exists.
"""

from __future__ import annotations

import torch

from contrastkit.errors import InputError, check_flag, check_same_device
from contrastkit.eval._checks import check_chunk_size, check_emb, check_index, check_int, check_ks, unit_pair
from contrastkit.functional import compute_dtype


def _topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k per row of (c, N) scores, ties broken by the lower column index."""
    n = scores.shape[1]
    top = torch.topk(scores, min(k + 1, n), dim=1, sorted=True)
    idx = top.indices[:, :k].clone()
    if k < n:
        # the k-th score also sits outside the top k: choose among its ties by index, on those rows only
        crowded = (top.values[:, k] == top.values[:, k - 1]).nonzero()[:, 0]
        if crowded.numel():
            sub, kth = scores[crowded], top.values[crowded, k - 1 : k]
            greater, equal = sub > kth, sub == kth
            room = k - greater.sum(dim=1, keepdim=True, dtype=torch.int32)
            keep = greater | (equal & (equal.cumsum(dim=1, dtype=torch.int32) <= room))
            idx[crowded] = keep.nonzero()[:, 1].view(-1, k)
    idx = idx.sort(dim=1).values
    vals, order = torch.sort(scores.gather(1, idx), dim=1, descending=True, stable=True)
    return vals, idx.gather(1, order)


def _chunked_top_k(
    q: torch.Tensor, g: torch.Tensor, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of q @ g.T for prepared (checked, normalised) inputs, chunk_size query rows at a time."""
    parts = [_topk_rows(q[s : s + chunk_size] @ g.T, k) for s in range(0, q.shape[0], chunk_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def top_k_neighbours(
    query: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    chunk_size: int = 1024,
    *,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k gallery rows for every query, scored ``chunk_size`` queries at a time.

    Args:
        query: (Q, D) embeddings.
        gallery: (N, D) embeddings.
        k: neighbours per query, 1 <= k <= N.
        chunk_size: query rows scored at once (memory ~ chunk_size x N).
        normalize: True scores by cosine similarity, False by the raw dot product.

    Returns:
        scores (Q, k), descending, and indices (Q, k) int64 into ``gallery``. Equal scores are
        ordered by gallery index (lower first), so the result is deterministic.
    """
    fn = "top_k_neighbours"
    check_same_device(fn, query=query, gallery=gallery)
    query = check_emb(fn, "query", query)
    gallery = check_emb(fn, "gallery", gallery, dim=query.shape[1], like="query")
    n = gallery.shape[0]
    k = check_int(fn, "k", k, hint=f" It counts neighbours per query (at most the gallery size {n}).")
    if k > n:
        raise InputError(f"{fn}: argument 'k' must be <= the gallery size {n}; got {k}. Lower k.")
    chunk_size = check_chunk_size(fn, chunk_size)
    if check_flag(fn, "normalize", normalize):
        q, g = unit_pair(query, gallery)
    else:
        dtype = compute_dtype(query, gallery)
        q, g = query.detach().to(dtype), gallery.detach().to(dtype)
    return _chunked_top_k(q, g, k, chunk_size)


def retrieval_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of the positives in both directions, exact and pessimistic on ties.

    Args:
        image_emb: (I, D) image embeddings.
        text_emb: (T, D) caption embeddings.
        text_to_image: (T,) int64, the image row of each caption, in [0, I); every image needs
            at least one caption (several are fine).
        chunk_size: query rows scored at once.

    Returns:
        i2t (I,) int64: for each image, the rank of its best-ranked caption among all T captions,
            1 + #{captions of other images with s >= s_best}; its own other captions do not count.
        t2i (T,) int64: for each caption, the rank of its image among all I images,
            1 + #{other images with s >= s_pos}.

    Ties count against the positive (a candidate scoring exactly the positive's score is ranked
    ahead of it), so a collapsed model cannot score well.
    """
    return _ranks("retrieval_ranks", image_emb, text_emb, text_to_image, chunk_size)


@torch.no_grad()
def _ranks(
    fn: str, image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    check_same_device(fn, image_emb=image_emb, text_emb=text_emb, text_to_image=text_to_image)
    image_emb = check_emb(fn, "image_emb", image_emb)
    text_emb = check_emb(fn, "text_emb", text_emb, dim=image_emb.shape[1], like="image_emb")
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    owner = check_index(fn, "text_to_image", text_to_image, n_txt, n_img, "image row indices").long()
    captions = torch.bincount(owner, minlength=n_img)
    if bool((captions == 0).any()):
        missing = (captions == 0).nonzero()[:5, 0].tolist()
        raise InputError(
            f"{fn}: every image needs at least one caption in 'text_to_image'; "
            f"{int((captions == 0).sum())} image(s) have none (first: {missing}). "
            f"Drop those rows from 'image_emb' (and re-index text_to_image)."
        )
    chunk_size = check_chunk_size(fn, chunk_size)
    img, txt = unit_pair(image_emb, text_emb)

    t2i = positive_ranks(txt, img, owner, chunk_size)

    i2t = torch.empty(n_img, dtype=torch.long, device=img.device)
    for s in range(0, n_img, chunk_size):
        scores = img[s : s + chunk_size] @ txt.T  # (c, T)
        rows = torch.arange(s, s + scores.shape[0], device=img.device)
        positive = owner[None, :] == rows[:, None]
        best = scores.masked_fill(~positive, -torch.inf).amax(dim=1, keepdim=True)
        i2t[s : s + chunk_size] = 1 + ((scores >= best) & ~positive).sum(dim=1, dtype=torch.int32)
    return i2t, t2i


def positive_ranks(
    query: torch.Tensor, gallery: torch.Tensor, target: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """1-based rank of each query's target among all gallery rows, ties counted against it.

    query: (Q, D), gallery: (G, D) (already normalised), target: (Q,) gallery indices -> (Q,)
    int64: the number of gallery rows scoring >= the target (the target itself is the +1).
    """
    ranks = torch.empty(query.shape[0], dtype=torch.long, device=query.device)
    for s in range(0, query.shape[0], chunk_size):
        scores = query[s : s + chunk_size] @ gallery.T
        positive = scores.gather(1, target[s : s + chunk_size, None])
        ranks[s : s + chunk_size] = (scores >= positive).sum(dim=1)
    return ranks


def _summary(prefix: str, ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    r = ranks.double()
    out = {f"{prefix}_R@{k}": float((r <= k).double().mean()) for k in ks}
    out[f"{prefix}_mean_rank"] = float(r.mean())
    r = r.sort().values
    n = r.numel()
    out[f"{prefix}_median_rank"] = float((r[(n - 1) // 2] + r[n // 2]) / 2)
    return out


def paired_retrieval(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image<->text retrieval metrics with the standard multi-caption protocol (cosine scores).

    image->text: an image is a hit at K if any of its captions is in its top K (the rank of its
    best-ranked caption is <= K); text->image: a caption is a hit at K if its image is in its top K.
    Ties are pessimistic and exact: rank = 1 + the number of candidates, other than the positive(s)
    of the query, that score >= the positive's score (see ``retrieval_ranks``).

    Args:
        image_emb: (I, D); text_emb: (T, D); text_to_image: (T,) int64 in [0, I).
        ks: cutoffs K for Recall@K.
        chunk_size: query rows scored at once (memory ~ chunk_size x max(I, T)).

    Returns:
        {"i2t_R@K" for K in ks, "i2t_mean_rank", "i2t_median_rank", "t2i_R@K" ..., "t2i_mean_rank",
        "t2i_median_rank"}; R@K is a fraction in [0, 1], ranks are 1-based, the median of an even
        count is the mean of the two middle ranks.

    Example:
        >>> img = torch.eye(3); txt = torch.eye(3).repeat(2, 1)
        >>> paired_retrieval(img, txt, torch.tensor([0, 1, 2, 0, 1, 2]))["i2t_R@1"]
        1.0
    """
    fn = "paired_retrieval"
    ks = check_ks(fn, "ks", ks)
    i2t, t2i = _ranks(fn, image_emb, text_emb, text_to_image, chunk_size)
    return {**_summary("i2t", i2t, ks), **_summary("t2i", t2i, ks)}
