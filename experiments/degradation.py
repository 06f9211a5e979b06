"""Claim (self-aware detection, METHODS.md 3.23): degradation-contrast heads on a frozen backbone
give a pristine-prototype score that separates clean from degraded images, grows with severity and
does not depend on the image's content.

    python experiments/degradation.py            # CIFAR-10, 3 seeds, a few minutes on one CPU thread
    python experiments/degradation.py --quick    # generated shapes, seconds (a smoke test)

Setup (the paper's check, built from what this machine has):

- Frozen backbone: there is no pretrained image model here, so the "detector" is a small CNN
  (contrastkit ImageCNN, width 16, 3 stride-2 blocks, BatchNorm) trained for 400 steps of 128
  with cross-entropy on the 10,000 clean CIFAR-10 train images (random flips), then frozen; cached
  in runs/degradation/. (With GroupNorm, the pooled features hardly see a degradation: GN
  re-centres every group per image, and a linear probe separated clean from severity-5 noise in
  only 61-69% of held-out images, against 82-98% with BatchNorm.)
- Layers: global average pooling (GAP) of the stem and of its 3 blocks (16, 16, 32, 64-d).
- Degradations (contrastkit.data.degrade): blur, contrast, noise, JPEG at the CIFAR-10-C
  severities 1-5. Training compositions: the clean image, or 1-2 kinds with random severities;
  each composition has an id. A batch is 64 train images, each under 2 of 16 compositions (the
  clean one always among them), so every composition holds 8 different images.
- Arms, all scored with ``PristinePrototype`` (mu = normalize(mean of clean embeddings), score
  1 - cos; Mahalanobis rows use shrinkage 0.1), fitted on 1,000 clean test images:
  frozen features: the backbone's per-layer GAP features, each L2-normalised, concatenated;
  last-layer head: a GAP + MLP head (-> 32-d) on the last block, trained with
  ``degradation_supcon`` (tau 0.1, image ids: the same image under another composition a hard
  negative); multi-layer heads: one such head per pooled layer (4), uniform layer weights, the
  unit embeddings concatenated (divided by 2, a unit row). Heads: MLP 64 hidden, Adam lr 2e-3.
- Evaluation, per seed on 500 other CIFAR-10 test images, each clean and under every kind at
  every severity (21 x 500 images): AUROC of the score, degraded (all 4 kinds) vs clean, per
  severity; AUROC per kind (all severities); the Spearman correlation of the score with the
  severity (clean = 0) over all rows; content invariance as the share of the clean scores'
  variance explained by the CIFAR class (eta^2, lower = more content-invariant) and the std over
  the 10 classes of the per-class AUROC (all severities). Mean ± std over seeds (seeds change the
  head initialisation, the training batches, the test split and the noise draws).

The full run rewrites the marked block of docs/methods/domains.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
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
from torch import nn

from contrastkit.data.builtin import get_source
from contrastkit.data.degrade import DEGRADATIONS, MAX_SEVERITY, composition_id, degrade
from contrastkit.data.transforms import image_to_tensor, load_image
from contrastkit.eval.prototype import PristinePrototype
from contrastkit.losses.degradation import degradation_supcon
from contrastkit.models.heads import ProjectionHead
from contrastkit.models.image import ImageCNN
from contrastkit.report.blocks import clear_gain, mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cifar10"
CACHE = ROOT / "runs" / "degradation"
DOCS = ROOT / "docs" / "methods" / "domains.md"
BEGIN, END = "<!-- degradation-table:begin -->", "<!-- degradation-table:end -->"
ARMS = ("frozen", "frozen_maha", "last", "multi", "multi_maha")
LABELS = {
    "frozen": "frozen features, cosine",
    "frozen_maha": "frozen features, Mahalanobis",
    "last": "last-layer head, cosine",
    "multi": "multi-layer heads, cosine",
    "multi_maha": "multi-layer heads, Mahalanobis",
}
WIDTH, DEPTH, HEAD_DIM = 16, 3, 32
N_LAYERS = DEPTH + 1  # the stem and the blocks
TEMPERATURE = 0.1
HEAD_LR = 2e-3
COMPOSITIONS_PER_BATCH, IMAGES_PER_BATCH = 16, 64
MIN_GAIN = 0.01  # an AUROC or eta^2 difference must also exceed this to count
MIN_SPEARMAN = 0.5  # "the score grows with severity": mean Spearman at least this ...
# ... and AUROC at severity 5 clearly above severity 1 (clear_gain with MIN_GAIN)

# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def load_images(quick: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images (N, 3, 32, 32) float in [0, 1], labels (N,)), "test": ...}."""
    out = {}
    for split in ("train", "test"):
        if quick:
            source = get_source("shapes", split, n=256 if split == "train" else 160, image_size=32)
        else:
            source = get_source("cifar10", split, root=DATA)
        images = torch.stack([image_to_tensor(load_image(source[i]["image"])) for i in range(len(source))])
        out[split] = (images.float() / 255, source.labels())
    return out


