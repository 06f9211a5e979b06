"""ir_metrics against a per-query float64 reference written from the trec_eval / BEIR definitions."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit import InputError
from contrastkit.eval import ir_metrics


def _reference(query_emb, corpus_emb, qrels, query_ids, corpus_ids, ks) -> dict[str, float]:
    """Sort the whole corpus per query by (-cosine, corpus row), then apply each formula."""
    sums: dict[str, float] = {}
    evaluated = 0
    for q, qid in zip(query_emb, query_ids, strict=True):
        judged = qrels.get(qid, {})
        relevant = {d: r for d, r in judged.items() if r > 0}
        if not relevant:
            continue
        evaluated += 1
        cos = [float(q @ c) / float(q.norm() * c.norm()) for c in corpus_emb]
        order = sorted(range(len(corpus_ids)), key=lambda j: (-cos[j], j))
        ranked = [corpus_ids[j] for j in order]

        def add(key: str, value: float) -> None:
            sums[key] = sums.get(key, 0.0) + value

        first = next((r for r, d in enumerate(ranked[:10], 1) if d in relevant), None)
        add("MRR@10", 0.0 if first is None else 1.0 / first)
        for k in sorted({*ks, 10}):
            dcg = sum(max(judged.get(d, 0), 0) / math.log2(r + 1) for r, d in enumerate(ranked[:k], 1))
            ideal = sorted(relevant.values(), reverse=True)[:k]
            idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
            add(f"nDCG@{k}", dcg / idcg)
        for k in ks:
            hits = [d in relevant for d in ranked[:k]]
            add(f"Recall@{k}", sum(hits) / len(relevant))
            ap = sum(sum(hits[:r]) / r for r in range(1, len(hits) + 1) if hits[r - 1]) / len(relevant)
            add(f"MAP@{k}", ap)
    out = {key: value / evaluated for key, value in sums.items()}
    out["n_queries"] = evaluated
    out["n_skipped"] = len(query_ids) - evaluated
    return out


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_q, n_d = 14, 37
    corpus = torch.randn(n_d, 5, generator=g, dtype=torch.float64)
    corpus_ids = [f"d{j}" for j in range(n_d)]
    query_ids = [f"q{i}" for i in range(n_q)]
    qrels: dict[str, dict[str, int]] = {}
    for i in range(n_q - 3):  # the last 3 queries have no judgments
        docs = torch.randperm(n_d, generator=g)[: 1 + i % 4].tolist()
        qrels[f"q{i}"] = {f"d{j}": int(torch.randint(0, 3, (), generator=g)) for j in docs}
    qrels["q0"] = {"d3": 2, "d5": 1, "missing-doc": 1}  # a judged document not in the corpus
    qrels["q1"] = {"d3": 0}  # judged, none relevant: skipped
    qrels["q-not-embedded"] = {"d1": 1}  # not in query_ids: ignored
    anchors = torch.randint(0, n_d, (n_q,), generator=g)
    query = corpus[anchors] + 0.8 * torch.randn(n_q, 5, generator=g, dtype=torch.float64)
    return query, corpus, qrels, query_ids, corpus_ids


@pytest.mark.parametrize("ks", [(1, 10, 100), (1, 3, 5, 37), (2,)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(ks, seed):
    query, corpus, qrels, query_ids, corpus_ids = _problem(seed)
    got = ir_metrics(query, corpus, qrels, query_ids, corpus_ids, ks=ks)
    want = _reference(query, corpus, qrels, query_ids, corpus_ids, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("chunk_size", [1, 5, 14, 4096])
def test_chunk_size_does_not_change_anything(chunk_size):
    query, corpus, qrels, query_ids, corpus_ids = _problem(2)
    assert ir_metrics(query, corpus, qrels, query_ids, corpus_ids, chunk_size=chunk_size) == ir_metrics(
        query, corpus, qrels, query_ids, corpus_ids
    )


def test_hand_computed_ranking():
    """Corpus ranked d0 > d1 > d2 > d3 for the query; d1 (grade 1) and d3 (grade 2) are relevant."""
    corpus = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    got = ir_metrics(query, corpus, {"q": {"d1": 1, "d3": 2}}, ["q"], ["d0", "d1", "d2", "d3"], ks=(1, 2, 10))
    assert got["MRR@10"] == 0.5
    assert got["Recall@1"] == 0.0 and got["Recall@2"] == 0.5 and got["Recall@10"] == 1.0
    assert got["MAP@2"] == pytest.approx(0.25) and got["MAP@10"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    idcg = 2 + 1 / math.log2(3)
    assert got["nDCG@10"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(5)) / idcg)
    assert got["nDCG@2"] == pytest.approx((1 / math.log2(3)) / idcg)
    assert got["n_queries"] == 1 and got["n_skipped"] == 0


def test_score_ties_are_broken_by_corpus_order():
    corpus = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    second = ir_metrics(query, corpus, {"q": {"b": 1}}, ["q"], ["a", "b", "c"], ks=(1,))
    first = ir_metrics(query, corpus, {"q": {"a": 1}}, ["q"], ["a", "b", "c"], ks=(1,))
    assert second["MRR@10"] == 0.5 and second["Recall@1"] == 0.0
    assert first["MRR@10"] == 1.0 and first["Recall@1"] == 1.0


def test_ids_may_be_any_iterable():
    query, corpus, qrels, query_ids, corpus_ids = _problem(0)
    want = ir_metrics(query, corpus, qrels, query_ids, corpus_ids)
    as_keys = dict.fromkeys(corpus_ids).keys()
    assert ir_metrics(query, corpus, qrels, tuple(query_ids), as_keys) == want


def test_dot_product_scoring():
    corpus = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    qrels = {"q": {"b": 1}}
    assert ir_metrics(query, corpus, qrels, ["q"], ["a", "b"], ks=(1,))["Recall@1"] == 0.0
    assert ir_metrics(query, corpus, qrels, ["q"], ["a", "b"], ks=(1,), normalize=False)["Recall@1"] == 1.0


# ----- bad inputs ---------------------------------------------------------------------------------


def _ok():
    return torch.randn(2, 3), torch.randn(4, 3), {"q0": {"d1": 1}}, ["q0", "q1"], ["d0", "d1", "d2", "d3"]


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, torch.zeros(0, 3), "'query_emb' is empty"),
        (1, torch.randn(4, 2), "'corpus_emb' must have embedding size 3"),
        (1, torch.full((4, 3), torch.nan), "'corpus_emb' contains 12 NaN"),
        (2, {}, "'qrels' must be a non-empty dict.*got an empty dict"),
        (2, [("q0", "d1", 1)], "'qrels' must be a non-empty dict.*got list"),
        (2, {"q0": ["d1"]}, r"qrels\['q0'\] is a list"),
        (2, {"q0": {"d1": 1.0}}, r"integer relevance grades; qrels\['q0'\]\['d1'\] = 1.0"),
        (3, ["q0"], "'query_ids' must hold one id per row of 'query_emb' \\(2\\); got 1"),
        (3, ["q0", "q0"], "'query_ids' must hold unique ids; 'q0'"),
        (3, "q0q1", "'query_ids' must be a list"),
        (4, ["d0", "d1", "d2"], "'corpus_ids' must hold one id per row of 'corpus_emb' \\(4\\); got 3"),
        (3, [0, 1], "no query of 'query_ids' has a relevant document.*BEIR ids are strings"),
        (4, [0, 1, 2, 3], "none of the relevant documents in 'qrels' is in 'corpus_ids'"),
    ],
)
def test_bad_inputs(index, value, match):
    args = list(_ok())
    args[index] = value
    with pytest.raises(InputError, match=f"ir_metrics: .*{match}"):
        ir_metrics(*args)


@pytest.mark.parametrize(("name", "value"), [("ks", (0,)), ("ks", ()), ("chunk_size", 0), ("normalize", 1)])
def test_bad_options(name, value):
    with pytest.raises(InputError, match=f"'{name}'"):
        ir_metrics(*_ok(), **{name: value})


@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_heavy_ties_match_the_reference_at_every_cut(chunk_size):
    """5 distinct directions, each repeated, so every query's ranking is blocks of exactly equal
    scores; relevant documents sit inside blocks cut by k = 1, 2, 3, 7 and 10: nDCG, MAP, Recall
    and MRR must all follow the corpus-order tie break of the reference."""
    g = torch.Generator().manual_seed(7)
    # one-hot directions: every score is one query coordinate times 1 plus zeros, so repeated
    # rows score exactly alike whatever the matmul's summation order
    base = torch.cat([torch.eye(4, dtype=torch.float64), -torch.eye(4, dtype=torch.float64)[:1]])
    pattern = [0, 1, 0, 2, 1, 0, 3, 4, 2, 0, 1, 3, 0, 4, 2, 1]
    corpus = base[pattern]
    corpus_ids = [f"d{j}" for j in range(len(pattern))]
    query = base[[0, 1, 2, 0]] + 0.3 * torch.rand(4, 4, generator=g, dtype=torch.float64)
    query_ids = ["q0", "q1", "q2", "q3"]
    qrels = {
        "q0": {"d5": 1, "d12": 2, "d3": 1},  # two inside q0's top block of five tied rows
        "q1": {"d15": 2, "d4": 1},  # the last two rows of q1's top block
        "q2": {"d8": 1, "d14": 3},
        "q3": {"d0": 1, "d9": 1},
    }
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(corpus, dim=1).T
    assert len(set(cos[0].tolist())) <= 5  # precondition: exact ties in the scores
    ks = (1, 2, 3, 7, 10)
    got = ir_metrics(query, corpus, qrels, query_ids, corpus_ids, ks=ks, chunk_size=chunk_size)
    want = _reference(query, corpus, qrels, query_ids, corpus_ids, ks)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # and the tie break is visible: reversing the corpus order changes the metrics
    flipped = ir_metrics(query, corpus.flip(0), qrels, query_ids, corpus_ids[::-1], ks=ks)
    assert flipped["MRR@10"] != got["MRR@10"] or flipped["nDCG@3"] != got["nDCG@3"]
