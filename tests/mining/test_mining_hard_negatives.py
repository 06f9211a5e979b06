"""Hard-negative mining: first stages against brute force, every filter keeping and dropping,
sampling, bounded blocks, and a loop-based reference of the whole pipeline."""

from __future__ import annotations

import math

import pytest
import torch

import contrastkit.mining.first_stage as first_stage
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.mining.first_stage import BM25Index, dense_top_k
from contrastkit.mining.hard_negatives import mine_hard_negatives
from contrastkit.mining.teachers import embedding_scorer


def _lookup_embed(table: dict[str, list[float]], calls: list[int] | None = None):
    def embed(texts):
        if calls is not None:
            calls.append(len(texts))
        return torch.tensor([table[t] for t in texts], dtype=torch.float64)

    return embed


def _lookup_scorer(table: dict[tuple[str, str], float], calls: list[int] | None = None):
    def score(queries, docs):
        if calls is not None:
            calls.append(len(queries))
        return torch.tensor([table[(q, d)] for q, d in zip(queries, docs, strict=True)], dtype=torch.float64)

    return score


def _brute_top_k(q: torch.Tensor, g: torch.Tensor, k: int) -> list[list[int]]:
    out = []
    for i in range(q.shape[0]):
        scores = [sum(float(q[i, d]) * float(g[j, d]) for d in range(q.shape[1])) for j in range(g.shape[0])]
        out.append(sorted(range(g.shape[0]), key=lambda j: (-scores[j], j))[:k])
    return out


# ---------------------------------------------------------------- first stages


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_dense_top_k_equals_the_full_matrix_with_ties_by_row(batch_size):
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-2, 3, (7, 4), generator=gen).double()  # small integers: many exact ties
    g = torch.randint(-2, 3, (11, 4), generator=gen).double()
    vals, idx = dense_top_k(q, g, 5, batch_size=batch_size)
    assert idx.tolist() == _brute_top_k(q, g, 5)
    torch.testing.assert_close(vals, (q @ g.T).gather(1, idx), rtol=1e-12, atol=0)


def test_dense_top_k_float32_agrees_with_float64_and_bf16_is_finite():
    gen = torch.Generator().manual_seed(1)
    q, g = (
        torch.randn(6, 8, generator=gen, dtype=torch.float64),
        torch.randn(20, 8, generator=gen, dtype=torch.float64),
    )
    v64, i64 = dense_top_k(q, g, 4, batch_size=3)
    v32, i32 = dense_top_k(q.float(), g.float(), 4, batch_size=3)
    assert torch.equal(i32, i64)
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-6)
    v16, _ = dense_top_k(q.bfloat16(), g.bfloat16(), 4, batch_size=3)
    assert torch.isfinite(v16).all()


def test_dense_top_k_scores_blocks_of_at_most_batch_size(monkeypatch):
    shapes = []
    merge = first_stage._merge_top_k

    def spy(best, scores, offset, k):
        shapes.append(tuple(scores.shape))
        return merge(best, scores, offset, k)

    monkeypatch.setattr(first_stage, "_merge_top_k", spy)
    dense_top_k(torch.randn(10, 3), torch.randn(23, 3), 4, batch_size=4)
    assert shapes and max(r for r, _ in shapes) <= 4 and max(c for _, c in shapes) <= 4
    assert sum(c for r, c in shapes if r == 4) == 23 * 2  # every corpus row seen by each full block


def test_faiss_search_equals_the_torch_search():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(2)
    q, g = torch.randn(9, 16, generator=gen), torch.randn(50, 16, generator=gen)
    v_t, i_t = dense_top_k(q, g, 7, batch_size=4)
    v_f, i_f = dense_top_k(q, g, 7, batch_size=4, use_faiss=True)
    assert torch.equal(i_f, i_t)
    torch.testing.assert_close(v_f, v_t, rtol=1e-5, atol=1e-5)


def _bm25_reference(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    n, avgdl = len(docs), sum(len(d) for d in docs) / len(docs)
    out = []
    for d in docs:
        s = 0.0
        for t in query:
            df = sum(t in doc for doc in docs)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = d.count(t)
            s += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))  # Lucene: no (k1 + 1) factor
        out.append(s)
    return out


