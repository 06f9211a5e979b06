"""Hard-negative mining: first-stage top-k, optional teacher rerank, filters, sampling.

The pipeline of WebFAQ 2.0 (arXiv 2602.17327, METHODS 3.8) with the filters and parameter names
of sentence-transformers' ``mine_hard_negatives`` (NV-Retriever, arXiv 2407.15831).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_choice,
    check_flag,
    check_generator,
    check_int,
    check_range,
)
from contrastkit.eval.retrieval import _topk_rows
from contrastkit.mining.first_stage import (
    BM25Index,
    EmbedFn,
    _progress,
    dense_top_k,
    embed_texts,
)

#: A teacher: (query texts, document texts), equally long -> (n,) score of each pair.
Scorer = Callable[[list[str], list[str]], torch.Tensor]

#: Filter names, in the order they are applied (a candidate counts under the first that drops it).
FILTERS = (
    "positive",
    "duplicate",
    "fn_rel",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
    "range",
)


@dataclass
class MinedNegatives:
    """Mined rows: one per (query, positive) pair that kept at least one negative.

    Row r: ``queries[query_index[r]]``, its positive ``corpus[positive_index[r]]`` and negatives
    ``corpus[j] for j in negative_index[r]`` (teacher score descending), with the teacher scores
    ``positive_score[r]`` and ``negative_scores[r]``. ``dropped[f]`` counts the candidates that
    filter ``f`` removed (summed over queries), ``skipped_queries`` the query rows without a
    positive, ``rows_without_negatives`` the (query, positive) pairs dropped for lack of negatives
    and ``short_rows`` the kept rows with fewer than ``num_negatives`` negatives.
    """

    queries: list[str]
    corpus: list[str]
    num_negatives: int
    query_index: list[int] = field(default_factory=list)
    positive_index: list[int] = field(default_factory=list)
    negative_index: list[list[int]] = field(default_factory=list)
    positive_score: list[float] = field(default_factory=list)
    negative_scores: list[list[float]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    skipped_queries: list[int] = field(default_factory=list)
    rows_without_negatives: int = 0

    def __len__(self) -> int:
        return len(self.query_index)

    @property
    def short_rows(self) -> int:
        """Rows with fewer than ``num_negatives`` negatives."""
        return sum(len(n) < self.num_negatives for n in self.negative_index)

    def records(self, layout: str = "list") -> list[dict]:
        """The rows as dicts; see ``contrastkit.mining.jsonl.to_records`` for the two layouts."""
        from contrastkit.mining.jsonl import to_records

        return to_records(self, layout)

    def to_jsonl(self, path: str | Path, layout: str = "list") -> int:
        """Write the rows as JSON lines (``layout`` "list" or "n-tuple"); returns the rows written."""
        from contrastkit.mining.jsonl import write_mined_jsonl

        return write_mined_jsonl(self.records(layout), path)

    def summary(self) -> str:
        """Counts in one paragraph: rows, negatives, skipped queries, what each filter dropped."""
        n_neg = sum(len(n) for n in self.negative_index)
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v)
        return (
            f"{len(self)} rows, {n_neg} negatives ({self.short_rows} rows with fewer than "
            f"{self.num_negatives}); {self.rows_without_negatives} (query, positive) pairs left without "
            f"negatives; {len(self.skipped_queries)} queries without positives skipped; candidates "
            f"dropped: {dropped or 'none'}."
        )


def _check_texts(fn: str, name: str, texts: object) -> list[str]:
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InputError(f"{fn}: argument '{name}' must be a list of strings; got {type(texts).__name__}.")
    if len(texts) == 0:
        raise InputError(f"{fn}: argument '{name}' is empty; mining needs at least one text.")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(
            f"{fn}: argument '{name}' must hold strings; item {bad} is a {type(texts[bad]).__name__}."
        )
    return list(texts)


def _check_positives(fn: str, positives: object, n_queries: int, n_docs: int) -> dict[int, list[int]]:
    """{query row: sorted unique corpus rows} from a mapping or (query row, corpus row) pairs."""
    hint = " Map query and document ids to row indices of 'queries' and 'corpus' first."
    if isinstance(positives, Mapping):
        pairs = [(q, d) for q, docs in positives.items() for d in _as_list(fn, q, docs)]
    elif isinstance(positives, Iterable) and not isinstance(positives, str | bytes):
        pairs = list(positives)
    else:
        raise InputError(
            f"{fn}: argument 'positives' must be a dict query row -> corpus rows or a list of (query row, "
            f"corpus row) pairs; got {type(positives).__name__}."
        )
    out: dict[int, set[int]] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise InputError(
                f"{fn}: argument 'positives' must hold (query row, corpus row) pairs; got {pair!r}."
            )
        q, d = pair
        for name, value, n, what in (("query", q, n_queries, "queries"), ("corpus", d, n_docs, "corpus")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < n:
                raise InputError(
                    f"{fn}: argument 'positives' names {name} row {value!r}, outside [0, {n}) of "
                    f"'{what}'.{hint}"
                )
        out.setdefault(int(q), set()).add(int(d))
    return {q: sorted(docs) for q, docs in out.items()}


def _as_list(fn: str, query: object, docs: object) -> list:
    if isinstance(docs, str | bytes) or not isinstance(docs, Iterable):
        raise InputError(
            f"{fn}: argument 'positives' must map each query row to a list of corpus rows; "
            f"positives[{query!r}] is a {type(docs).__name__}."
        )
    return list(docs)


def _check_optional_float(fn: str, name: str, value: object, *, minimum: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{fn}: argument '{name}' must be a finite float or None; got {value!r}.")
    if minimum is not None and value < minimum:
        raise InputError(
            f"{fn}: argument '{name}' must be >= {minimum} (or None to turn it off); got {value}."
        )
    return float(value)


def _check_window(
    fn: str, range_min: object, range_max: object, num_negatives: object
) -> tuple[int, int | None, int]:
    if isinstance(range_min, bool) or not isinstance(range_min, int) or range_min < 0:
        raise InputError(f"{fn}: argument 'range_min' must be an int >= 0; got {range_min!r}.")
    num_negatives = check_int(fn, "num_negatives", num_negatives, 1)
    if range_max is not None:
        if isinstance(range_max, bool) or not isinstance(range_max, int) or range_max <= range_min:
            raise InputError(
                f"{fn}: argument 'range_max' must be None or an int > range_min ({range_min}); "
                f"got {range_max!r}."
            )
        if num_negatives > range_max - range_min:
            raise InputError(
                f"{fn}: argument 'num_negatives' ({num_negatives}) must fit in the window of "
                f"range_max - range_min = {range_max - range_min} candidates; lower it or widen the window."
            )
    return range_min, range_max, num_negatives


def mine_hard_negatives(
    queries: Sequence[str],
    corpus: Sequence[str],
    positives: Mapping[int, Sequence[int]] | Iterable[tuple[int, int]],
    *,
    retriever: str | EmbedFn = "bm25",
    top_k: int = 200,
    scorer: Scorer | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | str | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    fn_rel: float | None = 0.95,
    num_negatives: int = 3,
    sampling: str = "top",
    remove_duplicates: bool = True,
    batch_size: int = 256,
    use_faiss: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> MinedNegatives:
    """Mine hard negatives for (query, positive) pairs from ``corpus``.

    Pipeline (WebFAQ 2.0, arXiv 2602.17327; filters as sentence-transformers, arXiv 2407.15831):

    1. First stage: the ``top_k`` corpus rows of each query (capped at the corpus size) by BM25
       (``retriever="bm25"``, bm25s) or by cosine similarity of ``retriever(texts) -> (n, D)``
       embeddings (exact blocked top-k, or FAISS ``IndexFlatIP`` with ``use_faiss=True``).
    2. Teacher scores T(q, d): ``scorer(query_texts, doc_texts) -> (n,)`` on every candidate and
       every positive (a cross-encoder, or ``embedding_scorer(embed)``); without a scorer, T is the
       first-stage score.
    3. Filters, with T_p the lowest teacher score among the query's positives (as
       sentence-transformers: the hardest positive sets the bar):
       - the query's positives are never negatives;
       - ``remove_duplicates``: drop candidates whose text equals a positive's text, and repeats of
         an earlier candidate's text (texts compared after ``strip()``);
       - ``fn_rel`` = gamma (default 0.95, METHODS 3.8): drop T >= T_p - (1 - gamma)|T_p|
         (= gamma T_p for T_p > 0): likely false negatives;
       - ``absolute_margin`` m (METHODS' ``fn_abs``): drop T > T_p - m;
       - ``relative_margin`` m: drop T > T_p - m |T_p|;
       - ``max_score``: drop T > max_score; ``min_score``: drop T < min_score, or with
         ``min_score="median"`` below the median teacher score of the query's candidates
         (positives excluded) — METHODS 3.8's suggestion; default None (off);
       - ``range_min`` / ``range_max``: of the survivors ordered by T descending, keep positions
         [range_min, range_max) (as sentence-transformers).
    4. ``sampling="top"`` keeps the first ``num_negatives`` of that window; ``"random"`` draws
       ``num_negatives`` of them uniformly without replacement with ``generator``, then orders them
       by T.
    5. One row per (query, positive) pair sharing the query's negatives; pairs left without a
       negative are dropped and counted. Queries without a positive are skipped and counted
       (``skipped_queries``); if no query has one, ``NoPositivePairsError``.

    Memory stays bounded: ``batch_size`` queries go through all steps at once (the BM25 scores
    of a block are (batch_size, N); the dense search scores batch_size x batch_size blocks), and
    ``retriever``/``scorer`` are called on at most ``batch_size`` texts / pairs at a time.

    Differences from sentence-transformers: queries and corpus are given as rows (no text
    deduplication of the inputs), ``top_k`` bounds the first stage independently of ``range_max``,
    the teacher scores every candidate whenever a scorer is given (ST only rescores when a
    margin/score filter is set), and rows keep however many negatives survived (ST's n-tuple layout
    drops short rows; ``records("n-tuple")`` does so too).

    Args:
        queries: Q query texts. corpus: N document texts.
        positives: {query row: [corpus rows]} or [(query row, corpus row), ...].
        retriever: "bm25" or an embedding callable list[str] -> (n, D) tensor.
        top_k: first-stage candidates per query (default 200).
        scorer: optional teacher (pairs -> scores).
        generator: the torch.Generator of ``sampling="random"``.
        progress: show tqdm bars.

    Returns:
        MinedNegatives (rows, teacher scores, filter counts; ``.to_jsonl``, ``.records``).

    Example:
        >>> mined = mine_hard_negatives(["what is bm25"], docs, {0: [3]}, top_k=50)  # doctest: +SKIP
        >>> mined.to_jsonl("negatives.jsonl")  # doctest: +SKIP
    """
    fn = "mine_hard_negatives"
    queries = _check_texts(fn, "queries", queries)
    corpus = _check_texts(fn, "corpus", corpus)
    positive_rows = _check_positives(fn, positives, len(queries), len(corpus))
    mined_rows = [q for q in range(len(queries)) if positive_rows.get(q)]
    if not mined_rows:
        raise NoPositivePairsError(
            f"{fn}: no query has a positive in 'positives'; nothing to mine. Pass at least one "
            f"(query row, corpus row) pair."
        )
    if not (retriever == "bm25" or callable(retriever)):
        raise InputError(
            f"{fn}: argument 'retriever' must be 'bm25' or an embedding callable list[str] -> (n, D) "
            f"tensor; got {retriever!r}."
        )
    if scorer is not None and not callable(scorer):
        raise InputError(
            f"{fn}: argument 'scorer' must be None or a callable (query_texts, doc_texts) -> (n,) "
            f"scores; got {type(scorer).__name__}."
        )
    top_k = min(check_int(fn, "top_k", top_k, 1), len(corpus))
    range_min, range_max, num_negatives = _check_window(fn, range_min, range_max, num_negatives)
    max_score = _check_optional_float(fn, "max_score", max_score)
    if not (min_score is None or min_score == "median"):
        min_score = _check_optional_float(fn, "min_score", min_score)
    absolute_margin = _check_optional_float(fn, "absolute_margin", absolute_margin)
    relative_margin = _check_optional_float(fn, "relative_margin", relative_margin, minimum=0.0)
    if fn_rel is not None:
        fn_rel = check_range(fn, "fn_rel", fn_rel, 0.0, 1.0)
    sampling = check_choice(fn, "sampling", sampling, ("top", "random"))
    remove_duplicates = check_flag(fn, "remove_duplicates", remove_duplicates)
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    use_faiss = check_flag(fn, "use_faiss", use_faiss)
    check_generator(fn, generator)
    progress = check_flag(fn, "progress", progress)

    search = _first_stage(fn, retriever, queries, corpus, top_k, batch_size, use_faiss, progress)
    canonical = _canonical_text_ids(corpus) if remove_duplicates else None
    out = MinedNegatives(queries, corpus, num_negatives)
    out.skipped_queries = [q for q in range(len(queries)) if not positive_rows.get(q)]
    options = dict(
        fn_rel=fn_rel,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        max_score=max_score,
        min_score=min_score,
        range_min=range_min,
        range_max=range_max,
    )
    for start in _progress(range(0, len(mined_rows), batch_size), progress, "mining"):
        block = mined_rows[start : start + batch_size]
        first_scores, cand, first_pos = search(block, [positive_rows[q] for q in block])
        if scorer is None:
            teacher_cand, teacher_pos = first_scores, first_pos
        else:
            teacher_cand, teacher_pos = _teacher_scores(
                fn, scorer, queries, corpus, block, cand, positive_rows, batch_size
            )
        for i, q in enumerate(block):
            pos = positive_rows[q]
            negs, neg_scores = _select(
                cand[i], teacher_cand[i], pos, teacher_pos[i], canonical, options, out.dropped
            )
            negs, neg_scores = _sample(negs, neg_scores, num_negatives, sampling, generator)
            for p, tp in zip(pos, teacher_pos[i].tolist(), strict=True):
                if not negs:
                    out.rows_without_negatives += 1
                    continue
                out.query_index.append(q)
                out.positive_index.append(p)
                out.negative_index.append(list(negs))
                out.positive_score.append(float(tp))
                out.negative_scores.append(list(neg_scores))
    return out


SearchFn = Callable[[list[int], list[list[int]]], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]


def _first_stage(
    fn: str,
    retriever: str | EmbedFn,
    queries: list[str],
    corpus: list[str],
    k: int,
    batch_size: int,
    use_faiss: bool,
    progress: bool,
) -> SearchFn:
    """A search over a block of query rows -> (scores (c, k), corpus rows (c, k), positive scores)."""
    if retriever == "bm25":
        index = BM25Index(corpus)

        def bm25_search(block, pos):
            scores = index.scores([queries[q] for q in block])
            vals, idx = _topk_rows(scores, k)
            return vals, idx, [scores[i, p] for i, p in enumerate(pos)]

        return bm25_search
    corpus_emb = _unit(embed_texts(fn, "retriever", retriever, corpus, batch_size, progress=progress))

    def dense_search(block, pos):
        texts = [queries[q] for q in block]
        query_emb = _unit(embed_texts(fn, "retriever", retriever, texts, batch_size))
        if query_emb.shape[1] != corpus_emb.shape[1]:
            raise InputError(
                f"{fn}: argument 'retriever' embeds queries in {query_emb.shape[1]} dimensions but the "
                f"corpus in {corpus_emb.shape[1]}; use one encoder for both."
            )
        vals, idx = dense_top_k(query_emb, corpus_emb, k, batch_size=batch_size, use_faiss=use_faiss)
        return vals, idx, [corpus_emb[p] @ query_emb[i] for i, p in enumerate(pos)]

    return dense_search


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    """Unit rows in at least float32, the precision ``dense_top_k`` scores candidates in, so the
    positives' scores (which the margin filters compare against) are computed alike."""
    return F.normalize(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), dim=1)


