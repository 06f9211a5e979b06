"""Claim (UniMatch, METHODS.md 3.13): group RnC beats same-part InfoNCE on correspondence error,
and its errors fall in semantically near parts.

    python experiments/group_rnc.py            # 3 seeds, 3-6 minutes on one CPU thread
    python experiments/group_rnc.py --quick    # a few seconds (a smoke test)

Setup: synthetic part-structured point clouds (stick figures) with ground-truth correspondence.

- Shape: 10 parts (torso, head, left/right upper/lower arm and leg), each a tube of radius r
  around one bone of a fixed tree skeleton. Each shape draws its own proportions: bone lengths
  x U(0.6, 1.6) (log-uniform; left and right alike), radii x U(0.7, 1.4), every bone turned by
  up to 0.2 rad, points jittered by N(0, 0.01^2).
- Groups: each part split into 3 segments along its bone (proximal, middle, distal): G = 30
  groups, 32 points each (960 points per shape). A point's canonical coordinates are its bone and
  its position t in [0, 1] along it; the same (bone, t) on another shape is its ground truth.
- Graded part similarity: Dist = 1 - cos of bag-of-words embeddings of the group names
  ("left upper arm distal", "torso middle", ...): 0 for the matched group, 0.25 for names
  sharing 3 of 4 words (same part, other segment; or one word changed: left/right,
  upper/lower, arm/leg), up to 1 for names with no word in common.
- Encoder (shared by both shapes): an MLP (10 -> 64 -> 64 -> 32) on per-point inputs: the
  coordinates (centred, divided by the shape's RMS radius) and local features of the 16 nearest
  neighbours (the normalised covariance eigenvalues, the neighbourhood's RMS spread and the
  absolute principal direction).
- Training: each step one random pair of 64 training shapes; 16 points per group and shape
  (480 per shape); Adam lr 1e-3. Arms (same seeds and pairs):
  - same-part InfoNCE: ``cross_modal_supcon`` across the two shapes (positives: every point of
    the same group on the other shape; cosine similarity, tau 0.1, both directions);
  - group RnC: ``group_rank_n_contrast`` (l2 similarity, tau 2, cross-shape pairs, both ways).
- Test: 12 pairs of unseen shapes, all 960 points of x matched to their nearest neighbour on y in
  the arm's own geometry (cosine for InfoNCE, l2 for RnC). Correspondence error: the geodesic
  distance on y's skeleton (along the bones) between the matched point's (bone, t) and the
  ground truth, in % of y's geodesic diameter. Where the errors fall: the share of points matched
  into another group, and for those the mean Dist(true group, matched group) and the share at
  Dist <= 0.25 (the semantically nearest groups). Mean and std over seeds.

The full run rewrites the marked block of docs/methods/ranking.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.losses.crossmodal import cross_modal_supcon
from contrastkit.losses.ranking import group_rank_n_contrast, sample_per_group
from contrastkit.report.blocks import clear_gain, mean_std, print_progress, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "ranking.md"
BEGIN, END = "<!-- group-rnc-table:begin -->", "<!-- group-rnc-table:end -->"
ARMS = ("infonce", "rnc")
LABELS = {"infonce": "same-part InfoNCE", "rnc": "group RnC"}
INFONCE_TAU, RNC_TAU = 0.1, 2.0
NEIGHBOURS = 16
NEAR = 0.25  # the smallest non-zero group distance: names sharing 3 of 4 words
MIN_GAIN = 0.5  # a geodesic-error gain (in % of the diameter) must also exceed this to count
MIN_DIST_GAIN = 0.02  # and a gain in the mean Dist of wrong-group matches this much

# --------------------------------------------------------------------------------------------
# the skeleton, its part names and their distances
# --------------------------------------------------------------------------------------------

# joints: 0 pelvis, 1 chest, 2 head top, 3/4 left elbow/hand, 5/6 right elbow/hand,
# 7/8 left knee/foot, 9/10 right knee/foot.
# bones: (name, parent joint, child joint, direction, length, radius, proportion key)
BONES = (
    ("torso", 0, 1, (0.0, 1.0, 0.0), 0.60, 0.15, "torso"),
    ("head", 1, 2, (0.0, 1.0, 0.0), 0.30, 0.10, "head"),
    ("left upper arm", 1, 3, (1.0, -0.3, 0.0), 0.35, 0.05, "upper arm"),
    ("left lower arm", 3, 4, (1.0, -0.6, 0.2), 0.35, 0.04, "lower arm"),
    ("right upper arm", 1, 5, (-1.0, -0.3, 0.0), 0.35, 0.05, "upper arm"),
    ("right lower arm", 5, 6, (-1.0, -0.6, 0.2), 0.35, 0.04, "lower arm"),
    ("left upper leg", 0, 7, (0.25, -1.0, 0.0), 0.45, 0.07, "upper leg"),
    ("left lower leg", 7, 8, (0.1, -1.0, -0.1), 0.45, 0.05, "lower leg"),
    ("right upper leg", 0, 9, (-0.25, -1.0, 0.0), 0.45, 0.07, "upper leg"),
    ("right lower leg", 9, 10, (-0.1, -1.0, -0.1), 0.45, 0.05, "lower leg"),
)
N_JOINTS = 11
SEGMENTS = ("proximal", "middle", "distal")
PROPORTIONS = sorted({b[6] for b in BONES})
GROUP_NAMES = tuple(f"{bone[0]} {segment}" for bone in BONES for segment in SEGMENTS)


def name_distances(names: tuple[str, ...]) -> torch.Tensor:
    """(G, G) 1 - cos of the bag-of-words embeddings of the names; exactly 0 on the diagonal."""
    vocabulary = sorted({w for name in names for w in name.split()})
    bags = torch.tensor(
        [[float(w in name.split()) for w in vocabulary] for name in names], dtype=torch.float64
    )
    bags = F.normalize(bags, dim=1)
    dist = (1 - bags @ bags.T).clamp_min(0)
    dist = (dist + dist.T) / 2
    return dist.fill_diagonal_(0).round(decimals=12)


GROUP_DIST = name_distances(GROUP_NAMES)


class Shape(NamedTuple):
    """A point cloud with its ground truth: points (N, 3), group (N,), bone (N,), t (N,) in
    [0, 1] along the bone, and its skeleton's bone lengths (B,) and joint distances (J, J)."""

    points: torch.Tensor
    group: torch.Tensor
    bone: torch.Tensor
    t: torch.Tensor
    lengths: torch.Tensor
    joint_dist: torch.Tensor