def test_bm25_ranks_a_tiny_corpus_as_the_formula_says():
    pytest.importorskip("bm25s")
    corpus = ["red apples and green apples", "green tea", "apples", "the red car", "tea with apples"]
    index = BM25Index(corpus)
    vals, idx = index.top_k(["red apples", "unknownword"], 5, batch_size=1)
    tokens = [
        ["red", "apples", "green", "apples"],
        ["green", "tea"],
        ["apples"],
        ["red", "car"],
        ["tea", "apples"],
    ]
    want = _bm25_reference(["red", "apples"], tokens)
    # hand check: the doc with both words first; then "the red car" before "apples", since "red"
    # (in 2 of 5 texts) is rarer than "apples" (in 3) and both texts are short
    assert idx[0].tolist()[:3] == [0, 3, 2]
    assert idx[0].tolist() == sorted(range(5), key=lambda j: (-want[j], j))
    torch.testing.assert_close(
        vals[0].double(), torch.tensor(sorted(want, reverse=True), dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    assert vals[1].tolist() == [0.0] * 5 and idx[1].tolist() == [0, 1, 2, 3, 4]  # all tied: by row


# ---------------------------------------------------------------- filters, one by one

QUERY = "q"
DOCS = ["pos", "d1", "d2", "d3", "d4", "d5"]
TEACHER = {"pos": 1.0, "d1": 0.97, "d2": 0.9, "d3": 0.5, "d4": 0.2, "d5": 0.1}


def _mine_one(corpus=DOCS, teacher=TEACHER, positives=None, **options):
    table = {(QUERY, d): teacher[d] for d in teacher}
    emb = {QUERY: [1.0, 0.0]} | {d: [teacher[d], 1.0 - teacher[d]] for d in teacher}
    options = {"fn_rel": None, "num_negatives": 6} | options
    return mine_hard_negatives(
        [QUERY],
        corpus,
        positives or {0: [0]},
        retriever=_lookup_embed(emb),
        scorer=_lookup_scorer(table),
        **options,
    )


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({}, ["d1", "d2", "d3", "d4", "d5"]),
        ({"fn_rel": 0.95}, ["d2", "d3", "d4", "d5"]),  # 0.97 >= 0.95 * 1.0 drops, 0.9 stays
        ({"fn_rel": 0.9}, ["d3", "d4", "d5"]),  # the bound itself (>=) drops
        ({"absolute_margin": 0.2}, ["d3", "d4", "d5"]),  # > 1 - 0.2 drops
        ({"absolute_margin": 0.1}, ["d2", "d3", "d4", "d5"]),  # 0.9 = 1 - 0.1 stays (strict >)
        ({"relative_margin": 0.4}, ["d3", "d4", "d5"]),
        ({"relative_margin": 0.05}, ["d2", "d3", "d4", "d5"]),  # > 0.95 drops
        ({"relative_margin": 0.02}, ["d1", "d2", "d3", "d4", "d5"]),
        ({"max_score": 0.5}, ["d3", "d4", "d5"]),  # 0.5 itself stays
        ({"min_score": 0.2}, ["d1", "d2", "d3", "d4"]),  # 0.2 itself stays
        ({"min_score": "median"}, ["d1", "d2", "d3"]),  # median of the candidates = 0.5
        ({"range_min": 1}, ["d2", "d3", "d4", "d5"]),
        ({"range_min": 1, "range_max": 3, "num_negatives": 2}, ["d2", "d3"]),
        ({"num_negatives": 2}, ["d1", "d2"]),
    ],
)
def test_each_filter_keeps_and_drops(options, kept):
    mined = _mine_one(**options)
    assert [DOCS[j] for j in mined.negative_index[0]] == kept
    assert mined.negative_scores[0] == [TEACHER[d] for d in kept]  # teacher scores kept, in order
    assert mined.positive_score == [1.0]


def test_duplicates_of_the_positive_and_of_earlier_negatives_are_dropped():
    corpus = ["pos", "d1", "d2", " pos ", "d2"]
    teacher = {"pos": 1.0, "d1": 0.5, "d2": 0.4, " pos ": 0.6}
    kept = _mine_one(corpus, teacher)
    assert kept.negative_index[0] == [1, 2] and kept.dropped["duplicate"] == 2
    all_kept = _mine_one(corpus, teacher, remove_duplicates=False)
    assert sorted(all_kept.negative_index[0]) == [1, 2, 3, 4]