def _teacher_scores(
    fn: str,
    scorer: Scorer,
    queries: list[str],
    corpus: list[str],
    block: list[int],
    cand: torch.Tensor,
    positive_rows: dict[int, list[int]],
    batch_size: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Teacher scores of every candidate (c, k) and every positive, ``batch_size`` pairs per call."""
    docs = [row + positive_rows[q] for q, row in zip(block, cand.tolist(), strict=True)]
    pairs = [(queries[q], corpus[d]) for q, row in zip(block, docs, strict=True) for d in row]
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        out = scorer([q for q, _ in chunk], [d for _, d in chunk])
        out = torch.as_tensor(out).detach().reshape(-1) if not isinstance(out, torch.Tensor) else out.detach()
        if out.shape != (len(chunk),) or not out.is_floating_point() or not bool(torch.isfinite(out).all()):
            raise InputError(
                f"{fn}: argument 'scorer' must return {len(chunk)} finite float scores, one per pair, as a "
                f"({len(chunk)},) tensor; got {out.dtype} of shape {tuple(out.shape)}."
            )
        scores.append(out.double().cpu())
    flat = torch.cat(scores).split([len(row) for row in docs])
    k = cand.shape[1]
    return torch.stack([s[:k] for s in flat]), [s[k:] for s in flat]


def _canonical_text_ids(corpus: list[str]) -> list[int]:
    """For each corpus row, the first row holding the same (stripped) text."""
    first: dict[str, int] = {}
    return [first.setdefault(text.strip(), row) for row, text in enumerate(corpus)]


def _select(
    cand: torch.Tensor,
    teacher: torch.Tensor,
    positives: list[int],
    teacher_pos: torch.Tensor,
    canonical: list[int] | None,
    options: dict,
    dropped: dict[str, int],
) -> tuple[list[int], list[float]]:
    """The candidates that pass every filter, by teacher score descending, cut to the rank window."""
    rows, scores = cand.tolist(), teacher.double().tolist()
    order = sorted(range(len(rows)), key=lambda j: -scores[j])  # stable: ties keep first-stage rank
    t_p = min(teacher_pos.double().tolist())
    pos_set = set(positives)
    min_score = options["min_score"]
    if min_score == "median":
        rest = [s for d, s in zip(rows, scores, strict=True) if d not in pos_set]
        min_score = float(torch.tensor(rest, dtype=torch.float64).quantile(0.5)) if rest else None
    seen = {canonical[p] for p in positives} if canonical is not None else set()
    gamma, abs_m, rel_m = options["fn_rel"], options["absolute_margin"], options["relative_margin"]
    max_score = options["max_score"]
    kept_rows, kept_scores = [], []
    for j in order:
        d, s = rows[j], scores[j]
        if d in pos_set:
            reason = "positive"
        elif canonical is not None and canonical[d] in seen:
            reason = "duplicate"
        elif gamma is not None and s >= t_p - (1.0 - gamma) * abs(t_p):
            reason = "fn_rel"
        elif abs_m is not None and s > t_p - abs_m:
            reason = "absolute_margin"
        elif rel_m is not None and s > t_p - rel_m * abs(t_p):
            reason = "relative_margin"
        elif max_score is not None and s > max_score:
            reason = "max_score"
        elif min_score is not None and s < min_score:
            reason = "min_score"
        else:
            reason = None
            kept_rows.append(d)
            kept_scores.append(s)
            if canonical is not None:
                seen.add(canonical[d])
        if reason is not None:
            dropped[reason] += 1
    window = slice(options["range_min"], options["range_max"])
    dropped["range"] += len(kept_rows) - len(kept_rows[window])
    return kept_rows[window], kept_scores[window]


def _sample(
    rows: list[int], scores: list[float], n: int, sampling: str, generator: torch.Generator | None
) -> tuple[list[int], list[float]]:
    """``n`` of the ordered candidates: the first n, or n drawn uniformly and kept in order."""
    if len(rows) <= n:
        return rows, scores
    if sampling == "top":
        return rows[:n], scores[:n]
    chosen = sorted(torch.randperm(len(rows), generator=generator)[:n].tolist())
    return [rows[j] for j in chosen], [scores[j] for j in chosen]
