"""First-stage retrieval for mining: exact blocked dense top-k, FAISS, and BM25 (bm25s).

Every retriever returns ``(scores, indices)``, both (Q, k), rows sorted by score descending with
equal scores ordered by corpus row (lower first), so a run is deterministic. Memory is bounded by
``batch_size``: the dense search scores ``batch_size`` queries against ``batch_size`` corpus rows
at a time and merges running top-k lists; BM25 scores ``batch_size`` queries at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from contrastkit.errors import InputError, check_embeddings, check_flag, check_int, check_same_device
from contrastkit.eval.retrieval import _topk_rows

#: An embedding function: a list of texts -> (n, D) float tensor (one row per text).
EmbedFn = Callable[[list[str]], torch.Tensor]


def embed_texts(
    fn: str, name: str, embed: EmbedFn, texts: Sequence[str], batch_size: int, *, progress: bool = False
) -> torch.Tensor:
    """(n, D) float embeddings of ``texts``, calling ``embed`` on blocks of at most ``batch_size``."""
    if not callable(embed):
        raise InputError(
            f"{fn}: argument '{name}' must be a callable list[str] -> (n, D) tensor; "
            f"got {type(embed).__name__}."
        )
    blocks = []
    for start in _progress(range(0, len(texts), batch_size), progress, f"embedding {name}"):
        chunk = list(texts[start : start + batch_size])
        out = embed(chunk)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        blocks.append(check_embeddings(fn, f"{name}(texts)", out, shape="(n, D)", rows=len(chunk)).detach())
    return torch.cat(blocks)


def _merge_top_k(
    best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor, offset: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a running top-k with the scores (c, b) of corpus rows offset..offset+b-1.

    Candidates are laid out in ascending corpus row (running ones first: all lie in earlier
    blocks), so ``_topk_rows`` breaking ties by column also breaks them by corpus row.
    """
    vals, idx = _topk_rows(scores, min(k, scores.shape[1]))
    idx = idx + offset
    if best is not None:
        vals, idx = torch.cat([best[0], vals], dim=1), torch.cat([best[1], idx], dim=1)
    order = idx.argsort(dim=1)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    top_vals, top_cols = _topk_rows(vals, min(k, vals.shape[1]))
    return top_vals, idx.gather(1, top_cols)


@torch.no_grad()
def dense_top_k(
    query_emb: torch.Tensor,
    corpus_emb: torch.Tensor,
    k: int,
    *,
    batch_size: int = 1024,
    use_faiss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k corpus rows by dot product, in (batch_size x batch_size) score blocks.

    Args:
        query_emb: (Q, D); corpus_emb: (N, D). Normalise them first for cosine similarity.
        k: candidates per query, 1 <= k <= N.
        batch_size: query rows and corpus rows scored at once (peak memory ~ batch_size^2 + Q*k).
        use_faiss: search a FAISS ``IndexFlatIP`` instead (exact too; needs the ``faiss`` extra).
            FAISS keeps the whole corpus in its index and may order exact ties differently.

    Returns:
        scores (Q, k) float, descending; indices (Q, k) int64, ties ordered by corpus row.
    """
    fn = "dense_top_k"
    check_same_device(fn, query_emb=query_emb, corpus_emb=corpus_emb)
    query_emb = check_embeddings(fn, "query_emb", query_emb, shape="(Q, D)")
    corpus_emb = check_embeddings(
        fn, "corpus_emb", corpus_emb, shape="(N, D)", dim=query_emb.shape[1], like="query_emb"
    )
    n = corpus_emb.shape[0]
    k = check_int(fn, "k", k, 1)
    if k > n:
        raise InputError(f"{fn}: argument 'k' must be <= the corpus size {n}; got {k}. Lower top_k.")
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    if check_flag(fn, "use_faiss", use_faiss):
        return _faiss_top_k(query_emb, corpus_emb, k, batch_size)
    dtype = torch.float64 if torch.float64 in (query_emb.dtype, corpus_emb.dtype) else torch.float32
    q, g = query_emb.to(dtype), corpus_emb.to(dtype)
    out_vals, out_idx = [], []
    for qs in range(0, q.shape[0], batch_size):
        best = None
        for gs in range(0, n, batch_size):
            best = _merge_top_k(best, q[qs : qs + batch_size] @ g[gs : gs + batch_size].T, gs, k)
        out_vals.append(best[0])
        out_idx.append(best[1])
    return torch.cat(out_vals), torch.cat(out_idx)


def _faiss_top_k(
    query_emb: torch.Tensor, corpus_emb: torch.Tensor, k: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as err:
        raise InputError(
            "dense_top_k: use_faiss=True needs FAISS; install the extra: pip install 'contrastkit[faiss]' "
            "(or pass use_faiss=False for the exact torch search)."
        ) from err
    index = faiss.IndexFlatIP(corpus_emb.shape[1])
    index.add(corpus_emb.float().cpu().contiguous().numpy())
    vals, idx = [], []
    for start in range(0, query_emb.shape[0], batch_size):
        chunk = query_emb[start : start + batch_size].float().cpu().contiguous().numpy()
        v, i = index.search(chunk, k)
        vals.append(torch.from_numpy(v))
        idx.append(torch.from_numpy(i).long())
    return torch.cat(vals), torch.cat(idx)


class BM25Index:
    """A BM25 index (bm25s, Lucene variant) over ``corpus``; lowercase, English stopwords removed.

    score(q, d) = sum_{t in q} idf(t) * tf(t,d) / (tf(t,d) + k1 (1 - b + b |d| / avgdl)),
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)); k1 = 1.5, b = 0.75 (bm25s defaults). Lucene
    drops the constant factor (k1 + 1) of the classic formula; rankings are the same.
    Reference: Robertson & Zaragoza (2009); bm25s, arXiv 2407.03618.
    """

    def __init__(self, corpus: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        try:
            import bm25s
        except ImportError as err:
            raise InputError(
                "BM25Index: the BM25 retriever needs bm25s; install the extra: pip install "
                "'contrastkit[retrieval]' (or pass a dense retriever: an embedding callable)."
            ) from err
        self._bm25s = bm25s
        self.n_docs = len(corpus)
        tokens = bm25s.tokenize(list(corpus), stopwords="en", show_progress=False)
        if not tokens.vocab:
            raise InputError(
                f"BM25Index: the {len(corpus)} corpus text(s) hold no word besides English stopwords; "
                f"BM25 has nothing to index. Check the corpus (empty texts?) or use a dense retriever."
            )
        self._index = bm25s.BM25(k1=k1, b=b)
        self._index.index(tokens, show_progress=False)

    def scores(self, queries: Sequence[str]) -> torch.Tensor:
        """(len(queries), N) float32 BM25 scores; query words unseen in the corpus score 0."""
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        vocab = self._index.vocab_dict
        known = [[t for t in words if t in vocab] for words in tokens]
        none = np.zeros(self.n_docs, dtype=np.float32)
        rows = [self._index.get_scores(words) if words else none for words in known]
        return torch.from_numpy(np.stack(rows).astype(np.float32)).reshape(len(queries), self.n_docs)

    def top_k(
        self, queries: Sequence[str], k: int, *, batch_size: int = 256, progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact BM25 top-k (Q, k), ties ordered by corpus row, ``batch_size`` queries at a time."""
        vals, idx = [], []
        for start in _progress(range(0, len(queries), batch_size), progress, "BM25 search"):
            v, i = _topk_rows(self.scores(queries[start : start + batch_size]), k)
            vals.append(v)
            idx.append(i)
        return torch.cat(vals), torch.cat(idx)


def _progress(iterable: range, enabled: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch")