def _rotate(direction: torch.Tensor, g: torch.Generator, max_angle: float) -> torch.Tensor:
    """The unit direction turned by up to ``max_angle`` about a random axis (Rodrigues)."""
    axis = F.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
    angle = max_angle * (2 * torch.rand((), generator=g, dtype=torch.float64) - 1)
    d = F.normalize(direction, dim=0)
    return (
        d * torch.cos(angle)
        + torch.linalg.cross(axis, d) * torch.sin(angle)
        + axis * (axis @ d) * (1 - torch.cos(angle))
    )


def _joint_distances(lengths: torch.Tensor) -> torch.Tensor:
    """(J, J) path lengths along the skeleton tree (Floyd-Warshall on 11 joints)."""
    dist = torch.full((N_JOINTS, N_JOINTS), math.inf, dtype=torch.float64)
    dist.fill_diagonal_(0)
    for b, bone in enumerate(BONES):
        dist[bone[1], bone[2]] = dist[bone[2], bone[1]] = lengths[b]
    for k in range(N_JOINTS):
        dist = torch.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
    return dist


def make_shape(g: torch.Generator, per_group: int, noise: float = 0.01) -> Shape:
    """A stick figure with its own proportions, ``per_group`` points in each of the 30 groups."""
    scale = {
        k: math.exp(math.log(0.6) + math.log(1.6 / 0.6) * float(torch.rand((), generator=g)))
        for k in PROPORTIONS
    }
    thick = 0.7 + 0.7 * torch.rand(len(BONES), generator=g, dtype=torch.float64)
    joints = torch.zeros(N_JOINTS, 3, dtype=torch.float64)
    lengths = torch.zeros(len(BONES), dtype=torch.float64)
    points, groups, bones, ts = [], [], [], []
    for b, (_, parent, child, direction, length, radius, key) in enumerate(BONES):
        d = _rotate(torch.tensor(direction, dtype=torch.float64), g, 0.2)
        lengths[b] = length * scale[key]
        joints[child] = joints[parent] + lengths[b] * d
        u = F.normalize(torch.linalg.cross(d, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0)
        v = torch.linalg.cross(d, u)
        for s in range(len(SEGMENTS)):
            t = (s + torch.rand(per_group, generator=g, dtype=torch.float64)) / len(SEGMENTS)
            theta = 2 * math.pi * torch.rand(per_group, generator=g, dtype=torch.float64)
            ring = radius * thick[b] * (torch.cos(theta)[:, None] * u + torch.sin(theta)[:, None] * v)
            points.append(joints[parent] + t[:, None] * lengths[b] * d + ring)
            groups.append(torch.full((per_group,), b * len(SEGMENTS) + s))
            bones.append(torch.full((per_group,), b))
            ts.append(t)
    cloud = torch.cat(points)
    cloud = cloud + noise * torch.randn(cloud.shape, generator=g, dtype=torch.float64)
    return Shape(
        cloud, torch.cat(groups), torch.cat(bones), torch.cat(ts), lengths, _joint_distances(lengths)
    )


def geodesic(shape: Shape, bone_a: torch.Tensor, t_a: torch.Tensor, bone_b: torch.Tensor, t_b: torch.Tensor):
    """Skeleton geodesic on ``shape`` between (bone_a, t_a) and (bone_b, t_b), elementwise:
    along the bone if they share it, else through the nearer joint ends (a tree path)."""
    ends = torch.tensor([[bone[1], bone[2]] for bone in BONES])
    la, lb = shape.lengths[bone_a], shape.lengths[bone_b]
    to_a = torch.stack([t_a * la, (1 - t_a) * la], 1)  # to the parent / child joint
    to_b = torch.stack([t_b * lb, (1 - t_b) * lb], 1)
    through = to_a[:, :, None] + shape.joint_dist[ends[bone_a][:, :, None], ends[bone_b][:, None, :]]
    through = (through + to_b[:, None, :]).flatten(1).amin(1)
    return torch.where(bone_a == bone_b, (t_a - t_b).abs() * la, through)


def point_inputs(points: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """(N, 10) encoder inputs: normalised coordinates and local shape of the k nearest points."""
    centred = points - points.mean(0)
    rms = centred.pow(2).sum(1).mean().sqrt()
    coords = centred / rms
    nearest = torch.cdist(coords, coords).topk(k, largest=False).indices
    local = coords[nearest] - coords[nearest].mean(1, keepdim=True)
    cov = local.transpose(1, 2) @ local / k
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    spread = eigenvalues.sum(1, keepdim=True)
    return torch.cat(
        [coords, eigenvalues / spread, spread.sqrt() * 10, eigenvectors[:, :, -1].abs()], 1
    ).float()


# --------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------


def encoder() -> nn.Module:
    """The per-point MLP, 10 inputs -> 32-d features."""
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))


