"""Claim (PSQE, METHODS.md 3.9): cluster-proportional pseudo-seeds align sparse clusters better.

    python experiments/pseudo_seeds.py            # 5 seeds, about 2 minutes on one CPU thread
    python experiments/pseudo_seeds.py --quick    # a few seconds on synthetic stand-in data

Setup: unsupervised alignment of two views ("graphs") of the same N entities with strongly
imbalanced clusters.

- Entities: real CIFAR-10 images, embedded by the frozen SupCon CNN of experiments/cifar_features.py
  (train and test, 20,000 images): 70% from one class (the dense cluster, 1400 cats) and 30%
  from four others (four sparse clusters of 150: airplane, automobile, ship, truck). Each entity
  has a class-level visual vector v (the embedding's first 8 whitened PCA components,
  L2-normalised) and an instance signature s (the next 32, L2-normalised: the SupCon embedding
  is nearly rank 2, so only the whitened components tell images of one class apart).
- Two views per entity, each with its own noise: fused features normalise(v + 0.1 e) (what
  k-means clusters), side features rho (s + 0.3 e) compared by raw dot product (PSQE's [r; a]),
  and model inputs [v; s] R + 0.3 e with a different random rotation R per view (the structure
  side that training must align). rho is log-normal (sd 0.25) and 1.5x larger in the dense
  cluster: dense entities have richer side information (more relations/attributes), the
  situation in which global top-K seeds crowd into the dense region.
- Seeds at equal budget: ``cluster_resample_seeds`` (5-cluster k-means, budget 200, candidate
  factor 100) vs ``global_top_seeds`` with as many pairs as the proportional seeds found; each
  with and without 10% of the seeds given a wrong partner (a derangement of their right sides).
- Training: one linear map per view (D_in -> 64), ``icl_loss`` on the seed pairs (tau = 1, raw
  features, as PSQE), AdamW lr 0.01, 300 full-batch steps.
- Metrics: Hits@1 of left -> right cosine retrieval among all N entities, per dense / sparse
  cluster; seed precision and the share of seeds in the sparse clusters; the repulsion mass
  ||repel_i|| that seed anchors receive, averaged over the training steps (``info_nce_grad_split``
  on the current seed embeddings, tau = 1, no normalisation: the cross-view InfoNCE part of
  the ICL gradient on z_i), for sparse and dense anchors, and sum ||repel|| / sum ||attract||
  over the sparse anchors ("–": no seed lies in a sparse cluster).
  Mean ± std over seeds (each seed draws new entities, noise, rotations and k-means).

The full run rewrites the marked block of docs/methods/pseudo-labels.md; ``--quick`` writes
nowhere unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from contrastkit.losses.grad_split import info_nce_grad_split
from contrastkit.losses.icl import icl_loss
from contrastkit.mining.seeds import cluster_resample_seeds, global_top_seeds
from contrastkit.report.blocks import clear_gain, mean_std, print_progress, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "pseudo-labels.md"
BEGIN, END = "<!-- pseudo-seeds-table:begin -->", "<!-- pseudo-seeds-table:end -->"
DENSE_CLASS, SPARSE_CLASSES = 3, (0, 1, 8, 9)  # cat; airplane, automobile, ship, truck
VISUAL_DIM, SIGNATURE_DIM = 8, 32
FUSED_NOISE, SIDE_NOISE, INPUT_NOISE = 0.1, 0.3, 0.3
DENSE_RICHNESS, RICHNESS_SD = 1.5, 0.25
N_CLUSTERS, CANDIDATE_FACTOR = 5, 100
WRONG_SHARE = 0.1
EMBED_DIM, LR = 64, 0.01
MIN_GAIN = 0.02  # a Hits@1 gain must also exceed this to count
# (seed selection, share of wrong seeds injected, side-feature richness of the dense cluster);
# the last two arms are the control without the richness bias
ARMS = (
    ("global", 0.0, DENSE_RICHNESS),
    ("proportional", 0.0, DENSE_RICHNESS),
    ("global", WRONG_SHARE, DENSE_RICHNESS),
    ("proportional", WRONG_SHARE, DENSE_RICHNESS),
    ("global", 0.0, 1.0),
    ("proportional", 0.0, 1.0),
)
Arm = tuple[str, float, float]


class Entities(NamedTuple):
    """The entity pool: class-level vectors v (P, Dv), instance signatures s (P, Ds), labels (P,)."""

    visual: torch.Tensor
    signature: torch.Tensor
    labels: torch.Tensor


class Views(NamedTuple):
    """Two noisy views of N sampled entities (row i of every tensor is entity i)."""

    fused: tuple[torch.Tensor, torch.Tensor]  # (N, Dv) each, unit rows
    side: tuple[torch.Tensor, torch.Tensor]  # (N, Ds) each, raw
    inputs: tuple[torch.Tensor, torch.Tensor]  # (N, Dv + Ds) each, differently rotated
    dense: torch.Tensor  # (N,) bool: entity in the dense cluster


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def cifar_entities() -> Entities:
    """All 20,000 CIFAR-10 embeddings of the frozen SupCon CNN as entities."""
    from cifar_features import cifar10_features

    f = cifar10_features()
    return entities_from(torch.cat([f.train_x, f.test_x]), torch.cat([f.train_y, f.test_y]))


def synthetic_entities(seed: int = 0, per_class: int = 400, dim: int = 64) -> Entities:
    """A stand-in for ``--quick``: 5 Gaussian classes around random unit centres."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(SPARSE_CLASSES) + 1, dim, generator=g), dim=1)
    cluster = torch.arange(len(centres)).repeat_interleave(per_class)
    x = centres[cluster] + 0.15 * torch.randn(len(cluster), dim, generator=g)
    return entities_from(x, torch.tensor([DENSE_CLASS, *SPARSE_CLASSES])[cluster])


