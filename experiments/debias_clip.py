"""DeBias-CLIP vs Long-CLIP-style training, scored by the first-sentence caption probe.

Claim (METHODS 3.1, arXiv 2602.22419): training on (full caption) + (augmented caption: summary
sentence dropped, the rest subsampled and permuted, prefix padding) keeps more text->image R@1
than Long-CLIP's (full caption) + (first sentence) when the first sentence is moved or removed.

Both runs start from the same initialisation, see the same batches and take the same number of
steps; only the second caption of the objective differs:

    Long-CLIP style: L = CLIP_eps=0.1(img, full) + CLIP_eps=0.1(img, first sentence)
    DeBias:          L = CLIP_eps=0.1(img, full) + CLIP_eps=0.1(img, DeBias-augmented caption)

Data: the built-in ``shapes`` set (its caption's first sentence summarises the image) and,
Flickr8k from ../shared/data/flickr8k (when present) with each image's five captions joined
into one long caption. The probe table (keep / move / remove / pad R@1) is printed and written into
docs/methods/long-captions.md between the ``debias-table`` markers.

Run: ``python experiments/debias_clip.py [--quick] [--no-flickr]``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.data import BPETokenizer, DeBiasCaptionAugment, ShapesSource, split_sentences
from contrastkit.eval import caption_probe
from contrastkit.eval.caption_probe import PAD_SENTENCE
from contrastkit.losses import clip_loss
from contrastkit.models import ContrastiveModel, ImageCNN, TextTransformer
from contrastkit.report.blocks import write_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods" / "long-captions.md"
BEGIN, END = "<!-- debias-table:begin -->", "<!-- debias-table:end -->"
FLICKR = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "flickr8k"
METHODS = ("long-clip", "debias")
PROBE_KEYS = ("keep", "move", "remove", "pad_1", "pad_3", "pad_5")


def images_to_tensor(images) -> torch.Tensor:
    """PIL RGB images of one size -> float32 (N, 3, H, W) in about [-1, 1]."""
    array = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return (torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def load_shapes(n_train: int, n_test: int, size: int, seed: int):
    """(train images, train captions, test images, test captions) of the built-in shapes set."""
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        src = ShapesSource(split, n=n, image_size=size, seed=seed)
        out += [images_to_tensor(s.render(size) for s in src.scenes), [s.caption() for s in src.scenes]]
    return tuple(out)


def _sentence(caption: str) -> str:
    """A Flickr8k caption as one sentence: "A dog runs ." -> "A dog runs."."""
    text = " ".join(caption.split()).rstrip(" .")
    return text + "."


def load_flickr(size: int, n_train: int, n_test: int):
    """Flickr8k with each image's five captions joined as one long caption (None if absent)."""
    if not (FLICKR / "train.tsv").is_file():
        return None
    from PIL import Image

    out = []
    for split, n in (("train", n_train), ("dev", n_test)):
        captions: dict[str, list[str]] = {}
        with open(FLICKR / f"{split}.tsv", encoding="utf-8") as f:
            next(f)
            for line in f:
                path, _, caption = line.rstrip("\n").partition("\t")
                captions.setdefault(path, []).append(_sentence(caption))
        paths = list(captions)[:n]
        images = []
        for p in paths:
            with Image.open(FLICKR / p) as im:
                images.append(im.convert("RGB").resize((size, size), Image.BILINEAR))
        out += [images_to_tensor(images), [" ".join(captions[p]) for p in paths]]
    return tuple(out)


def build(vocab_size: int, max_length: int, seed: int) -> ContrastiveModel:
    torch.manual_seed(seed)
    towers = {
        "image": ImageCNN(width=16, depth=3, output_dim=None),
        "text": TextTransformer(vocab_size, max_length=max_length, dim=64, depth=2, heads=4),
    }
    return ContrastiveModel(towers, embed_dim=64)


def first_sentences(captions: list[str]) -> list[str]:
    return [split_sentences(c)[0] for c in captions]


def train(method: str, model, tok, images, captions, *, steps: int, batch: int, ctx_len: int, seed: int):
    """AdamW on the two-caption objective of ``method``; returns the last loss."""
    gen = torch.Generator().manual_seed(seed)  # batches: identical for both methods
    aug_gen = torch.Generator().manual_seed(seed + 1)
    augment = DeBiasCaptionAugment(tok, ctx_len=ctx_len, generator=aug_gen)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(captions), (batch,), generator=gen).tolist()
        caps = [captions[i] for i in idx]
        second = augment(caps) if method == "debias" else tok(first_sentences(caps))
        z_img = model.encode("image", images[idx])
        z_full = model.encode("text", tok(caps))
        z_two = model.encode("text", second)
        scale = model.scale()
        loss = clip_loss(z_img, z_full, scale, label_smoothing=0.1) + clip_loss(
            z_img, z_two, scale, label_smoothing=0.1
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


@torch.no_grad()
def probe(model, tok, images, captions) -> dict[str, float]:
    model.eval()
    image_emb = torch.cat([model.encode("image", images[s : s + 500]) for s in range(0, len(images), 500)])

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.encode("text", tok(texts[s : s + 250])) for s in range(0, len(texts), 250)])

    return caption_probe(image_emb, encode_text, captions, pad_copies=(1, 3, 5))


