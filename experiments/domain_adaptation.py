"""Claim (GLCL, METHODS.md 3.20): in mean-teacher domain adaptation for segmentation, the local
(pixel SupCon) and the global (prototype InfoNCE) contrastive terms each raise the target IoU of
the lesion class over the mean teacher alone.

    python experiments/domain_adaptation.py            # 10 seeds, about 6 minutes on one CPU thread
    python experiments/domain_adaptation.py --quick    # a few seconds (a smoke test)

Setup: synthetic vessel-like 32x32 grey images with tiny lesions, and a tiny U-Net.

- Images: 2 to 3 bright vessels (smooth random curves, radius 1.3 to 2.2 px) on a dark, smoothly
  textured background; 2 to 4 lesions per image, dark discs (radius 0.7 to 1.6 px) centred on a
  vessel's centre line (a filling defect, like an embolus), plus noise. Labels: 0 background,
  1 vessel, 2 lesion; each lesion is also kept as an instance for the recall.
- Source domain: these images. Target domain: the same generator, then an intensity remap
  x -> 0.15 + 0.7 x^0.8 (brighter background, lower contrast), a Gaussian blur (sigma 0.5 px)
  and more noise (sigma 0.04 on top of 0.03).
- U-Net: 32x32 (8 ch) -> 16x16 (16) -> 8x8 (32) -> decoder at 16x16 and 32x32 with skips, two
  3x3 conv + GroupNorm + ReLU per block; a 1x1 segmentation head (3 classes) and a 1x1-conv
  projection head (-> 16-d) on the last decoder map.
- Training: every arm of a seed starts from the same source-only warm-up (cross-entropy on
  labelled source images), then continues for the same number of steps with its loss, batch 8
  source + 8 target images:
    source only        L_seg
    mean teacher (MT)  L_seg + L_cons
    MT + local         L_seg + L_cons + 0.1 L_pix
    MT + global        L_seg + L_cons + 0.1 L_proto
    MT + both          L_seg + L_cons + 0.1 L_pix + 0.1 L_proto
  L_cons = mean squared difference between the student's softmax on a perturbed target view
  (random gain 0.9..1.1, offset +-0.05, noise 0.03) and the EMA teacher's softmax (decay 0.99)
  on the clean view.
  L_pix = ``pixel_supcon`` (tau 0.1, <= 256 pixels per class, no memory) over the projected
  source and target pixels, labelled by the source ground truth and the teacher's target
  pseudo-labels with confidence >= 0.9 (others ignored). L_proto = ``prototype_info_nce``
  (tau 0.1) between the source (ground truth) and target (pseudo-label) class prototypes. A
  batch where a term has no valid pair (NoPositivePairsError) skips that term. L_seg is
  cross-entropy with the lesion class weighted 3 (lesions cover < 1% of the pixels; unweighted,
  the warm-up often never predicts them). Adam lr 2e-3.
- Metrics on held-out target images (the student; intersections and unions summed over the
  set): lesion IoU, vessel IoU, and small-lesion recall = the share of ground-truth lesions of
  area <= 6 px with at least one pixel predicted as lesion. Also the share of target training
  pixels that the teacher pseudo-labels lesion (confidence >= 0.9), averaged over the
  adaptation steps. Mean and std over seeds; an arm beats another when its mean per-seed
  (paired) difference exceeds 2 standard errors and 0.005.

The full run rewrites the marked block of docs/methods/dense.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import NoPositivePairsError
from contrastkit.losses.pixel import pixel_supcon, prototype_info_nce
from contrastkit.report.blocks import mean_std, print_progress, publish_result
from contrastkit.train.mean_teacher import MeanTeacher, pseudo_labels

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "dense.md"
BEGIN, END = "<!-- domain-adaptation-table:begin -->", "<!-- domain-adaptation-table:end -->"
SIZE, N_CLASSES, LESION = 32, 3, 2
IGNORE = 255
PROJECTION = 16
CONFIDENCE = 0.9
TEMPERATURE = 0.1
CONTRAST_WEIGHT = 0.1
EMA_DECAY = 0.99
LESION_WEIGHT = 3.0
TARGET_REMAP = (0.15, 0.7, 0.8)  # x -> a + b x^gamma
TARGET_BLUR, TARGET_NOISE = 0.5, 0.04  # Gaussian sigmas: blur in px, noise in intensity
LR = 2e-3
SMALL_AREA = 6  # a lesion of at most this many pixels is "small"
MIN_GAIN = 0.005  # an IoU gain must also exceed this to count
ARMS = ("source", "mt", "local", "global", "both")
LABELS = {
    "source": "source only",
    "mt": "mean teacher (MT)",
    "local": "MT + local (pixel SupCon)",
    "global": "MT + global (prototype InfoNCE)",
    "both": "MT + local + global (GLCL)",
}
TERMS = {"source": (), "mt": ("cons",), "local": ("cons", "pix"), "global": ("cons", "proto")}
TERMS["both"] = ("cons", "pix", "proto")

# --------------------------------------------------------------------------------------------
# synthetic vessels with tiny lesions
# --------------------------------------------------------------------------------------------

VESSEL_POINTS = 48


def _curves(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """3 smooth random curves per image: points (n, 3, P, 2) in pixel units and radii (n, 3)."""
    start = torch.rand(n, 3, 2, generator=g) * SIZE
    angle = torch.rand(n, 3, 1, generator=g) * 2 * math.pi
    turns = torch.cumsum(0.15 * torch.randn(n, 3, VESSEL_POINTS, generator=g), dim=2)
    heading = angle + turns
    steps = torch.stack([heading.cos(), heading.sin()], dim=-1)  # unit steps
    centred = torch.cumsum(steps, dim=2) - steps.sum(2, keepdim=True) / 2  # the start mid-curve
    radii = 1.3 + 0.9 * torch.rand(n, 3, generator=g)
    return start[:, :, None, :] + centred, radii


def make_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source-domain images (n, 1, S, S) in [0, 1], labels (n, S, S) (0 background, 1 vessel,
    2 lesion) and lesion instances (n, S, S) (0 none, k = the image's k-th lesion)."""
    points, radii = _curves(n, g)
    n_vessels = torch.randint(2, 4, (n,), generator=g)
    present = torch.arange(3)[None, :] < n_vessels[:, None]  # (n, 3)
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1).reshape(-1, 2)  # (S*S, 2) x, y
    dist = torch.cdist(points.reshape(n, -1, 2), grid[None].expand(n, -1, -1))  # (n, 3P, S*S)
    dist = dist.view(n, 3, VESSEL_POINTS, -1).amin(2)  # (n, 3, S*S) distance to each centre line
    inside = (radii[..., None] - dist).masked_fill(~present[..., None], -1e3)  # > 0 inside a vessel
    vessel = inside.amax(1) > 0
    vessel_soft = torch.sigmoid(2.0 * inside.amax(1))

    n_lesions = torch.randint(2, 5, (n,), generator=g)
    vessel_of = (torch.rand(n, 4, generator=g) * n_vessels[:, None]).long()  # a present vessel
    point_of = torch.randint(8, VESSEL_POINTS - 8, (n, 4), generator=g)
    centres = points[torch.arange(n)[:, None], vessel_of, point_of]  # (n, 4, 2)
    lesion_r = torch.minimum(0.7 + 0.9 * torch.rand(n, 4, generator=g), radii.gather(1, vessel_of) - 0.3)
    lesion_dist = torch.cdist(centres, grid[None].expand(n, -1, -1))  # (n, 4, S*S)
    lesion_in = (lesion_dist < lesion_r[..., None]) & (
        torch.arange(4)[None, :, None] < n_lesions[:, None, None]
    )
    lesion_soft = torch.sigmoid(6.0 * (lesion_r[..., None] - lesion_dist) + 1.5) * lesion_in.any(
        1, keepdim=True
    )
    instances = torch.where(lesion_in.any(1), lesion_in.float().argmax(1) + 1, 0)

    texture = F.interpolate(
        torch.rand(n, 1, 4, 4, generator=g), size=SIZE, mode="bilinear", align_corners=False
    )
    image = 0.08 + 0.1 * texture.reshape(n, -1) + 0.72 * vessel_soft
    lesion_weight = lesion_soft.amax(1)
    image = image * (1 - lesion_weight) + 0.22 * lesion_weight
    image = (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    labels = torch.where(instances > 0, LESION, vessel.long())
    shape = (n, SIZE, SIZE)
    return image.view(n, 1, SIZE, SIZE), labels.view(shape), instances.view(shape)


def to_target(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The target domain: intensity remap x -> a + b x^gamma (TARGET_REMAP), Gaussian blur
    (TARGET_BLUR px), added noise (TARGET_NOISE), clamped to [0, 1]."""
    offset, gain, gamma = TARGET_REMAP
    remapped = offset + gain * images.clamp_min(0) ** gamma
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * TARGET_BLUR**2))
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.pad(remapped, (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 5))
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, 5, 1))
    return (blurred + TARGET_NOISE * torch.randn(images.shape, generator=g)).clamp(0, 1)


def perturb(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The student's view of a target batch: random gain (0.8..1.2) and offset (+-0.1), noise 0.05."""
    n = images.shape[0]
    gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    offset = 0.1 * torch.rand(n, 1, 1, 1, generator=g) - 0.05
    return images * gain + offset + 0.03 * torch.randn(images.shape, generator=g)


# --------------------------------------------------------------------------------------------
# the network
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


class SegNet(nn.Module):
    """A 2-level U-Net (32 -> 16 -> 8 -> 16 -> 32 px) with a segmentation head and a projection
    head on the last decoder map; ``forward(x)`` returns (logits (B, K, S, S), features
    (B, PROJECTION, S, S))."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.bottleneck = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.dec1, self.dec2 = block(4 * w + 2 * w, 2 * w), block(2 * w + w, w)
        self.classifier = nn.Conv2d(w, N_CLASSES, 1)
        self.projection = nn.Sequential(nn.Conv2d(w, 32, 1), nn.ReLU(), nn.Conv2d(32, PROJECTION, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d1 = self.dec1(torch.cat([F.interpolate(b, scale_factor=2.0), e2], dim=1))
        d2 = self.dec2(torch.cat([F.interpolate(d1, scale_factor=2.0), e1], dim=1))
        return self.classifier(d2), self.projection(d2)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_seg: cross-entropy with the lesion class weighted LESION_WEIGHT (it covers < 1% of pixels)."""
    weight = torch.ones(N_CLASSES, dtype=logits.dtype)
    weight[LESION] = LESION_WEIGHT
    return F.cross_entropy(logits, labels, weight=weight)


def _optional(term) -> torch.Tensor | None:
    """The term's value, or None for a batch where it has no valid pair."""
    try:
        return term()
    except NoPositivePairsError:
        return None


def adaptation_loss(
    arm: str,
    student: SegNet,
    mean_teacher: MeanTeacher | None,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    x_t: torch.Tensor,
    g: torch.Generator,
) -> tuple[torch.Tensor, dict[str, bool]]:
    """L = L_seg + L_cons + 0.1 L_pix + 0.1 L_proto, with the arm's terms only. Returns the loss
    a record of the batch: which contrastive terms were used, and the share of target pixels
    pseudo-labelled lesion."""
    terms = TERMS[arm]
    logits_s, feat_s = student(x_s)
    loss = segmentation_loss(logits_s, y_s)
    used = {"pix": False, "proto": False, "lesion_pseudo": 0.0}
    if not terms:
        return loss, used
    logits_t, feat_t = student(perturb(x_t, g))
    teacher_probs = mean_teacher(x_t)[0].softmax(dim=1)
    loss = loss + (logits_t.softmax(dim=1) - teacher_probs).square().mean()
    y_t = pseudo_labels(teacher_probs, CONFIDENCE, IGNORE)
    used["lesion_pseudo"] = float((y_t == LESION).float().mean())
    if "pix" in terms:
        features, labels = torch.cat([feat_s, feat_t]), torch.cat([y_s, y_t])
        pix = _optional(lambda: pixel_supcon(features, labels, IGNORE, 256, TEMPERATURE, generator=g))
        if pix is not None:
            loss, used["pix"] = loss + CONTRAST_WEIGHT * pix, True
    if "proto" in terms:
        proto = _optional(
            lambda: prototype_info_nce(feat_s, y_s, feat_t, y_t, N_CLASSES, TEMPERATURE, ignore_index=IGNORE)
        )
        if proto is not None:
            loss, used["proto"] = loss + CONTRAST_WEIGHT * proto, True
    return loss, used


def warm_up(source, *, steps: int, batch: int, seed: int) -> SegNet:
    """Source-only cross-entropy training from a seeded init: the common start of every arm."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SegNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    images, labels = source
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        loss = segmentation_loss(net(images[idx])[0], labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def adapt(arm: str, start: SegNet, source, target: torch.Tensor, *, steps: int, batch: int, seed: int):
    """Continue ``start`` (a copy) for ``steps`` with the arm's loss; returns the student and
    averages over the steps of ``adaptation_loss``'s record (share of steps using each term, share
    of target pixels pseudo-labelled lesion)."""
    g = torch.Generator().manual_seed(1000 + seed)
    student = SegNet()
    student.load_state_dict(start.state_dict())
    mean_teacher = MeanTeacher(student, decay=EMA_DECAY) if TERMS[arm] else None
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    images, labels = source
    counts = {"pix": 0.0, "proto": 0.0, "lesion_pseudo": 0.0}
    for _ in range(steps):
        idx_s = torch.randint(0, images.shape[0], (batch,), generator=g)
        idx_t = torch.randint(0, target.shape[0], (batch,), generator=g)
        loss, used = adaptation_loss(
            arm, student, mean_teacher, images[idx_s], labels[idx_s], target[idx_t], g
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if mean_teacher is not None:
            mean_teacher.update()
        for k in counts:
            counts[k] += used[k]
    return student, {k: v / steps for k, v in counts.items()}


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def class_iou(pred: torch.Tensor, target: torch.Tensor, c: int) -> float:
    """|pred = c and target = c| / |pred = c or target = c| over the whole set (1 if both empty)."""
    p, t = pred == c, target == c
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def small_lesion_recall(pred: torch.Tensor, instances: torch.Tensor, max_area: int = SMALL_AREA) -> float:
    """Share of the lesions of area <= max_area (pixels of one instance id within one image)
    with at least one pixel predicted as the lesion class; NaN if there are none."""
    hit = total = 0
    for p, inst in zip(pred, instances, strict=True):
        for k in inst.unique().tolist():
            if k == 0:
                continue
            region = inst == k
            if int(region.sum()) <= max_area:
                total += 1
                hit += bool((p[region] == LESION).any())
    return hit / total if total else float("nan")


@torch.no_grad()
def evaluate(
    net: SegNet, images: torch.Tensor, labels: torch.Tensor, instances: torch.Tensor
) -> dict[str, float]:
    """Lesion IoU, small-lesion recall and vessel IoU of the net's argmax on images (B, 1, S, S)."""
    net.eval()
    pred = torch.cat([net(chunk)[0].argmax(1) for chunk in images.split(256)])
    net.train()
    return {
        "lesion_iou": class_iou(pred, labels, LESION),
        "small_recall": small_lesion_recall(pred, instances),
        "vessel_iou": class_iou(pred, labels, 1),
    }


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = ("lesion_iou", "small_recall", "vessel_iou", "source_lesion_iou", "lesion_pseudo")
HEADER = (
    "target lesion IoU ↑",
    "target small-lesion recall ↑",
    "target vessel IoU",
    "source lesion IoU",
    "target px pseudo-labelled lesion (%)",
)


def _cell(values: list[float]) -> str:
    return mean_std(values, 3)


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(_cell([r[c] for r in runs]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def compare(results, better: str, worse: str, column: str = "lesion_iou") -> tuple[float, float, bool]:
    """(mean paired difference d of ``column``, its 2 standard errors, whether d exceeds both
    those and MIN_GAIN); the standard error is NaN with one seed (then d > MIN_GAIN decides).

    Paired by seed: the arms of a seed share its warm-up start, data order and test set, so the
    seed-to-seed spread of the start cancels in the per-seed differences."""
    diffs = [a[column] - b[column] for a, b in zip(results[better], results[worse], strict=True)]
    diff = statistics.fmean(diffs)
    if len(diffs) < 2:
        return diff, math.nan, diff > MIN_GAIN
    two_se = 2 * statistics.stdev(diffs) / len(diffs) ** 0.5
    return diff, two_se, diff > max(two_se, MIN_GAIN)


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    parts, helps = [], {}
    for better, worse, name in (
        ("mt", "source", "MT vs source only"),
        ("local", "mt", "+ local vs MT"),
        ("global", "mt", "+ global vs MT"),
        ("both", "mt", "+ both vs MT"),
    ):
        diff, two_se, helps[better] = compare(results, better, worse)
        wins = sum(
            a["lesion_iou"] > b["lesion_iou"] for a, b in zip(results[better], results[worse], strict=True)
        )
        judged = "a gain beyond 2 SE and 0.005" if helps[better] else "no clear gain"
        parts.append(
            f"{name} {diff:+.3f} (2 SE {two_se:.3f}, higher in {wins}/{len(results[better])} seeds; {judged})"
        )
    outcome = ("did not reproduce", "partly reproduced", "reproduced")[helps["local"] + helps["global"]]
    return (
        "Target lesion IoU, paired by seed: "
        + "; ".join(parts)
        + ". Claim (the local and the global term each raise target IoU over the mean teacher alone) "
        + f"{outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (10; 1 with --quick)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="source-only warm-up steps (400; 5 with --quick)"
    )
    parser.add_argument("--steps", type=int, default=None, help="adaptation steps (300; 5 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    warmup = args.warmup or (5 if args.quick else 400)
    steps = args.steps or (5 if args.quick else 300)
    seeds = args.seeds or (1 if args.quick else 10)
    n_train, n_test = (64, 32) if args.quick else (1000, 300)
    batch = 8
    docs = args.docs if args.quick else (args.docs or DOCS)
    g = torch.Generator().manual_seed(0)
    source = make_images(n_train, g)[:2]
    target_train = to_target(make_images(n_train, g)[0], g)
    test_images, test_labels, test_instances = make_images(n_test, torch.Generator().manual_seed(10_000))
    target_test = to_target(test_images, torch.Generator().manual_seed(10_001))

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        start_net = warm_up(source, steps=warmup, batch=batch, seed=seed)
        for arm in ARMS:
            t0 = time.time()
            student, used = adapt(arm, start_net, source, target_train, steps=steps, batch=batch, seed=seed)
            metrics = evaluate(student, target_test, test_labels, test_instances)
            on_source = evaluate(student, test_images, test_labels, test_instances)
            metrics["source_lesion_iou"] = on_source["lesion_iou"]
            metrics["lesion_pseudo"] = 100 * used["lesion_pseudo"] if TERMS[arm] else math.nan
            results[arm].append(metrics)
            print_progress(
                start,
                f"{arm} seed {seed}",
                metrics,
                t0,
                note=f"; pixel term in {used['pix']:.0%}, prototype term in {used['proto']:.0%} of steps",
            )

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    mode = "--quick" if args.quick else "full run"
    caption = (
        f"Synthetic {SIZE}x{SIZE} vessel images with tiny lesions ({mode}):"
        f" {warmup} source-only warm-up steps, then {steps} steps per arm, batch {batch} source + {batch} "
        f"target; {seeds} seed(s), mean ± std; test: {n_test} held-out target images (lesion recall: "
        f"lesions of <= {SMALL_AREA} px); run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/domain_adaptation.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