def test_other_positives_are_never_negatives_and_each_pair_gets_a_row():
    mined = _mine_one(positives={0: [0, 2]}, absolute_margin=0.0)
    # two rows (one per positive), same negatives; the hardest positive (0.9) sets the margin
    assert mined.query_index == [0, 0] and mined.positive_index == [0, 2]
    assert mined.positive_score == [1.0, 0.9]
    assert mined.negative_index[0] == mined.negative_index[1] == [3, 4, 5]  # d1 (0.97 > 0.9) dropped


def test_random_sampling_draws_from_the_window_with_the_generator():
    draws = set()
    for seed in range(8):
        mined = _mine_one(num_negatives=2, sampling="random", generator=torch.Generator().manual_seed(seed))
        again = _mine_one(num_negatives=2, sampling="random", generator=torch.Generator().manual_seed(seed))
        assert mined.negative_index == again.negative_index
        scores = mined.negative_scores[0]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        draws.add(tuple(mined.negative_index[0]))
    assert len(draws) > 1


def test_queries_without_positives_are_skipped_and_counted():
    emb = _lookup_embed({"a": [1.0, 0.0], "b": [0.0, 1.0], "x": [1.0, 0.1], "y": [0.1, 1.0], "z": [1.0, 1.0]})
    mined = mine_hard_negatives(["a", "b"], ["x", "y", "z"], [(0, 0)], retriever=emb, fn_rel=None)
    assert mined.skipped_queries == [1] and mined.query_index == [0]
    with pytest.raises(NoPositivePairsError, match="no query has a positive"):
        mine_hard_negatives(["a", "b"], ["x", "y", "z"], {0: []}, retriever=emb)


def test_without_a_scorer_the_teacher_is_the_first_stage_cosine():
    emb = {"a": [1.0, 0.0], "x": [1.0, 0.0], "y": [3.0, 4.0], "z": [0.0, 2.0]}
    mined = mine_hard_negatives(["a"], ["x", "y", "z"], {0: [0]}, retriever=_lookup_embed(emb), fn_rel=None)
    assert mined.negative_index == [[1, 2]]
    torch.testing.assert_close(
        torch.tensor(mined.negative_scores[0], dtype=torch.float64),
        torch.tensor([0.6, 0.0], dtype=torch.float64),
    )
    assert mined.positive_score == [pytest.approx(1.0)]


def test_retriever_and_scorer_are_called_on_blocks_of_at_most_batch_size():
    gen = torch.Generator().manual_seed(3)
    queries, corpus = [f"q{i}" for i in range(7)], [f"d{j}" for j in range(13)]
    table = {t: torch.randn(4, generator=gen).tolist() for t in queries + corpus}
    embed_calls, score_calls = [], []
    mined = mine_hard_negatives(
        queries,
        corpus,
        {i: [i] for i in range(7)},
        retriever=_lookup_embed(table, embed_calls),
        scorer=_counting(embedding_scorer(_lookup_embed(table), batch_size=3), score_calls),
        top_k=5,
        batch_size=3,
    )
    assert max(embed_calls) <= 3 and sum(embed_calls) == 13 + 7
    assert max(score_calls) <= 3 and sum(score_calls) == 7 * (5 + 1)
    assert len(mined) > 0


def _counting(scorer, calls):
    def score(q, d):
        calls.append(len(q))
        return scorer(q, d)

    return score


# ---------------------------------------------------------------- the whole pipeline vs a loop reference


def _reference_pipeline(queries, corpus, positives, table, teacher, options):
    """Full query x corpus matrix, then the filters in METHODS 3.8 / sentence-transformers order."""
    unit = {t: [x / math.sqrt(sum(v * v for v in table[t])) for x in table[t]] for t in table}
    rows = []
    for qi, q in enumerate(queries):
        pos = sorted(positives.get(qi, []))
        if not pos:
            continue
        first = [sum(a * b for a, b in zip(unit[q], unit[d], strict=True)) for d in corpus]
        cand = sorted(range(len(corpus)), key=lambda j: (-first[j], j))[: options["top_k"]]
        t = {j: teacher[(q, corpus[j])] for j in cand}
        t_pos = [teacher[(q, corpus[p])] for p in pos]
        ref = min(t_pos)
        order = sorted(cand, key=lambda j: (-t[j], cand.index(j)))
        kept = []
        for j in order:
            s = t[j]
            if j in pos:
                continue
            if options["fn_rel"] is not None and s >= ref - (1 - options["fn_rel"]) * abs(ref):
                continue
            if options["absolute_margin"] is not None and s > ref - options["absolute_margin"]:
                continue
            if options["max_score"] is not None and s > options["max_score"]:
                continue
            kept.append(j)
        kept = kept[options["range_min"] :][: options["num_negatives"]]
        for p, tp in zip(pos, t_pos, strict=True):
            if kept:
                rows.append((qi, p, kept, tp, [t[j] for j in kept]))
    return rows


