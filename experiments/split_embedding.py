"""Claim (TDoc, METHODS.md 3.7): self-augmented hard negatives and the split embedding both help
style matching of text crops.

    python experiments/split_embedding.py            # ~5-6 min on one CPU thread
    python experiments/split_embedding.py --quick    # a few seconds (a smoke test)

Setup (the paper's check, built from what this machine has):

- Data: synthetic document "pages" rendered with Pillow in the DejaVu faces found on this machine.
  A page has one background and one text colour; its lines differ in font and size (no two
  lines of a page share both). Each line has its own slight background tint and scan noise. A
  line of 12 random characters gives three 4-character text segments and, from the empty stretch
  after the text, two blank (background-only) crops; every crop is resized to 24x48.
- Pairs: anchor and positive are two segments of one line (same style, different characters), or
  its two blank crops (20% of training anchors). Training negatives, 256 per anchor: the other
  lines' crops of the batch (16 lines from 4 pages, so same-page lines are hard negatives),
  crops of random other lines, and, in the self-negative arms, up to 20 self-augmented copies of
  the anchor (``SelfAugmentedNegatives``: >= 5% of pixels changed and RMS >= 15).
- Model: a small CNN (three stride-2 convs, 32-64-128 channels, average pool, Linear) to 192-d
  (``contrastkit.models.ImageCNN`` is 3x slower on this CPU); the same seed, batches and steps
  for every arm; AdamW (lr 1e-3, wd 0.01), linear warmup then cosine; tau = 0.1.
- Arms: split embedding (s of METHODS 3.7; beta = 1 when the pair involves a blank crop) or a
  single embedding (the cosine of the whole 192-d vector), each with or without self-negatives.
- Evaluation on held-out pages (new colours, new font/size/colour combinations): each line's text
  segment 0 (and, separately, blank crop 0) retrieves its positive among 257 candidates: the
  positive and 256 crops of other held-out lines, all crops of the same page's other lines
  included. Also: text queries with 20 of those negatives replaced by self-augmented copies of
  the query. Top-1 in %, mean over seeds.

The rendered crops are cached under runs/split_embedding_cache/ (ignored by git). The full run
rewrites the marked block of docs/methods/split-embedding.md; ``--quick`` writes nowhere unless
``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from contrastkit.data.selfaug import SelfAugmentedNegatives
from contrastkit.losses.multineg import multi_negative_info_nce, split_embedding_similarity
from contrastkit.report.blocks import mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
CACHE = ROOT / "runs" / "split_embedding_cache"
DOCS = ROOT / "docs" / "methods" / "split-embedding.md"
BEGIN, END = "<!-- split-embedding-table:begin -->", "<!-- split-embedding-table:end -->"
CROP_H, CROP_W = 24, 48
CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
SEGMENT_CHARS, SEGMENTS = 4, 3
ARMS = ("full", "no_self", "single", "neither")
LABELS = {
    "full": "split + self-negatives (TDoc)",
    "no_self": "split, no self-negatives",
    "single": "single embedding + self-negatives",
    "neither": "single embedding, no self-negatives",
}
SPLIT = {"full": True, "no_self": True, "single": False, "neither": False}
SELF = {"full": True, "no_self": False, "single": True, "neither": False}

# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, g: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _palette(g: torch.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(background, text) colours of a page: light paper and dark ink, or the reverse."""
    light = [int(_uniform(150, 255, g)) for _ in range(3)]
    dark = [int(_uniform(0, 110, g)) for _ in range(3)]
    return (
        (tuple(light), tuple(dark))
        if float(torch.rand((), generator=g)) < 0.7
        else (tuple(dark), tuple(light))
    )


