"""Information-retrieval metrics (BEIR / pytrec_eval definitions) over an exact chunked top-k."""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

from contrastkit.errors import InputError, check_flag, check_same_device
from contrastkit.eval._checks import check_chunk_size, check_emb, check_ks, unit_pair
from contrastkit.eval.retrieval import _chunked_top_k
from contrastkit.functional import compute_dtype


def _check_ids(
    fn: str, name: str, ids: object, n: int, rows_of: str
) -> tuple[list[object], dict[object, int]]:
    """n unique ids (any iterable but a string) -> (the list, {id: row})."""
    if not isinstance(ids, Iterable) or isinstance(ids, str | bytes):
        raise InputError(
            f"{fn}: argument '{name}' must be a list of ids, one per row of '{rows_of}'; "
            f"got {type(ids).__name__}."
        )
    ids = list(ids)
    if len(ids) != n:
        raise InputError(
            f"{fn}: argument '{name}' must hold one id per row of '{rows_of}' ({n}); got {len(ids)} ids."
        )
    index = {i: row for row, i in enumerate(ids)}
    if len(index) != n:
        dup = next(i for i, count in Counter(ids).items() if count > 1)
        raise InputError(f"{fn}: argument '{name}' must hold unique ids; {dup!r} appears more than once.")
    return ids, index


def _check_qrels(fn: str, qrels: object) -> Mapping[object, Mapping[object, int]]:
    if not isinstance(qrels, Mapping) or not qrels:
        got = "an empty dict" if isinstance(qrels, Mapping) else type(qrels).__name__
        raise InputError(
            f"{fn}: argument 'qrels' must be a non-empty dict query-id -> {{corpus-id: relevance int}} "
            f"(as load_beir returns); got {got}."
        )
    for qid, judged in qrels.items():
        if not isinstance(judged, Mapping):
            raise InputError(
                f"{fn}: argument 'qrels' must map each query id to a dict {{corpus-id: relevance}}; "
                f"qrels[{qid!r}] is a {type(judged).__name__}."
            )
        for did, rel in judged.items():
            if isinstance(rel, bool) or not isinstance(rel, numbers.Integral):
                raise InputError(
                    f"{fn}: argument 'qrels' must hold integer relevance grades; qrels[{qid!r}][{did!r}] "
                    f"= {rel!r}. Convert the grades with int()."
                )
    return qrels