@pytest.mark.parametrize(
    "options",
    [
        {
            "top_k": 6,
            "fn_rel": 0.95,
            "absolute_margin": None,
            "max_score": None,
            "range_min": 0,
            "num_negatives": 3,
        },
        {
            "top_k": 9,
            "fn_rel": None,
            "absolute_margin": 0.05,
            "max_score": 0.8,
            "range_min": 1,
            "num_negatives": 2,
        },
    ],
)
def test_pipeline_matches_a_loop_reference(options):
    gen = torch.Generator().manual_seed(4)
    queries, corpus = [f"q{i}" for i in range(5)], [f"d{j}" for j in range(12)]
    table = {t: torch.randn(3, generator=gen, dtype=torch.float64).tolist() for t in queries + corpus}
    teacher_vec = {t: torch.randn(3, generator=gen, dtype=torch.float64) for t in queries + corpus}
    teacher = {
        (q, d): float(torch.nn.functional.cosine_similarity(teacher_vec[q], teacher_vec[d], dim=0))
        for q in queries
        for d in corpus
    }
    positives = {0: [3], 1: [0, 5], 3: [11], 4: []}
    mined = mine_hard_negatives(
        queries,
        corpus,
        positives,
        retriever=_lookup_embed(table),
        scorer=_lookup_scorer(teacher),
        batch_size=2,
        **options,
    )
    want = _reference_pipeline(queries, corpus, positives, table, teacher, options)
    got = list(
        zip(
            mined.query_index,
            mined.positive_index,
            mined.negative_index,
            mined.positive_score,
            mined.negative_scores,
            strict=True,
        )
    )
    assert [(q, p, n) for q, p, n, _, _ in got] == [(q, p, n) for q, p, n, _, _ in want]
    for (_, _, _, tp, tn), (_, _, _, wp, wn) in zip(got, want, strict=True):
        assert tp == pytest.approx(wp, rel=1e-12) and tn == pytest.approx(wn, rel=1e-12)
    assert mined.skipped_queries == [2, 4]


def test_bm25_pipeline_mines_word_overlap_negatives():
    pytest.importorskip("bm25s")
    corpus = ["solar panels make power", "solar wind and the sun", "wind turbines make power", "cats purr"]
    mined = mine_hard_negatives(["solar power"], corpus, {0: [0]}, fn_rel=None, num_negatives=2)
    assert mined.negative_index == [[1, 2]]  # both share one word; the cat text shares none


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"top_k": 0}, "top_k"),
        ({"range_min": -1}, "range_min"),
        ({"range_max": 0}, "range_max"),
        ({"range_min": 2, "range_max": 3, "num_negatives": 2}, "num_negatives"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"max_score": float("nan")}, "max_score"),
        ({"min_score": "mean"}, "min_score"),
        ({"absolute_margin": "0.1"}, "absolute_margin"),
        ({"relative_margin": -0.1}, "relative_margin"),
        ({"fn_rel": 1.5}, "fn_rel"),
        ({"sampling": "best"}, "sampling"),
        ({"remove_duplicates": "yes"}, "remove_duplicates"),
        ({"batch_size": 0}, "batch_size"),
        ({"generator": 3}, "generator"),
        ({"retriever": "dense"}, "retriever"),
        ({"scorer": "cross"}, "scorer"),
    ],
)
def test_bad_options_raise_naming_the_argument(options, name):
    emb = _lookup_embed({"a": [1.0, 0.0], "x": [1.0, 0.0], "y": [0.0, 1.0], "z": [1.0, 1.0]})
    with pytest.raises(InputError, match=f"mine_hard_negatives: argument '{name}'"):
        mine_hard_negatives(["a"], ["x", "y", "z"], {0: [0]}, **({"retriever": emb} | options))


