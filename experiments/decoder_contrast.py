"""Claim (DeCon, METHODS.md 3.15): pre-training the decoder too, with a weighted encoder +
decoder dense contrast, gives better segmentation after fine-tuning on few masks than
encoder-only dense contrast.

    python experiments/decoder_contrast.py            # 2 seeds, about 10 min on one CPU thread
    python experiments/decoder_contrast.py --quick    # a few seconds (a smoke test)

Setup: procedurally generated 32x32 RGB images with per-pixel masks, and a tiny U-Net.

- Images: a smooth random-colour background with noise and 3 to 5 objects. Class 1 = discs
  with horizontal stripes, 2 = squares with vertical stripes, 3 = diamonds with a checkerboard.
  Sizes, positions, colours (independent of the class) and stripe phases are random; later
  objects cover earlier ones. Labels: 0 background, 1..3 the object classes.
- U-Net: encoder 32x32 (8 ch) -> 16x16 (16) -> 8x8 (32, the bottleneck); decoder level 1 at
  16x16 (16 ch, skip from the encoder's 16x16 map), level 2 at 32x32 (8 ch, skip from 32x32).
  Two 3x3 conv + GroupNorm + ReLU per block. Each contrasted level has its own 1x1-conv projection
  head (-> 16-d). Channel dropout (``WeightedMultiLevelContrast.drop_channels``) acts on the
  bottleneck and both skips as fed to the decoder, during pre-training only.
- Pre-training on an unlabelled pool: two views per image (random per-channel gain and offset,
  Gaussian noise; view 2 flipped horizontally at random, its maps flipped back so that locations
  correspond); ``dense_info_nce`` (tau 0.2, negatives = every location of the batch, 32 sampled
  locations per image and level) on the bottleneck (encoder) and on both decoder levels (DeCon
  multi-level, uniform level weights). Arms: encoder-only (alpha = 1; the decoder stays at its
  random init) and DeCon alpha in {0.25, 0.5, 0.75}, each with channel dropout p = 0 and 0.2.
  A random-init row (no pre-training) is the floor. Adam lr 1e-3.
- Fine-tuning: the whole U-Net plus a 1x1 segmentation head, cross-entropy, on 1% and 10% of the
  pool's masks (Adam lr 1e-3). Metric: mIoU over the 4 classes on a held-out test set
  (intersections and unions summed over the set). Mean and std over seeds.

The full run rewrites the marked block of docs/methods/dense.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.losses.dense import WeightedMultiLevelContrast, dense_info_nce
from contrastkit.report.blocks import clear_gain, mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "dense.md"
BEGIN, END = "<!-- decoder-contrast-table:begin -->", "<!-- decoder-contrast-table:end -->"
SIZE, N_CLASSES = 32, 4
TEMPERATURE, LOCATIONS, PROJECTION = 0.2, 32, 16
DROPOUT = 0.2
ALPHAS = (0.25, 0.5, 0.75)
FRACTIONS = (0.01, 0.10)
MIN_GAIN = 0.005  # an mIoU gain must also exceed this to count

# --------------------------------------------------------------------------------------------
# procedural images with masks
# --------------------------------------------------------------------------------------------


def make_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) images in about [0, 1] and (n, 32, 32) int64 masks with classes 0..3."""
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    low = torch.rand(n, 3, 2, 2, generator=g)
    images = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=True) * 0.6 + 0.2
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    n_objects = torch.randint(3, 6, (n,), generator=g)
    for slot in range(5):
        present = (slot < n_objects)[:, None, None]
        cls = torch.randint(1, N_CLASSES, (n,), generator=g)
        cy, cx = (torch.rand(2, n, 1, 1, generator=g) * (SIZE - 8) + 4).unbind(0)
        radius = torch.rand(n, 1, 1, generator=g) * 4 + 4
        dy, dx = ys - cy, xs - cx
        shapes = torch.stack(
            [
                dy.square() + dx.square() <= radius.square(),  # disc
                (dy.abs() <= radius * 0.85) & (dx.abs() <= radius * 0.85),  # square
                dy.abs() + dx.abs() <= radius * 1.1,  # diamond
            ]
        )
        inside = shapes[cls - 1, torch.arange(n)] & present
        phase = torch.randint(0, 4, (n, 1, 1), generator=g)
        textures = torch.stack(
            [
                ((ys.long() + phase) // 2) % 2,  # horizontal stripes
                ((xs.long() + phase) // 2) % 2,  # vertical stripes
                (((ys.long() + phase) // 2) + ((xs.long() + phase) // 2)) % 2,  # checkerboard
            ]
        ).float()
        texture = textures[cls - 1, torch.arange(n)]
        colour_a, colour_b = torch.rand(2, n, 3, 1, 1, generator=g).unbind(0)
        paint = colour_a * texture[:, None] + colour_b * (1 - texture[:, None])
        images = torch.where(inside[:, None], paint, images)
        masks = torch.where(inside, cls[:, None, None], masks)
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    return images, masks


def augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Photometric view: per-image, per-channel gain in [0.6, 1.4] and offset in [-0.2, 0.2], noise."""
    n = images.shape[0]
    gain = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.6
    offset = torch.rand(n, 3, 1, 1, generator=g) * 0.4 - 0.2
    return images * gain + offset + 0.05 * torch.randn(images.shape, generator=g)


# --------------------------------------------------------------------------------------------
# tiny U-Net
# --------------------------------------------------------------------------------------------


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(4, c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(4, c_out),
        nn.ReLU(),
    )


def head(c_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, 32, 1), nn.ReLU(), nn.Conv2d(32, PROJECTION, 1))


class TinyUNet(nn.Module):
    """Encoder 32 -> 16 -> 8 and a two-level decoder; ``forward`` returns the bottleneck and the
    decoder maps (level 1 at 16x16, level 2 at 32x32). ``drop`` is applied to every encoder map
    fed to the decoder (identity by default)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.bottleneck = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.dec1, self.dec2 = block(4 * w + 2 * w, 2 * w), block(2 * w + w, w)
        self.channels = {"encoder": 4 * w, "levels": (2 * w, w)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder maps at 32x32, 16x16 and 8x8 (the bottleneck)."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return e1, e2, self.bottleneck(F.max_pool2d(e2, 2))

    def forward(self, x: torch.Tensor, drop=lambda t: t) -> tuple[torch.Tensor, list[torch.Tensor]]:
        e1, e2, b = self.encode(x)
        d1 = self.dec1(torch.cat([F.interpolate(drop(b), scale_factor=2.0), drop(e2)], dim=1))
        d2 = self.dec2(torch.cat([F.interpolate(d1, scale_factor=2.0), drop(e1)], dim=1))
        return b, [d1, d2]


def pretrain(arm: tuple[float, float], pool: torch.Tensor, *, steps: int, batch: int, seed: int) -> TinyUNet:
    """Dense contrastive pre-training of a TinyUNet; arm = (alpha, channel dropout p)."""
    alpha, p = arm
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = TinyUNet()
    heads = nn.ModuleList([head(net.channels["encoder"]), *(head(c) for c in net.channels["levels"])])
    level_loss = functools.partial(
        dense_info_nce, temperature=TEMPERATURE, max_locations=LOCATIONS, generator=g
    )
    criterion = WeightedMultiLevelContrast(level_loss, alpha=alpha, channel_dropout_p=p, generator=g)
    optimizer = torch.optim.Adam([*net.parameters(), *heads.parameters()], lr=1e-3)
    for _ in range(steps):
        images = pool[torch.randint(0, pool.shape[0], (batch,), generator=g)]
        flip = torch.rand(batch, generator=g) < 0.5
        v1 = augment(images, g)
        v2 = augment(images, g)
        v2 = torch.where(flip[:, None, None, None], v2.flip(-1), v2)

        def maps(view, flipped):
            b, decoded = (net.encode(view)[2], []) if alpha == 1 else net(view, criterion.drop_channels)
            projected = [h(m) for h, m in zip(heads, [b, *decoded], strict=False)]
            if flipped is not None:
                projected = [torch.where(flipped[:, None, None, None], m.flip(-1), m) for m in projected]
            return projected

        z1, z2 = maps(v1, None), maps(v2, flip)
        loss = criterion((z1[0], z2[0]), list(zip(z1[1:], z2[1:], strict=True)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


# --------------------------------------------------------------------------------------------
# fine-tuning and mIoU
# --------------------------------------------------------------------------------------------


class Segmenter(nn.Module):
    def __init__(self, net: TinyUNet) -> None:
        super().__init__()
        self.net = net
        self.classifier = nn.Conv2d(net.channels["levels"][-1], N_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.net(x)[1][-1])


def fine_tune(net: TinyUNet, images, masks, *, steps: int, batch: int, seed: int) -> Segmenter:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Segmenter(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (min(batch, images.shape[0]),), generator=g)
        loss = F.cross_entropy(model(images[idx]), masks[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def mean_iou(pred: torch.Tensor, target: torch.Tensor, n_classes: int = N_CLASSES) -> float:
    """Mean over classes of |pred = c and target = c| / |pred = c or target = c|, summed over the
    whole set (a class absent from both counts as IoU 1)."""
    ious = []
    for c in range(n_classes):
        p, t = pred == c, target == c
        union = int((p | t).sum())
        ious.append(1.0 if union == 0 else int((p & t).sum()) / union)
    return sum(ious) / n_classes


@torch.no_grad()
def evaluate(model: Segmenter, images: torch.Tensor, masks: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(chunk).argmax(1) for chunk in images.split(256)])
    return mean_iou(pred, masks)


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------


def arm_label(arm) -> str:
    if arm is None:
        return "random init (no pre-training)"
    alpha, p = arm
    if alpha == 1.0:
        return "encoder-only dense contrast"
    return f"DeCon α={alpha}, dropout {p}"


def _cell(values: list[float]) -> str:
    return mean_std(values, 3)


def format_table(results: dict) -> str:
    header = [f"mIoU, {round(f * 100)}% masks ↑" for f in FRACTIONS]
    lines = ["| pre-training | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(f"| {arm_label(arm)} | " + " | ".join(_cell(runs[f]) for f in FRACTIONS) + " |")
    return "\n".join(lines)


def compare(a: list[float], b: list[float]) -> tuple[float, bool]:
    """(mean of a - mean of b, whether it exceeds 2 standard errors and MIN_GAIN)."""
    return clear_gain(a, b, MIN_GAIN)


def verdict(results: dict) -> str:
    encoder_only = results[(1.0, 0.0)]
    default = results[(0.5, DROPOUT)]
    parts, held = [], 0
    for f in FRACTIONS:
        diff, better = compare(default[f], encoder_only[f])
        held += better
        best = max(ALPHAS, key=lambda a: max(statistics.fmean(results[(a, p)][f]) for p in (0.0, DROPOUT)))
        dropout_gain = statistics.fmean(
            statistics.fmean(results[(a, DROPOUT)][f]) - statistics.fmean(results[(a, 0.0)][f])
            for a in ALPHAS
        )
        parts.append(
            f"{round(f * 100)}% masks: DeCon α=0.5 + dropout vs encoder-only {diff:+.3f} "
            f"({'a gain beyond 2 SE and 0.005' if better else 'no clear gain'}), best α {best}, "
            f"dropout effect (mean over α) {dropout_gain:+.3f}"
        )
    outcome = ("did not reproduce", "partly reproduced", "reproduced")[held]
    return (
        "; ".join(parts)
        + f". Claim (DeCon's encoder + decoder pre-training beats encoder-only dense contrast after "
        f"fine-tuning on 1% and 10% of the masks) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (2; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="pre-training steps (300; 3 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    steps = args.steps or (3 if args.quick else 300)
    ft_steps = 3 if args.quick else 200
    seeds = args.seeds or (1 if args.quick else 2)
    n_pool, n_test = (200, 64) if args.quick else (2000, 500)
    batch = 16
    docs = args.docs if args.quick else (args.docs or DOCS)
    pool, pool_masks = make_images(n_pool, torch.Generator().manual_seed(0))
    test, test_masks = make_images(n_test, torch.Generator().manual_seed(10_000))

    arms = [None, (1.0, 0.0)] + [(a, p) for a in ALPHAS for p in (0.0, DROPOUT)]
    results: dict = {arm: {f: [] for f in FRACTIONS} for arm in arms}
    for seed in range(seeds):
        labelled = torch.randperm(n_pool, generator=torch.Generator().manual_seed(100 + seed))
        for arm in arms:
            t0 = time.time()
            if arm is None:
                torch.manual_seed(seed)
                net = TinyUNet()
            else:
                net = pretrain(arm, pool, steps=steps, batch=batch, seed=seed)
            state = net.state_dict()
            scores = []
            for f in FRACTIONS:
                idx = labelled[: max(2, round(f * n_pool))]
                fresh = TinyUNet()
                fresh.load_state_dict(state)
                model = fine_tune(fresh, pool[idx], pool_masks[idx], steps=ft_steps, batch=batch, seed=seed)
                score = evaluate(model, test, test_masks)
                results[arm][f].append(score)
                scores.append(f"{round(f * 100)}% {score:.3f}")
            print(
                f"[{time.time() - start:6.1f}s] seed {seed} {arm_label(arm)}: mIoU "
                + ", ".join(scores)
                + f" ({time.time() - t0:.0f}s)",
                flush=True,
            )

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Procedural 32x32 images with masks ({'--quick' if args.quick else 'full run'}): pool of {n_pool} "
        f"images, {steps} pre-training steps x batch {batch} (2 views), fine-tuning {ft_steps} steps on "
        f"1% / 10% of the pool's masks; mIoU over 4 classes on {n_test} test images; {seeds} seed(s), "
        f"mean ± std; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/decoder_contrast.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