def pair_loss(arm: str, fx, fy, gx, gy, per_group: int, g: torch.Generator) -> torch.Tensor:
    """The arm's loss on one pair of shapes, ``per_group`` points per group drawn from each."""
    if arm == "rnc":
        return group_rank_n_contrast(fx, fy, gx, gy, GROUP_DIST, RNC_TAU, per_group, g)
    kx, ky = sample_per_group(gx, per_group, g), sample_per_group(gy, per_group, g)
    if not torch.equal(gx[kx], gy[ky]):
        raise RuntimeError("the two shapes must have the same number of points in every group")
    return cross_modal_supcon(fx[kx], fy[ky], gx[kx], INFONCE_TAU)


def train(
    arm: str, shapes: list[Shape], inputs: list[torch.Tensor], *, steps: int, per_group: int, seed: int
):
    """The encoder after ``steps`` steps of ``arm``'s loss on random pairs of ``shapes``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        a, b = torch.randperm(len(shapes), generator=g)[:2].tolist()
        loss = pair_loss(
            arm, model(inputs[a]), model(inputs[b]), shapes[a].group, shapes[b].group, per_group, g
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def match(arm: str, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Each row of fx -> the index of its nearest row of fy (cosine for InfoNCE, l2 for RnC)."""
    if arm == "infonce":
        return (F.normalize(fx, dim=1) @ F.normalize(fy, dim=1).T).argmax(1)
    return torch.cdist(fx, fy).argmin(1)