def sample_compositions(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, K) distinct severities: row 0 clean, the others 1 or 2 random kinds at random
    severities 1-5 (a repeat is drawn again)."""
    k = len(DEGRADATIONS)
    rows = [torch.zeros(k, dtype=torch.long)]
    seen = {tuple(rows[0].tolist())}
    while len(rows) < n:
        n_kinds = int(torch.randint(1, 3, (), generator=g))
        kinds = torch.randperm(k, generator=g)[:n_kinds]
        row = torch.zeros(k, dtype=torch.long)
        row[kinds] = torch.randint(1, MAX_SEVERITY + 1, (n_kinds,), generator=g)
        if tuple(row.tolist()) not in seen:
            seen.add(tuple(row.tolist()))
            rows.append(row)
    return torch.stack(rows)


def training_batch(images: torch.Tensor, g: torch.Generator):
    """64 random images, each under 2 of 16 compositions (8 images per composition).

    Returns (degraded (128, 3, H, W), composition ids (128,), image ids (128,)).
    """
    pick = torch.randperm(images.shape[0], generator=g)[:IMAGES_PER_BATCH]
    compositions = sample_compositions(COMPOSITIONS_PER_BATCH, g)
    i = torch.arange(IMAGES_PER_BATCH)
    first = i % COMPOSITIONS_PER_BATCH
    second = (first + 1 + i // COMPOSITIONS_PER_BATCH) % COMPOSITIONS_PER_BATCH  # never == first
    slots = torch.cat([first, second])
    severities = compositions[slots]
    x = degrade(images[pick].repeat(2, 1, 1, 1), severities, g)
    return x, composition_id(severities), torch.cat([i, i])


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def layer_features(backbone: ImageCNN, x: torch.Tensor) -> list[torch.Tensor]:
    """GAP of the stem's and each block's output: [(N, 16), (N, 16), (N, 32), (N, 64)]; images
    in [0, 1]."""
    h = backbone.stem((x - 0.5) / 0.5)
    pooled = [h.mean(dim=(2, 3))]
    for block in backbone.blocks:
        h = block(h)
        pooled.append(h.mean(dim=(2, 3)))
    return pooled


def train_backbone(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0) -> ImageCNN:
    """The frozen "detector": ImageCNN + linear classifier, cross-entropy on clean images, flips."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = ImageCNN(WIDTH, DEPTH, output_dim=None, norm="batch")
    classifier = nn.Linear(backbone.output_dim, int(labels.max()) + 1)
    params = [*backbone.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-3)
    for _ in range(steps):
        pick = torch.randint(0, images.shape[0], (128,), generator=g)
        x = images[pick]
        flip = torch.rand(128, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(classifier(layer_features(backbone, x)[-1]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return backbone.eval().requires_grad_(False)


def frozen_backbone(data, steps: int, quick: bool) -> ImageCNN:
    """Train the backbone, or load it from runs/degradation/ (the full run only)."""
    path = CACHE / f"backbone-cifar10-bn-{steps}.pt"
    if not quick and path.is_file():
        backbone = ImageCNN(WIDTH, DEPTH, output_dim=None, norm="batch")
        backbone.load_state_dict(torch.load(path, weights_only=True))
        return backbone.eval().requires_grad_(False)
    backbone = train_backbone(*data["train"], steps)
    if not quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(backbone.state_dict(), path)
    return backbone


def make_heads(n: int) -> nn.ModuleList:
    dims = [WIDTH, *(WIDTH * 2**i for i in range(DEPTH))][-n:]
    return nn.ModuleList(ProjectionHead(d, HEAD_DIM, kind="mlp", hidden=64) for d in dims)


def train_heads(
    backbone: ImageCNN, images: torch.Tensor, n_layers: int, steps: int, seed: int
) -> nn.ModuleList:
    """GAP + MLP heads on the last ``n_layers`` pooled layers, trained with degradation_supcon."""
    g = torch.Generator().manual_seed(1000 + seed)
    torch.manual_seed(seed)
    heads = make_heads(n_layers)
    optimizer = torch.optim.Adam(heads.parameters(), lr=HEAD_LR)
    for _ in range(steps):
        x, comp, image = training_batch(images, g)
        with torch.no_grad():
            feats = layer_features(backbone, x)[-n_layers:]
        z = [F.normalize(head(f), dim=1) for head, f in zip(heads, feats, strict=True)]
        loss = degradation_supcon(z, comp, TEMPERATURE, image_id=image)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return heads


@torch.no_grad()
def pooled_features(backbone: ImageCNN, x: torch.Tensor) -> list[torch.Tensor]:
    """``layer_features`` of a large image set, computed in chunks."""
    chunks = [layer_features(backbone, chunk) for chunk in x.split(1024)]
    return [torch.cat(layer) for layer in zip(*chunks, strict=True)]


@torch.no_grad()
def embed(heads: nn.ModuleList | None, feats: list[torch.Tensor]) -> torch.Tensor:
    """Concatenated unit per-layer embeddings, scaled to a unit row: the heads' outputs, or the
    GAP features themselves without heads."""
    if heads is not None:
        feats = [head(f) for head, f in zip(heads, feats[-len(heads) :], strict=True)]
    return torch.cat([F.normalize(f, dim=1) for f in feats], dim=1) / math.sqrt(len(feats))


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def evaluation_conditions(n: int) -> torch.Tensor:
    """(n * 21, K) severities: the clean block first, then kind-major, severity 1..5."""
    k = len(DEGRADATIONS)
    rows = [torch.zeros(n, k, dtype=torch.long)]
    for kind in range(k):
        for s in range(1, MAX_SEVERITY + 1):
            block = torch.zeros(n, k, dtype=torch.long)
            block[:, kind] = s
            rows.append(block)
    return torch.cat(rows)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    return float(roc_auc_score(y.numpy(), torch.cat([positive, negative]).double().numpy()))


def class_eta2(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the variance of ``scores`` explained by the class: between-class SS / total SS."""
    scores = scores.double()
    total = ((scores - scores.mean()) ** 2).sum()
    between = sum(
        (labels == c).sum() * (scores[labels == c].mean() - scores.mean()) ** 2 for c in labels.unique()
    )
    return float(between / total)


def metrics(score: torch.Tensor, severities: torch.Tensor, labels: torch.Tensor, n: int) -> dict[str, float]:
    """score (21 n,) over ``evaluation_conditions(n)``; labels (n,) the content classes."""
    from scipy.stats import spearmanr

    severity = severities.max(dim=1).values
    kind = severities.argmax(dim=1)
    clean = score[:n]
    out = {}
    for s in range(1, MAX_SEVERITY + 1):
        out[f"auroc_{s}"] = auroc(score[severity == s], clean)
    for k, name in enumerate(DEGRADATIONS):
        out[f"kind_{name}"] = auroc(score[(severity > 0) & (kind == k)], clean)
    out["auroc"] = auroc(score[n:], clean)
    out["spearman"] = float(spearmanr(score.numpy(), severity.numpy()).statistic)
    out["eta2"] = class_eta2(clean, labels)
    per_class = []
    all_labels = labels.repeat(severities.shape[0] // n)
    for c in labels.unique():
        mine = all_labels == c
        per_class.append(auroc(score[mine & (severity > 0)], score[mine & (severity == 0)]))
    out["class_spread"] = statistics.pstdev(per_class)
    return out


def evaluate_seed(backbone, heads_by_arm, test_images, test_labels, n_fit: int, n_eval: int, seed: int):
    g = torch.Generator().manual_seed(2000 + seed)
    order = torch.randperm(test_images.shape[0], generator=g)
    fit_x, eval_idx = test_images[order[:n_fit]], order[n_fit : n_fit + n_eval]
    severities = evaluation_conditions(n_eval)
    x = degrade(test_images[eval_idx].repeat(severities.shape[0] // n_eval, 1, 1, 1), severities, g)
    fit_feats, eval_feats = pooled_features(backbone, fit_x), pooled_features(backbone, x)
    results = {}
    for arm in ARMS:
        heads = heads_by_arm[arm.removesuffix("_maha")]
        metric = "mahalanobis" if arm.endswith("_maha") else "cosine"
        prototype = PristinePrototype(metric, shrinkage=0.1).fit(embed(heads, fit_feats))
        score = prototype.score(embed(heads, eval_feats))
        results[arm] = metrics(score, severities, test_labels[eval_idx], n_eval)
    return results


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = (*(f"auroc_{s}" for s in range(1, MAX_SEVERITY + 1)), "auroc", "spearman", "eta2", "class_spread")
HEADER = (
    *(f"AUROC s{s} ↑" for s in range(1, MAX_SEVERITY + 1)),
    "AUROC all ↑",
    "Spearman(score, severity) ↑",
    "class η² of clean scores ↓",
    "per-class AUROC std ↓",
)
KIND_COLUMNS = tuple(f"kind_{k}" for k in DEGRADATIONS)


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(
            f"| {LABELS[arm]} | " + " | ".join(mean_std([r[c] for r in runs], 3) for c in COLUMNS) + " |"
        )
    lines += ["", "AUROC per degradation kind (all severities):", ""]
    lines += ["| arm | " + " | ".join(DEGRADATIONS) + " |", "|---" * (len(DEGRADATIONS) + 1) + "|"]
    for arm, runs in results.items():
        lines.append(
            f"| {LABELS[arm]} | " + " | ".join(mean_std([r[c] for r in runs], 3) for c in KIND_COLUMNS) + " |"
        )
    return "\n".join(lines)


def _values(results, arm: str, column: str) -> list[float]:
    return [r[column] for r in results[arm]]


def verdict(results: dict[str, list[dict[str, float]]]) -> str:
    gain, separates = clear_gain(
        _values(results, "multi", "auroc"), _values(results, "frozen", "auroc"), MIN_GAIN
    )
    rise, rises = clear_gain(
        _values(results, "multi", f"auroc_{MAX_SEVERITY}"), _values(results, "multi", "auroc_1"), MIN_GAIN
    )
    rho = statistics.fmean(_values(results, "multi", "spearman"))
    graded = rises and rho >= MIN_SPEARMAN
    drop, invariant = clear_gain(
        _values(results, "frozen", "eta2"), _values(results, "multi", "eta2"), MIN_GAIN
    )
    layers, layers_help = clear_gain(
        _values(results, "multi", "auroc"), _values(results, "last", "auroc"), MIN_GAIN
    )
    held = separates + graded + invariant
    outcome = ("did not reproduce", "partly reproduced", "partly reproduced", "reproduced")[held]
    word = {True: "clear", False: "not clear"}
    return (
        f"Multi-layer heads vs frozen features: AUROC {gain:+.3f} ({word[separates]}); AUROC s5 - s1 "
        f"{rise:+.3f} ({word[rises]}), Spearman {rho:.2f} (needs >= {MIN_SPEARMAN}); class η² of clean "
        f"scores {-drop:+.3f} ({word[invariant]} drop); multi-layer vs last layer AUROC {layers:+.3f} "
        f"({word[layers_help]}, not part of the claim). Claim (the prototype score separates clean from "
        f"degraded, grows with severity and is content-invariant) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="generated shapes, a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="head training steps (300; 8 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    quick = args.quick
    steps = args.steps or (8 if quick else 300)
    backbone_steps = 8 if quick else 400
    seeds = args.seeds or (1 if quick else 3)
    n_fit, n_eval = (60, 40) if quick else (1000, 500)
    docs = args.docs if quick else (args.docs or DOCS)

    data = load_images(quick)
    backbone = frozen_backbone(data, backbone_steps, quick)
    print(f"[{time.time() - start:6.1f}s] data and frozen backbone ready", flush=True)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        heads = {
            "frozen": None,
            "last": train_heads(backbone, data["train"][0], 1, steps, seed),
            "multi": train_heads(backbone, data["train"][0], N_LAYERS, steps, seed),
        }
        for arm, metrics_ in evaluate_seed(backbone, heads, *data["test"], n_fit, n_eval, seed).items():
            results[arm].append(metrics_)
        print(
            f"[{time.time() - start:6.1f}s] seed {seed}: "
            + ", ".join(f"{arm} AUROC {results[arm][-1]['auroc']:.3f}" for arm in ARMS),
            flush=True,
        )

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    what = "generated shapes (--quick)" if quick else "CIFAR-10"
    caption = (
        f"{what}: frozen CNN backbone ({backbone_steps} cross-entropy steps on clean train images); heads "
        f"{steps} steps x {2 * IMAGES_PER_BATCH} rows; prototype fitted on {n_fit} clean test images, "
        f"scored on {n_eval} other test images x (clean + {len(DEGRADATIONS)} kinds x {MAX_SEVERITY} "
        f"severities); {seeds} seed(s), mean ± std; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/degradation.py" + (" --quick" if quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