def entities_from(x: torch.Tensor, labels: torch.Tensor) -> Entities:
    """Whitened PCA components of x: v = the first 8 (class level), s = the next 32 (instance
    level), each L2-normalised."""
    centred = x.double() - x.double().mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    used = VISUAL_DIM + SIGNATURE_DIM
    whitened = centred @ vh[:used].T / singular[:used]
    visual, signature = whitened.split([VISUAL_DIM, SIGNATURE_DIM], dim=1)
    return Entities(F.normalize(visual, dim=1).float(), F.normalize(signature, dim=1).float(), labels)


def class_counts(n_entities: int) -> dict[int, int]:
    """70% of the entities in the dense class, the rest split evenly over the sparse ones."""
    sparse = round(0.3 * n_entities / len(SPARSE_CLASSES))
    return {DENSE_CLASS: n_entities - sparse * len(SPARSE_CLASSES), **dict.fromkeys(SPARSE_CLASSES, sparse)}


def make_views(pool: Entities, n_entities: int, dense_richness: float, g: torch.Generator) -> Views:
    rows = []
    for cls, count in class_counts(n_entities).items():
        members = (pool.labels == cls).nonzero()[:, 0]
        rows.append(members[torch.randperm(len(members), generator=g)[:count]])
    rows = torch.cat(rows)
    v, s = pool.visual[rows], pool.signature[rows]
    dense = pool.labels[rows] == DENSE_CLASS
    n = len(rows)
    x = torch.cat([v, s], dim=1)

    def noise(like: torch.Tensor, sd: float) -> torch.Tensor:
        return sd * torch.randn(like.shape, generator=g) / like.shape[1] ** 0.5

    def richness() -> torch.Tensor:
        return torch.exp(RICHNESS_SD * torch.randn(n, generator=g)) * torch.where(dense, dense_richness, 1.0)

    def rotation() -> torch.Tensor:
        return torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g))[0]

    fused = tuple(F.normalize(v + noise(v, FUSED_NOISE), dim=1) for _ in range(2))
    side = tuple(richness()[:, None] * (s + noise(s, SIDE_NOISE)) for _ in range(2))
    inputs = tuple(x @ rotation() + noise(x, INPUT_NOISE) for _ in range(2))
    return Views(fused, side, inputs, dense)


# --------------------------------------------------------------------------------------------
# seeds, training, metrics
# --------------------------------------------------------------------------------------------