def correspondence_metrics(x: Shape, y: Shape, matched: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-point error (% of y's geodesic diameter), wrong-group flag and Dist of the match."""
    error = geodesic(y, x.bone, x.t, y.bone[matched], y.t[matched]) / y.joint_dist.max() * 100
    return {
        "error": error,
        "wrong": x.group != y.group[matched],
        "dist": GROUP_DIST[x.group, y.group[matched]],
    }


@torch.no_grad()
def evaluate(arm: str, model: nn.Module, pairs: list[tuple[Shape, Shape, torch.Tensor, torch.Tensor]]):
    parts = [correspondence_metrics(x, y, match(arm, model(ix), model(iy))) for x, y, ix, iy in pairs]
    error = torch.cat([p["error"] for p in parts])
    wrong = torch.cat([p["wrong"] for p in parts])
    dist = torch.cat([p["dist"] for p in parts])[wrong]
    return {
        "error": float(error.mean()),
        "wrong": 100 * float(wrong.double().mean()),
        "wrong_dist": float(dist.mean()) if dist.numel() else 0.0,
        "wrong_near": 100 * float((dist <= NEAR).double().mean()) if dist.numel() else 0.0,
        "wrong_error": float(error[wrong].mean()) if dist.numel() else 0.0,
    }


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = ("error", "wrong", "wrong_dist", "wrong_near", "wrong_error")
HEADER = (
    "geodesic error (% diam.) ↓",
    "matched into another group (%)",
    "mean Dist of those ↓",
    "of those at Dist ≤ 0.25 (%)",
    "their geodesic error (% diam.)",
)


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        cells = (mean_std([r[c] for r in runs], 3 if c == "wrong_dist" else 1) for c in COLUMNS)
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lower(results, column: str, floor: float) -> tuple[float, bool]:
    """(InfoNCE mean - RnC mean of ``column``, whether RnC is lower by > 2 SE and > ``floor``)."""
    a = [r[column] for r in results["infonce"]]
    b = [r[column] for r in results["rnc"]]
    return clear_gain(a, b, floor)


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    error_gain, error_lower = lower(results, "error", MIN_GAIN)
    dist_gain, dist_lower = lower(results, "wrong_dist", MIN_DIST_GAIN)
    outcome = ("did not reproduce", "partly reproduced", "reproduced")[error_lower + dist_lower]

    def said(ok: bool, floor: float) -> str:
        return f"lower beyond 2 SE and {floor}" if ok else "not clearly lower"

    return (
        f"Group RnC vs same-part InfoNCE: geodesic error {-error_gain:+.1f} points of the diameter "
        f"({said(error_lower, MIN_GAIN)}); mean Dist of wrong-group matches {-dist_gain:+.3f} "
        f"({said(dist_lower, MIN_DIST_GAIN)}). Claim (group RnC lowers the correspondence error and "
        f"its errors fall in semantically near parts) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (1000; 20 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    steps = args.steps or (20 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 3)
    points, per_group = (8, 4) if args.quick else (32, 16)
    n_train, n_test = (8, 2) if args.quick else (64, 12)
    docs = args.docs if args.quick else (args.docs or DOCS)

    g = torch.Generator().manual_seed(1234)
    shapes = [make_shape(g, points) for _ in range(n_train)]
    inputs = [point_inputs(s.points) for s in shapes]
    test_g = torch.Generator().manual_seed(98765)
    test_shapes = [(make_shape(test_g, points), make_shape(test_g, points)) for _ in range(n_test)]
    pairs = [(x, y, point_inputs(x.points), point_inputs(y.points)) for x, y in test_shapes]

    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for arm in ARMS:
        for seed in range(seeds):
            t0 = time.time()
            model = train(arm, shapes, inputs, steps=steps, per_group=per_group, seed=seed)
            metrics = evaluate(arm, model, pairs)
            results[arm].append(metrics)
            print_progress(start, f"{arm} seed {seed}", metrics, t0)

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Synthetic stick-figure point clouds ({'--quick' if args.quick else 'full run'}): 30 groups x "
        f"{points} points per shape, {steps} steps (one random pair of {n_train} training shapes per "
        f"step, {per_group} points per group), {seeds} seed(s), mean ± std; test: {n_test} pairs of "
        f"unseen shapes, every point of x matched on y; run time {runtime:.0f}s on {args.threads} CPU "
        f"thread(s)."
    )
    command = "python experiments/group_rnc.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