@torch.no_grad()
def ir_metrics(
    query_emb: torch.Tensor,
    corpus_emb: torch.Tensor,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Iterable[str],
    corpus_ids: Iterable[str],
    ks: tuple[int, ...] = (1, 10, 100),
    chunk_size: int = 1024,
    *,
    normalize: bool = True,
) -> dict[str, float]:
    """MRR@10, nDCG@k, Recall@k and MAP@k of dense retrieval, as BEIR reports them (pytrec_eval).

    Each query ranks the whole corpus by cosine similarity (dot product with ``normalize=False``),
    exactly, ``chunk_size`` queries at a time; equal scores are ordered by corpus row (lower first;
    trec_eval would order them by document id). With rel(d) the grade in ``qrels`` and R the set of
    documents with rel > 0 (judged documents missing from ``corpus_ids`` still count in |R|):

        Recall@k = |R ∩ top_k| / |R|
        MAP@k    = (1/|R|) sum_{r <= k, d_r in R} precision@r          (trec_eval map_cut)
        nDCG@k   = sum_{r <= k} g(d_r) / log2(r + 1) / IDCG@k,  g = max(rel, 0) (linear gain)
        MRR@10   = 1 / (rank of the first d in R), 0 if none is in the top 10

    averaged over the queries of ``query_ids`` that have at least one relevant document; the others
    are skipped (``n_skipped``). Queries of ``qrels`` missing from ``query_ids`` are ignored.

    Args:
        query_emb: (Q, D); corpus_emb: (N, D).
        qrels: query id -> {corpus id: integer relevance grade}.
        query_ids: Q ids, the row order of query_emb; corpus_ids: N ids, the row order of corpus_emb.
        ks: cutoffs k (nDCG@10 and MRR@10 are always reported).
        chunk_size: query rows scored at once (memory ~ chunk_size x N).

    Returns:
        {"MRR@10", "nDCG@k" for k in ks and 10, "Recall@k" and "MAP@k" for k in ks, "n_queries"
        (queries evaluated), "n_skipped" (queries of query_ids without a relevant document)}.
    """
    fn = "ir_metrics"
    check_same_device(fn, query_emb=query_emb, corpus_emb=corpus_emb)
    query_emb = check_emb(fn, "query_emb", query_emb)
    corpus_emb = check_emb(fn, "corpus_emb", corpus_emb, dim=query_emb.shape[1], like="query_emb")
    qrels = _check_qrels(fn, qrels)
    query_ids, _ = _check_ids(fn, "query_ids", query_ids, query_emb.shape[0], "query_emb")
    corpus_ids, doc_row = _check_ids(fn, "corpus_ids", corpus_ids, corpus_emb.shape[0], "corpus_emb")
    ks = check_ks(fn, "ks", ks)
    chunk_size = check_chunk_size(fn, chunk_size)
    normalize = check_flag(fn, "normalize", normalize)

    rows, n_rel, ideal, keys, grades = [], [], [], [], []
    n_docs = corpus_emb.shape[0]
    for row, qid in enumerate(query_ids):
        relevant = {d: r for d, r in qrels.get(qid, {}).items() if r > 0}
        if not relevant:
            continue
        j = len(rows)
        rows.append(row)
        n_rel.append(len(relevant))
        ideal.append(sorted(relevant.values(), reverse=True))
        for d, r in relevant.items():
            if d in doc_row:
                keys.append(j * n_docs + doc_row[d])
                grades.append(r)
    if not rows:
        raise InputError(
            f"{fn}: no query of 'query_ids' has a relevant document (grade > 0) in 'qrels' (first "
            f"query ids: {query_ids[:3]}, first qrels ids: {list(qrels)[:3]}). Check that the ids "
            f"match in type and spelling (BEIR ids are strings)."
        )
    if not keys:
        raise InputError(
            f"{fn}: none of the relevant documents in 'qrels' is in 'corpus_ids' (first corpus ids: "
            f"{corpus_ids[:3]}). Check that the ids match in type and spelling (BEIR ids are strings)."
        )

    if normalize:
        q, g = unit_pair(query_emb[rows], corpus_emb)
    else:
        dtype = compute_dtype(query_emb, corpus_emb)
        q, g = query_emb[rows].detach().to(dtype), corpus_emb.detach().to(dtype)
    depth = min(max(*ks, 10), n_docs)
    _, top = _chunked_top_k(q, g, depth, chunk_size)
    gains = _gains(top.cpu(), torch.tensor(keys), torch.tensor(grades, dtype=torch.float64), n_docs)
    return _metrics(gains, torch.tensor(n_rel, dtype=torch.float64), ideal, ks, len(query_ids) - len(rows))


def _gains(top: torch.Tensor, keys: torch.Tensor, grades: torch.Tensor, n_docs: int) -> torch.Tensor:
    """(E, depth) relevance grade of each retrieved document (0 if unjudged), via sorted keys."""
    keys, order = keys.sort()
    grades = grades[order]
    wanted = torch.arange(top.shape[0])[:, None] * n_docs + top
    pos = torch.searchsorted(keys, wanted).clamp_max(keys.numel() - 1)
    return torch.where(keys[pos] == wanted, grades[pos], torch.zeros((), dtype=torch.float64))


def _metrics(
    gains: torch.Tensor, n_rel: torch.Tensor, ideal: list[list[int]], ks: tuple[int, ...], skipped: int
) -> dict[str, float]:
    e, depth = gains.shape
    cutoffs = sorted({*ks, 10})
    hit = (gains > 0).double()
    ranks = torch.arange(1, max(depth, cutoffs[-1]) + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1)
    precision_at = hit.cumsum(dim=1) / ranks[:depth]
    best = torch.zeros(e, cutoffs[-1], dtype=torch.float64)  # ideal gains, sorted, zero-padded
    for j, row in enumerate(ideal):
        row = row[: cutoffs[-1]]
        best[j, : len(row)] = torch.tensor(row, dtype=torch.float64)
    top10 = hit[:, :10]
    first = torch.where(top10.any(dim=1), 1.0 / (top10.argmax(dim=1).double() + 1.0), 0.0)
    out: dict[str, float] = {"MRR@10": float(first.mean())}
    for k in cutoffs:
        dcg = (gains[:, :k] * discount[: min(k, depth)]).sum(dim=1)
        idcg = (best[:, :k] * discount[:k]).sum(dim=1)
        out[f"nDCG@{k}"] = float((dcg / idcg).mean())
    for k in ks:
        out[f"Recall@{k}"] = float((hit[:, :k].sum(dim=1) / n_rel).mean())
        out[f"MAP@{k}"] = float(((hit[:, :k] * precision_at[:, :k]).sum(dim=1) / n_rel).mean())
    out["n_queries"] = e
    out["n_skipped"] = skipped
    return out
