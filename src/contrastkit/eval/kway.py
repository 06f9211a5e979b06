"""k-way zero-shot identification: the true class against k - 1 random other classes (AVDE)."""

from __future__ import annotations

import torch

from contrastkit.errors import InputError, check_same_device
from contrastkit.eval._checks import check_chunk_size, check_emb, check_index, check_int, check_ks, unit_pair


@torch.no_grad()
def kway_zero_shot(
    pred: torch.Tensor,
    class_emb: torch.Tensor,
    labels: torch.Tensor,
    k: int = 200,
    topk: tuple[int, ...] = (1, 5),
    n_draws: int = 10,
    generator: torch.Generator | None = None,
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-K accuracy of k-way cosine classification, averaged over random distractor draws.

    For draw r and trial i, the candidates are labels[i] and the k - 1 other classes with the
    smallest keys u_r[i, c], where u_r = torch.rand(N, C, generator=generator) (drawn in row
    chunks of ``chunk_size``; the same stream as one (N, C) draw): k - 1 distinct classes drawn
    uniformly without replacement, independently per trial and per draw. With the pessimistic
    rank (a tie counts as a miss, as ``zero_shot_accuracy``)

        rank_ri = 1 + #{c in candidates_ri, c != y_i : cos(p_i, w_c) >= cos(p_i, w_{y_i})}
        topK = (1 / (n_draws N)) sum_{r, i} [rank_ri <= K]

    k = C gives ordinary top-K classification over all classes.

    Args:
        pred: (N, D) predicted embeddings, one per trial.
        class_emb: (C, D) one embedding per class (e.g. the test images' own embeddings, with
            labels = arange(N), for instance-level identification).
        labels: (N,) int class ids in [0, C).
        k: candidates per trial, 2 <= k <= C.
        topk: cutoffs K, each <= k.
        n_draws: independent distractor draws averaged over (>= 1).
        generator: CPU ``torch.Generator`` for the draws; None uses one seeded with 0.
        chunk_size: trials scored at once (memory ~ chunk_size x C).

    Returns:
        {"top{K}": fraction in [0, 1] for K in topk} (the convention of ``zero_shot_accuracy``).

    Reference: AVDE, arXiv 2602.22555 (k = 200; the number of draws is our choice, 10).
    """
    fn = "kway_zero_shot"
    check_same_device(fn, pred=pred, class_emb=class_emb, labels=labels)
    pred = check_emb(fn, "pred", pred)
    class_emb = check_emb(fn, "class_emb", class_emb, dim=pred.shape[1], like="pred")
    n, c = pred.shape[0], class_emb.shape[0]
    labels = check_index(fn, "labels", labels, n, c, "class ids (rows of 'class_emb')").long()
    k = check_int(fn, "k", k, minimum=2, hint=" It counts the true class plus k - 1 distractors.")
    if k > c:
        raise InputError(
            f"{fn}: argument 'k' must be <= the number of classes {c} (rows of 'class_emb'); got {k}. "
            f"Lower k or add classes."
        )
    topk = check_ks(fn, "topk", topk)
    if max(topk) > k:
        raise InputError(f"{fn}: argument 'topk' must hold cutoffs <= k = {k}; got {topk}. Lower them.")
    n_draws = check_int(fn, "n_draws", n_draws)
    chunk_size = check_chunk_size(fn, chunk_size)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise InputError(
            f"{fn}: argument 'generator' must be a CPU torch.Generator or None; got {generator!r}."
        )
    p, w = unit_pair(pred, class_emb)
    hits = torch.zeros(len(topk), dtype=torch.float64)
    cutoffs = torch.tensor(topk)
    for _ in range(n_draws):
        for s in range(0, n, chunk_size):
            block, rows = p[s : s + chunk_size] @ w.T, labels[s : s + chunk_size]
            keys = torch.rand(block.shape, generator=generator).to(block.device)
            keys.scatter_(1, rows[:, None], 2.0)  # keys are < 1: the true class is never a distractor
            distractors = keys.topk(k - 1, dim=1, largest=False).indices
            true = block.gather(1, rows[:, None])
            rank = 1 + (block.gather(1, distractors) >= true).sum(dim=1)
            hits += (rank.cpu()[:, None] <= cutoffs[None, :]).sum(dim=0).double()
    return {f"top{kk}": float(h) / (n_draws * n) for kk, h in zip(topk, hits.tolist(), strict=True)}