def select_seeds(
    views: Views, method: str, wrong_share: float, budget: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proportional seeds, or global top-K at the number of pairs the proportional ones found;
    then ``wrong_share`` of them get a wrong partner. The k-means draw is the same for both."""
    k_means_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    proportional = cluster_resample_seeds(
        *views.side,
        *views.fused,
        n_clusters=N_CLUSTERS,
        budget=budget,
        candidate_factor=CANDIDATE_FACTOR,
        generator=torch.Generator().manual_seed(k_means_seed),
    )
    left, right = proportional.left, proportional.right
    if method == "global":
        left, right = global_top_seeds(*views.side, budget=len(left), candidate_factor=CANDIDATE_FACTOR)
    return left, inject_wrong(right, wrong_share, g)


def inject_wrong(right: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    """A copy of ``right`` whose round(share * S) random positions swap partners in a cycle, so
    each of them gets another seed's right entity (one-to-one kept, all of them wrong)."""
    count = round(share * len(right))
    if count < 2:
        return right
    picked = torch.randperm(len(right), generator=g)[:count]
    wrong = right.clone()
    wrong[picked] = right[picked.roll(1)]
    return wrong


class Trained(NamedTuple):
    """The two linear maps and the gradient masses their seed anchors received in training."""

    maps: tuple[torch.nn.Linear, torch.nn.Linear]
    repel_sparse: float  # mean over steps and sparse anchors of ||repel_i|| (NaN: no such anchor)
    repel_dense: float  # the same over dense anchors
    repel_ratio_sparse: float  # sum ||repel_i|| / sum ||attract_i|| over steps and sparse anchors


def train_maps(views: Views, left: torch.Tensor, right: torch.Tensor, steps: int, seed: int) -> Trained:
    """One linear map per view trained with icl_loss on the seed pairs (full batch); at every
    step ``info_nce_grad_split`` measures the cross-view InfoNCE part of each anchor's gradient."""
    torch.manual_seed(seed)
    dim = views.inputs[0].shape[1]
    maps = torch.nn.Linear(dim, EMBED_DIM), torch.nn.Linear(dim, EMBED_DIM)
    optimizer = torch.optim.AdamW([p for m in maps for p in m.parameters()], lr=LR)
    x_left, x_right = views.inputs[0][left], views.inputs[1][right]
    dense = views.dense[left]
    repel_sum = {True: 0.0, False: 0.0}
    attract_sparse = 0.0
    for _ in range(steps):
        z_left, z_right = maps[0](x_left), maps[1](x_right)
        attract, repel, _ = info_nce_grad_split(z_left, z_right, 1.0, tangent=False)
        repel_norm = repel.norm(dim=1)
        for is_dense in (True, False):
            repel_sum[is_dense] += float(repel_norm[dense == is_dense].sum())
        attract_sparse += float(attract.norm(dim=1)[~dense].sum())
        loss = icl_loss(z_left, z_right)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    n_dense, n_sparse = int(dense.sum()), int((~dense).sum())
    nan = float("nan")
    return Trained(
        maps,
        repel_sum[False] / (steps * n_sparse) if n_sparse else nan,
        repel_sum[True] / (steps * n_dense) if n_dense else nan,
        repel_sum[False] / attract_sparse if n_sparse else nan,
    )


def hits_at_1(z_left: torch.Tensor, z_right: torch.Tensor) -> torch.Tensor:
    """(N,) 1.0 where left entity i's nearest right entity by cosine is entity i."""
    sim = F.normalize(z_left, dim=1) @ F.normalize(z_right, dim=1).T
    return (sim.argmax(dim=1) == torch.arange(len(sim))).double()


@torch.no_grad()
def evaluate(views: Views, trained: Trained, left: torch.Tensor, right: torch.Tensor) -> dict[str, float]:
    maps = trained.maps
    hits = hits_at_1(maps[0](views.inputs[0]), maps[1](views.inputs[1]))
    return {
        "seeds": float(len(left)),
        "precision": float((left == right).double().mean()),
        "sparse_share": float((~views.dense[left]).double().mean()),
        "hits_dense": float(hits[views.dense].mean()),
        "hits_sparse": float(hits[~views.dense].mean()),
        "repel_sparse": trained.repel_sparse,
        "repel_dense": trained.repel_dense,
        "repel_ratio": trained.repel_ratio_sparse,
    }


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = (
    ("seeds", 0),
    ("precision", 3),
    ("sparse_share", 3),
    ("hits_dense", 3),
    ("hits_sparse", 3),
    ("repel_sparse", 3),
    ("repel_dense", 3),
    ("repel_ratio", 2),
)
HEADER = (
    "seed pairs",
    "seed precision",
    "seeds in sparse clusters",
    "Hits@1 dense",
    "Hits@1 sparse ↑",
    "‖repel‖ per sparse anchor",
    "‖repel‖ per dense anchor",
    "Σ‖repel‖/Σ‖attract‖, sparse anchors",
)


def arm_label(method: str, wrong: float, richness: float) -> str:
    name = "global top-K" if method == "global" else "cluster-proportional"
    seeds = f"{round(100 * wrong)}% wrong seeds" if wrong else "as selected"
    control = "" if richness == DENSE_RICHNESS else " (control: no richness bias)"
    return f"{name}, {seeds}{control}"


def format_table(results: dict[Arm, list[dict[str, float]]]) -> str:
    lines = ["| seeds | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        cells = [mean_std([r[c] for r in runs], digits) for c, digits in COLUMNS]
        lines.append(f"| {arm_label(*arm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sparse_gain(results: dict[Arm, list[dict[str, float]]], wrong: float, richness: float):
    """(mean sparse Hits@1 gain of proportional over global seeds, whether it is clear)."""
    a = [r["hits_sparse"] for r in results[("proportional", wrong, richness)]]
    b = [r["hits_sparse"] for r in results[("global", wrong, richness)]]
    return clear_gain(a, b, MIN_GAIN)


def verdict(results: dict[Arm, list[dict[str, float]]]) -> str:
    """The claim holds per condition (as selected, with wrong seeds) where the sparse Hits@1 gain
    is clear; the control without the richness bias is reported beside it, not counted."""
    parts, held = [], 0
    for wrong in (0.0, WRONG_SHARE):
        gain, clear = sparse_gain(results, wrong, DENSE_RICHNESS)
        held += clear
        condition = f"with {round(100 * wrong)}% wrong seeds" if wrong else "as selected"
        parts.append(
            f"{condition} {gain:+.3f} ({'clear: beyond 2 SE and 0.02' if clear else 'no clear gain'})"
        )
    control, control_clear = sparse_gain(results, 0.0, 1.0)
    outcome = ("did not reproduce", "partly reproduced", "reproduced")[held]
    return (
        "Sparse-cluster Hits@1, cluster-proportional minus global top-K seeds: "
        + "; ".join(parts)
        + f"; control without the richness bias {control:+.3f} "
        + f"({'clear' if control_clear else 'no clear gain'}). "
        + f"Claim (cluster-proportional seeds align the sparse clusters better) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run on synthetic data (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (5; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (300; 30 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    steps = args.steps or (30 if args.quick else 300)
    seeds = args.seeds or (1 if args.quick else 5)
    n_entities, budget = (400, 60) if args.quick else (2000, 200)
    docs = args.docs if args.quick else (args.docs or DOCS)
    pool = synthetic_entities() if args.quick else cifar_entities()

    results: dict[Arm, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        for arm in ARMS:
            method, wrong, richness = arm
            g = torch.Generator().manual_seed(seed)  # same entities, views and k-means in every arm
            views = make_views(pool, n_entities, richness, g)
            left, right = select_seeds(views, method, wrong, budget, g)
            metrics = evaluate(views, train_maps(views, left, right, steps, seed), left, right)
            results[arm].append(metrics)
            print_progress(start, f"{arm_label(*arm)} seed {seed}", metrics)

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    data = "synthetic 5-class stand-in (--quick)" if args.quick else "CIFAR-10 SupCon embeddings"
    caption = (
        f"{data}: {n_entities} entities (70% one dense class, 4 sparse classes), seed budget {budget}, "
        f"{steps} ICL steps, {seeds} seed(s), mean ± std; run time {runtime:.0f}s on {args.threads} "
        f"CPU thread(s)."
    )
    command = "python experiments/pseudo_seeds.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