@pytest.mark.parametrize(
    ("queries", "corpus", "positives", "match"),
    [
        (["a"], [], {0: [0]}, "'corpus' is empty"),
        ([], ["x"], {0: [0]}, "'queries' is empty"),
        (["a"], ["x", 3], {0: [0]}, "item 1"),
        (["a"], ["x", "y"], {0: [2]}, "corpus row 2"),
        (["a"], ["x", "y"], {1: [0]}, "query row 1"),
        (["a"], ["x", "y"], [(0, 0, 1)], "pairs"),
        (["a"], ["x", "y"], {0: 1}, "list of corpus rows"),
        (["a"], ["x", "y"], "0-0", "must be a dict"),
    ],
)
def test_bad_inputs_raise(queries, corpus, positives, match):
    emb = _lookup_embed({"a": [1.0, 0.0], "x": [1.0, 0.0], "y": [0.0, 1.0]})
    with pytest.raises(InputError, match=match):
        mine_hard_negatives(queries, corpus, positives, retriever=emb)


def test_a_bad_retriever_or_scorer_output_raises():
    emb = _lookup_embed({"a": [1.0, 0.0], "x": [1.0, 0.0], "y": [0.0, 1.0]})
    with pytest.raises(InputError, match="'scorer' must return 3 finite"):
        mine_hard_negatives(["a"], ["x", "y"], {0: [0]}, retriever=emb, scorer=lambda q, d: torch.zeros(1))
    with pytest.raises(InputError, match="NaN"):
        mine_hard_negatives(
            ["a"], ["x", "y"], {0: [0]}, retriever=lambda t: torch.full((len(t), 2), float("nan"))
        )
    with pytest.raises(InputError, match="rows"):
        mine_hard_negatives(["a"], ["x", "y"], {0: [0]}, retriever=lambda t: torch.ones(1, 2))


def test_dense_top_k_errors():
    with pytest.raises(InputError, match="'k' must be <= the corpus size 3"):
        dense_top_k(torch.randn(2, 4), torch.randn(3, 4), 4)
    with pytest.raises(InputError, match="embedding size 4"):
        dense_top_k(torch.randn(2, 4), torch.randn(3, 5), 2)
    with pytest.raises(InputError, match="'batch_size'"):
        dense_top_k(torch.randn(2, 4), torch.randn(3, 4), 2, batch_size=0)


def test_embedding_scorer_is_the_cosine_and_embeds_each_text_once():
    calls = []
    table = {"a": [3.0, 4.0], "b": [1.0, 0.0], "c": [0.0, 2.0]}
    score = embedding_scorer(_lookup_embed(table, calls), batch_size=2)
    torch.testing.assert_close(score(["a", "a"], ["b", "c"]), torch.tensor([0.6, 0.8], dtype=torch.float64))
    score(["a"], ["c"])
    assert calls == [2, 1]


def test_bm25_over_a_corpus_without_indexable_words_raises_input_error():
    pytest.importorskip("bm25s")
    with pytest.raises(InputError, match="BM25Index: the 2 corpus text"):
        BM25Index(["", "the of a"])  # bm25s itself fails with max() of an empty sequence
    with pytest.raises(InputError, match="no word besides English stopwords"):
        mine_hard_negatives(["solar"], ["", " "], {0: [0]})
    assert BM25Index(["", "solar power"]).scores(["solar"])[0, 1] > 0  # one empty text is fine


def test_half_precision_retriever_scores_positives_like_candidates():
    # bf16 embeddings: the candidates are scored in float32 (dense_top_k), so the positive's score,
    # the bar of every margin filter, must be too (it was a bf16 dot product, ~1e-2 off)
    gen = torch.Generator().manual_seed(5)
    table = {t: torch.randn(16, generator=gen).tolist() for t in ["q", "p", "a", "b", "c"]}

    def embed(texts):
        return torch.tensor([table[t] for t in texts]).bfloat16()

    mined = mine_hard_negatives(["q"], ["p", "a", "b", "c"], {0: [0]}, retriever=embed, fn_rel=None)
    unit = torch.nn.functional.normalize(embed(["q", "p", "a", "b", "c"]).float(), dim=1)
    cos = unit[1:] @ unit[0]
    assert mined.positive_score[0] == pytest.approx(float(cos[0]), abs=1e-6)
    assert sorted(mined.negative_scores[0], reverse=True) == pytest.approx(
        sorted(cos[1:].tolist(), reverse=True), abs=1e-6
    )