def render_line(
    text: str, font, background, ink, tint: float, noise: float, g: torch.Generator
) -> torch.Tensor:
    """(3 text segments + 2 blank crops, 3, CROP_H, CROP_W) uint8 crops of one rendered line."""
    from PIL import Image, ImageDraw

    pad = 6
    bounds = [pad + font.getlength(text[: SEGMENT_CHARS * i]) for i in range(SEGMENTS + 1)]
    blank_w = max(8, round(bounds[1] - bounds[0]))
    height = round(font.size * 1.6)
    width = math.ceil(bounds[-1]) + 2 * pad + 2 * blank_w + pad
    bg = tuple(min(255, max(0, round(c + tint))) for c in background)
    image = Image.new("RGB", (width, height), bg)
    ImageDraw.Draw(image).text((pad, height // 2), text, font=font, fill=ink, anchor="lm")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    pixels = pixels.permute(2, 0, 1).float()
    pixels = (pixels + noise * torch.randn(pixels.shape, generator=g)).clamp(0, 255)
    blank_start = math.ceil(bounds[-1]) + 2 * pad
    boxes = [(round(bounds[i]), round(bounds[i + 1])) for i in range(SEGMENTS)]
    boxes += [(blank_start + i * blank_w, blank_start + (i + 1) * blank_w) for i in range(2)]
    crops = [
        F.interpolate(pixels[None, :, :, x0:x1], (CROP_H, CROP_W), mode="bilinear", antialias=True)[0]
        for x0, x1 in boxes
    ]
    crops = torch.stack(crops)
    return crops.round().clamp(0, 255).to(torch.uint8)


def render_pages(n_pages: int, lines_per_page: int, fonts: list[Path], sizes: list[int], seed: int):
    """Crops (N lines, 5, 3, H, W) uint8 (3 text segments, 2 blank) and the page of each line."""
    from PIL import ImageFont

    g = torch.Generator().manual_seed(seed)
    faces: dict[tuple[int, int], object] = {}
    crops, pages = [], []
    for page in range(n_pages):
        background, ink = _palette(g)
        combos = torch.randperm(len(fonts) * len(sizes), generator=g)[:lines_per_page].tolist()
        for combo in combos:
            font_i, size = divmod(combo, len(sizes))
            key = (font_i, sizes[size])
            if key not in faces:
                faces[key] = ImageFont.truetype(str(fonts[font_i]), sizes[size])
            text = "".join(
                CHARS[int(i)] for i in torch.randint(len(CHARS), (SEGMENTS * SEGMENT_CHARS,), generator=g)
            )
            tint, noise = _uniform(-12, 12, g), _uniform(0, 10, g)
            crops.append(render_line(text, faces[key], background, ink, tint, noise, g))
            pages.append(page)
    return torch.stack(crops), torch.tensor(pages)


def load_pages(
    split: str, n_pages: int, lines: int, fonts: list[Path], sizes: list[int], seed: int, use_cache: bool
):
    cache = CACHE / f"{split}-{n_pages}x{lines}-{len(fonts)}f-{seed}.pt"
    if use_cache and cache.is_file():
        return torch.load(cache)
    data = render_pages(n_pages, lines, fonts, sizes, seed)
    if use_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(data, cache)
    return data


# --------------------------------------------------------------------------------------------
# model, similarity, training
# --------------------------------------------------------------------------------------------

BLANK_CROPS = (3, 4)  # crop indices 0-2 are text segments, 3-4 blank


def crop_encoder() -> torch.nn.Module:
    """Three stride-2 ReLU convs (32, 64, 128 channels), global average pool, Linear to 192-d."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 5, stride=2, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 128, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 192),
    )


def encode(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 192) raw embeddings."""
    return model((crops.float() / 255.0 - 0.5) / 0.5)


def whole_cosine(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The single-embedding similarity: cos(a_i, c_ij).  a (B, D), c (B, C, D) -> (B, C)."""
    return F.cosine_similarity(a[:, None, :], c, dim=-1)


def similarity_for(split: bool, blank_pairs: torch.Tensor):
    """s(a, c) of an arm; blank_pairs (B, C) bool: the pair involves a blank crop."""
    return functools.partial(split_embedding_similarity, blank=blank_pairs) if split else whole_cosine


def self_negatives(augment, crops: torch.Tensor, count: int, g: torch.Generator):
    """Self-augmented copies of each crop (N, 3, H, W), zero-padded to ``count``.

    Returns copies (N, count, 3, H, W) uint8, valid (N, count) bool (False: a dropped copy) and
    the number dropped. ``augment=None`` or count 0 gives no copies."""
    copies = torch.zeros(crops.shape[0], count, *crops.shape[1:], dtype=torch.uint8)
    valid = torch.zeros(crops.shape[0], count, dtype=torch.bool)
    dropped = 0
    if augment is not None and count:
        for i in range(crops.shape[0]):
            out = augment(crops[i], g)
            copies[i, : out.copies.shape[0]] = out.copies
            valid[i, : out.copies.shape[0]] = True
            dropped += out.dropped
    return copies, valid, dropped


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    arm: str, crops: torch.Tensor, pages: torch.Tensor, cfg: dict, seed: int
) -> tuple[torch.nn.Module, int]:
    """Train one arm; returns (model, self-negative copies dropped by the minimum-change rule)."""
    g = torch.Generator().manual_seed(seed)  # batches: the same in every arm
    g_self = torch.Generator().manual_seed(10_000 + seed)  # self-augmentation draws
    torch.manual_seed(seed)
    model = crop_encoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg["steps"], cfg["warmup"])
    )
    augment = SelfAugmentedNegatives(count=cfg["self_count"]) if SELF[arm] else None
    page_lines = [torch.nonzero(pages == p)[:, 0] for p in range(int(pages.max()) + 1)]
    n_lines = crops.shape[0]
    n_other = cfg["negatives"] - (2 * cfg["page_batch"] * cfg["line_batch"] - 2)
    n_self = cfg["self_count"] if augment else 0
    dropped = 0
    for _ in range(cfg["steps"]):
        chosen = torch.randperm(len(page_lines), generator=g)[: cfg["page_batch"]].tolist()
        lines = torch.cat(
            [
                page_lines[p][torch.randperm(len(page_lines[p]), generator=g)[: cfg["line_batch"]]]
                for p in chosen
            ]
        )
        batch = lines.shape[0]
        blank = torch.rand(batch, generator=g) < cfg["blank_rate"]
        text_pair = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(batch)])
        blank_pair = torch.stack([torch.randperm(2, generator=g) + 3 for _ in range(batch)])
        pair = torch.where(blank[:, None], blank_pair, text_pair)
        anchors, positives = crops[lines, pair[:, 0]], crops[lines, pair[:, 1]]
        others = torch.ones(n_lines, dtype=torch.bool)
        others[lines] = False
        pool = torch.nonzero(others)[:, 0]
        # n_other other-line crops are drawn in every arm; self-negative arms keep the first ones
        extra_lines = pool[torch.randint(len(pool), (n_other,), generator=g)]
        extra_blank = torch.rand(n_other, generator=g) < 0.3
        extra_crop = torch.where(
            extra_blank,
            3 + torch.randint(2, (n_other,), generator=g),
            torch.randint(3, (n_other,), generator=g),
        )
        keep = n_other - n_self
        shared = torch.cat([anchors, positives, crops[extra_lines[:keep], extra_crop[:keep]]])
        shared_blank = torch.cat([blank, blank, extra_blank[:keep]])
        self_copies, self_valid, n_dropped = self_negatives(augment, anchors, n_self, g_self)
        dropped += n_dropped
        emb = encode(model, torch.cat([shared, self_copies.flatten(0, 1)]))
        a, p = emb[:batch], emb[batch : 2 * batch]
        shared_emb = emb[: shared.shape[0]]
        negatives = torch.cat(
            [shared_emb.expand(batch, -1, -1), emb[shared.shape[0] :].view(batch, n_self, emb.shape[1])],
            dim=1,
        )
        own = torch.zeros(batch, shared.shape[0], dtype=torch.bool)
        rows = torch.arange(batch)
        own[rows, rows] = own[rows, rows + batch] = True
        negative_mask = torch.cat([~own, self_valid], dim=1)
        candidate_blank = torch.cat(
            [blank[:, None], shared_blank.expand(batch, -1), blank[:, None].expand(-1, n_self)], 1
        )
        similarity = similarity_for(SPLIT[arm], blank[:, None] | candidate_blank)
        loss = multi_negative_info_nce(
            a, p, negatives, cfg["tau"], similarity=similarity, negative_mask=negative_mask
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model, dropped


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def eval_candidates(pages: torch.Tensor, n_negatives: int, seed: int) -> torch.Tensor:
    """(N lines, n_negatives, 2) (line, crop) negatives of each test line: every crop of the same
    page's other lines first, then random crops of other pages' lines (no repeats)."""
    g = torch.Generator().manual_seed(seed)
    n = pages.shape[0]
    out = torch.empty(n, n_negatives, 2, dtype=torch.long)
    all_crops = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(5), indexing="ij"), -1).view(-1, 2)
    for i in range(n):
        same = (pages[all_crops[:, 0]] == pages[i]) & (all_crops[:, 0] != i)
        other = pages[all_crops[:, 0]] != pages[i]
        far = all_crops[other][torch.randperm(int(other.sum()), generator=g)]
        out[i] = torch.cat([all_crops[same], far])[:n_negatives]
    return out


def top1(scores: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """% of rows whose column 0 (the positive) beats every valid other column (ties are misses)."""
    rest = scores[:, 1:] if valid is None else scores[:, 1:].masked_fill(~valid, -math.inf)
    return 100.0 * float((scores[:, 0] > rest.amax(1)).double().mean())


@torch.no_grad()
def evaluate(model, arm, crops, negatives, self_copies, self_valid) -> dict[str, float]:
    """Top-1 of the positive among 1 + K candidates for text and blank queries."""
    model.eval()
    n = crops.shape[0]
    emb = torch.cat([encode(model, c) for c in crops.flatten(0, 1).split(512)]).view(n, 5, -1)
    neg_emb = emb[negatives[..., 0], negatives[..., 1]]  # (N, K, D)
    neg_blank = negatives[..., 1] >= BLANK_CROPS[0]
    out = {}
    for kind, (q, pos) in (("text", (0, 1)), ("blank", BLANK_CROPS)):
        query_blank = torch.full((n, 1), kind == "blank")
        cands = torch.cat([emb[:, pos, None], neg_emb], 1)
        blank_pairs = query_blank | torch.cat([query_blank, neg_blank], 1)
        out[kind] = top1(similarity_for(SPLIT[arm], blank_pairs)(emb[:, q], cands))
    out["all"] = (out["text"] + out["blank"]) / 2
    count = self_copies.shape[1]
    self_emb = torch.cat([encode(model, c) for c in self_copies.flatten(0, 1).split(512)]).view(n, count, -1)
    cands = torch.cat([emb[:, 1, None], neg_emb[:, : negatives.shape[1] - count], self_emb], 1)
    blank_pairs = torch.cat(
        [
            torch.zeros(n, 1, dtype=torch.bool),
            neg_blank[:, : negatives.shape[1] - count],
            torch.zeros(n, count, dtype=torch.bool),
        ],
        1,
    )
    valid = torch.cat([torch.ones(n, negatives.shape[1] - count, dtype=torch.bool), self_valid], 1)
    out["text_self"] = top1(similarity_for(SPLIT[arm], blank_pairs)(emb[:, 0], cands), valid)
    model.train()
    return out


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = ("all", "text", "blank", "text_self")
HEADER = ("top-1 all", "top-1 text", "top-1 blank", "top-1 text, self-aug candidates")


def _cell(values: list[float]) -> str:
    return mean_std(values, 1)


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(_cell([r[c] for r in runs]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def verdict(results: dict[str, list[dict[str, float]]], column: str = "all") -> str:
    """A factor helps if it raises the mean top-1 in both pairs of arms that differ only in it and,
    with several seeds, its mean gain exceeds twice the standard error of a difference of means."""

    def mean(arm: str) -> float:
        return statistics.fmean(r[column] for r in results[arm])

    seeds = min(len(runs) for runs in results.values())
    noise = 0.0
    if seeds > 1:
        spread = statistics.fmean(statistics.stdev(r[column] for r in runs) for runs in results.values())
        noise = 2 * spread * math.sqrt(2 / seeds)

    def helps(gains: tuple[float, float]) -> bool:
        return all(d > 0 for d in gains) and statistics.fmean(gains) > noise

    self_gains = (mean("full") - mean("no_self"), mean("single") - mean("neither"))
    split_gains = (mean("full") - mean("single"), mean("no_self") - mean("neither"))
    self_helps, split_helps = helps(self_gains), helps(split_gains)
    outcome = (
        "reproduced"
        if self_helps and split_helps
        else "partly reproduced"
        if self_helps or split_helps
        else "did not reproduce"
    )

    def shown(d: tuple[float, float]) -> str:
        return f"{d[0]:+.1f} / {d[1]:+.1f}"

    return (
        f"On top-1 ({column}), self-negatives change it by {shown(self_gains)} points (split / single "
        f"embedding) and the split embedding by {shown(split_gains)} (with / without self-negatives); "
        f"noise bar {noise:.1f}. Claim {outcome}: self-negatives "
        f"{'help' if self_helps else 'do not clearly help'}, the split embedding "
        f"{'helps' if split_helps else 'does not clearly help'}."
    )


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

FULL = dict(
    fonts=None,
    sizes=list(range(14, 30, 2)),
    train_pages=400,
    test_pages=60,
    lines_per_page=6,
    steps=250,
    warmup=25,
    page_batch=4,
    line_batch=4,
    negatives=256,
    self_count=20,
    lr=1e-3,
    tau=0.1,
    blank_rate=0.2,
    seeds=3,
)
QUICK = dict(
    FULL,
    fonts=4,
    sizes=[14, 20, 26],
    train_pages=10,
    test_pages=6,
    lines_per_page=4,
    steps=3,
    warmup=1,
    page_batch=2,
    line_batch=2,
    negatives=24,
    self_count=4,
    seeds=1,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run in seconds (a smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    fonts = sorted(FONT_DIR.glob("*.ttf"))
    if not fonts:
        print(f"SKIP: no fonts found in {FONT_DIR}")
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    cfg["steps"] = args.steps or cfg["steps"]
    cfg["seeds"] = args.seeds or cfg["seeds"]
    fonts = fonts[: cfg["fonts"]] if cfg["fonts"] else fonts
    docs = args.docs if args.quick else (args.docs or DOCS)

    use_cache = not args.quick
    lines = cfg["lines_per_page"]
    train_crops, train_pages = load_pages(
        "train", cfg["train_pages"], lines, fonts, cfg["sizes"], 0, use_cache
    )
    test_crops, test_pages = load_pages("test", cfg["test_pages"], lines, fonts, cfg["sizes"], 1, use_cache)
    log(f"rendered {train_crops.shape[0]} train and {test_crops.shape[0]} test lines in {len(fonts)} fonts")
    n_eval = min(cfg["negatives"], 5 * (test_crops.shape[0] - 1))
    negatives = eval_candidates(test_pages, n_eval, seed=2)
    augment = SelfAugmentedNegatives(count=cfg["self_count"])
    g = torch.Generator().manual_seed(3)
    self_copies, self_valid, _ = self_negatives(augment, test_crops[:, 0], cfg["self_count"], g)
    log(f"eval: {n_eval} negatives per query; {int((~self_valid).sum())} self copies dropped")

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        for seed in range(cfg["seeds"]):
            t0 = time.time()
            model, dropped = train(arm, train_crops, train_pages, cfg, seed)
            metrics = evaluate(model, arm, test_crops, negatives, self_copies, self_valid)
            results[arm].append(metrics)
            log(
                f"{arm} seed {seed}: top-1 all {metrics['all']:.1f}, text {metrics['text']:.1f}, "
                f"blank {metrics['blank']:.1f}, text+self {metrics['text_self']:.1f} "
                f"({dropped} copies dropped, {time.time() - t0:.0f}s)"
            )

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"{'Quick run (--quick)' if args.quick else 'Full run'}: {train_crops.shape[0]} train lines "
        f"({cfg['train_pages']} pages), {test_crops.shape[0]} held-out lines ({cfg['test_pages']} pages) "
        f"in {len(fonts)} fonts; {cfg['steps']} steps x {cfg['page_batch'] * cfg['line_batch']} anchors, "
        f"{cfg['negatives']} negatives each; top-1 (%) of the positive among 1 + {n_eval} candidates, "
        f"{cfg['seeds']} seed(s), mean ± std; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/split_embedding.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