def run_dataset(name: str, data, *, steps: int, batch: int, max_length: int, seed: int) -> dict:
    train_images, train_caps, test_images, test_caps = data
    # the probe's filler sentence joins the tokenizer corpus so that it gets word-level tokens, as
    # in a real CLIP vocabulary (else 5 copies alone would fill most of a small context)
    tok = BPETokenizer.train([*train_caps, *[PAD_SENTENCE] * 20], vocab_size=1000, max_length=max_length)
    results = {}
    for method in METHODS:
        start = time.perf_counter()
        model = build(tok.vocab_size, max_length, seed)
        last = train(
            method,
            model,
            tok,
            train_images,
            train_caps,
            steps=steps,
            batch=batch,
            ctx_len=max_length,
            seed=seed,
        )
        results[method] = {**probe(model, tok, test_images, test_caps), "loss": last}
        results[method]["seconds"] = time.perf_counter() - start
        print(f"  {name}/{method}: final loss {last:.3f}, {results[method]['seconds']:.0f} s", flush=True)
    return results


def table(all_results: dict[str, dict], notes: list[str]) -> str:
    """A markdown table: one row per (data set, method), R@1 in percent."""
    head = "| data | training | " + " | ".join(PROBE_KEYS) + " | drop move | drop remove |"
    lines = [head, "|" + "---|" * (len(PROBE_KEYS) + 4)]
    for data, results in all_results.items():
        for method, r in results.items():
            cells = " | ".join(f"{100 * r[k]:.1f}" for k in PROBE_KEYS)
            drops = f"{100 * (r['keep'] - r['move']):.1f} | {100 * (r['keep'] - r['remove']):.1f}"
            lines.append(f"| {data} | {method} | {cells} | {drops} |")
    return "\n".join(lines + [""] + notes)


def verdict(results: dict, min_keep: float = 0.05) -> str:
    """Whether DeBias keeps more R@1 than Long-CLIP under move and under remove.

    "inconclusive" when neither model reaches ``min_keep`` R@1 on the unedited captions: a probe
    of a model that barely retrieves anything measures noise.
    """
    lc, db = results["long-clip"], results["debias"]
    parts = [f"{k}: DeBias {100 * db[k]:.1f} vs Long-CLIP {100 * lc[k]:.1f}" for k in ("move", "remove")]
    if max(lc["keep"], db["keep"]) < min_keep:
        return (
            f"inconclusive, both models are near chance (keep R@1 below {100 * min_keep:.0f}%: DeBias "
            f"{100 * db['keep']:.1f} vs Long-CLIP {100 * lc['keep']:.1f}; " + "; ".join(parts) + ")"
        )
    held = all(db[k] > lc[k] for k in ("move", "remove"))
    return ("reproduced" if held else "NOT reproduced") + " (" + "; ".join(parts) + ")"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds (no doc update)")
    parser.add_argument("--no-flickr", action="store_true", help="skip Flickr8k (joined captions)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/methods/long-captions.md")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    steps = 20 if args.quick else args.steps
    batch = 32 if args.quick else args.batch
    n_train, n_test = (256, 128) if args.quick else (4000, 1000)

    all_results: dict[str, dict] = {}
    notes = []
    print(f"shapes: {n_train} train / {n_test} test images, {steps} steps x batch {batch} per method")
    shapes = load_shapes(n_train, n_test, 32, args.seed)
    all_results["shapes"] = run_dataset(
        "shapes", shapes, steps=steps, batch=batch, max_length=96, seed=args.seed
    )
    notes.append(f"shapes: claim {verdict(all_results['shapes'])}.")

    if not args.quick and not args.no_flickr:
        flickr = load_flickr(32, 3000, 1000)
        if flickr is None:
            notes.append(f"flickr8k: skipped, {FLICKR} is absent.")
        else:
            all_results["flickr8k"] = run_dataset(
                "flickr8k", flickr, steps=steps, batch=batch, max_length=160, seed=args.seed
            )
            notes.append(f"flickr8k: claim {verdict(all_results['flickr8k'])}.")
    else:
        notes.append("flickr8k: not run (--quick or --no-flickr).")

    seconds = time.perf_counter() - start
    notes.append(
        f"R@1 in %, text->image over {n_test} test images; {steps} steps x batch {batch} per method, "
        f"seed {args.seed}; total run time {seconds:.0f} s wall, {time.process_time() - cpu:.0f} s CPU "
        f"({torch.get_num_threads()} threads)."
    )
    text = table(all_results, notes)
    print("\n" + text)
    if not args.quick and not args.no_doc:
        write_block(DOC, BEGIN, END, text)
        print(f"table written to {DOC}")
    return {"results": all_results, "table": text, "seconds": seconds}


if __name__ == "__main__":
    main()
