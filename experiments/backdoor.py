"""Claim (BadCLIP++, METHODS.md 3.6): a few poisoned pairs plant a backdoor that defenses and
clean fine-tuning do not remove, at almost no cost in clean accuracy.

    python experiments/backdoor.py            # shapes, 20,000 pairs; see docs/security.md for the time
    python experiments/backdoor.py --quick    # 400 pairs, a few training steps (a smoke test)

Setup (everything trained through the ``Trainer`` from configs, as a user would):

- Data: the generated ``shapes`` set rendered at 32x32 (``n_train`` pairs, 8 shape classes).
  0.5% of the pairs get a 4x4 BadNet checkerboard at the image centre and the caption
  "a photo of a star." (``poison_dataset``, poison seed 0; the same poisoned set for every run),
  written as a JSONL manifest that ``data.train`` reads.
- Model: ``configs/shapes-clip.yaml`` (a small CNN + Transformer CLIP trained from scratch), with
  ``steps`` x ``batch`` and the training seed changed per run.
- Arms: CLIP on the clean set (the false-trigger baseline), CLIP on the poisoned set, and each
  defense trained from scratch on the poisoned set with ``loss.defense``: CleanCLIP, RoCLIP
  (bank 4,096; the release's schedule: a plain first epoch, then every 2nd epoch swapped whole),
  SafeCLIP (warm-up = 1/6 of the steps), similarity unlearning (defaults). Then the poisoned
  model is fine-tuned on a disjoint clean shapes set (``train.init_from``; batch 64, lr
  ``FINETUNE_LR``, 50 warm-up steps) with CleanCLIP and, as the baseline, plain CLIP; ASR is read
  from the checkpoints at the persistence grid.
- Metrics on the 1,000-image shapes test split: CA (zero-shot top-1, the config's two
  templates), R@1 both ways (the Trainer's evaluation), ASR (triggered non-target test images
  classified as "star"); detector AUROCs of the poisoned model on a uniform sample of the
  poisoned training set (kNN scores k = 32 on image embeddings; matched-pair cosine, high =
  suspicious; the GMM split's risky posterior); persistence r(k) = ASR(k) / ASR(0) and its area.

The full run caches its data and runs under runs/backdoor/ (ignored by git) and rewrites the
marked block of docs/security.md; ``--quick`` trains in a temporary folder and writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.data import ManifestSource, ShapesSource, TextTransform
from contrastkit.data.transforms import image_to_tensor
from contrastkit.report.blocks import clear_gain, format_metrics, mean_std, publish_result
from contrastkit.security import (
    attack_success_rate,
    badnet_patch,
    detection_auroc,
    gmm_safe_split,
    knn_outlier_scores,
    persistence_curve,
    poison_dataset,
)
from contrastkit.train.checkpoint import checkpoint_dir, load_checkpoint, restore
from contrastkit.train.config import load_config
from contrastkit.train.evaluate import Embedder
from contrastkit.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes-clip.yaml"
CACHE = ROOT / "runs" / "backdoor"
DOCS = ROOT / "docs" / "security.md"
BEGIN, END = "<!-- backdoor-table:begin -->", "<!-- backdoor-table:end -->"

TARGET = "star"
TARGET_CAPTION = f"a photo of a {TARGET}."
POISON_RATE = 0.005
PATCH = 4  # pixels of a 32-pixel image (the paper: 16 of 224)
TRIGGER = functools.partial(badnet_patch, size=PATCH, position="center")
FINETUNE_LR = 2e-4  # 1/10 of the from-scratch lr (the paper's 4.5e-6 is ~1/100 of CLIP's pretraining lr)
DETECTORS = ("k_distance", "lid", "dao")
DETECT_SEED = 10_000
DEFENSES = {
    "cleanclip": "{name: cleanclip}",
    "roclip": "{name: roclip, bank_size: 4096, swap_every: TWO_EPOCHS, swap_length: EPOCH}",
    "safeclip": "{name: safeclip, warmup_steps: WARMUP}",
    "unlearn": "{name: unlearn}",
}
FINETUNES = ("ft_cleanclip", "ft_clip")
LABELS = {
    "clean": "CLIP, clean data",
    "poisoned": "CLIP, poisoned data",
    "cleanclip": "CleanCLIP (from scratch)",
    "roclip": "RoCLIP (from scratch)",
    "safeclip": "SafeCLIP (from scratch)",
    "unlearn": "Similarity unlearning (from scratch)",
    "ft_cleanclip": "poisoned, then CleanCLIP fine-tune",
    "ft_clip": "poisoned, then CLIP fine-tune",
}
NEAR_TOTAL_ASR = 0.9  # "near-100%": at least 90% of triggered images go to the target
ATTACK_FLOOR = 0.2  # ASR must also exceed the clean model's false-trigger rate by this
DEFENSE_FLOOR = 0.1  # a defense "reduced ASR" when the drop is clear and at least 10 points
CA_DROP = 0.008  # the claim's "< 0.8% CA drop"
CA_BROKEN = 0.05  # a defense that lowers ASR but loses more CA than this broke the model instead


@dataclass(frozen=True)
class Setup:
    n_train: int
    n_test: int
    n_detect: int  # training pairs the detectors score (a uniform sample; kNN is O(n^2))
    steps: int
    batch: int
    seeds: int  # the headline rows (clean, poisoned)
    defense_seeds: int
    finetune_seeds: int
    grid: tuple[int, ...]  # persistence: clean fine-tuning steps k
    finetune_batch: int
    finetune_warmup: int
    image_size: int = 32
    k: int = 32


FULL = Setup(
    n_train=20000,
    n_test=1000,
    n_detect=5000,
    steps=600,
    batch=256,
    seeds=2,
    defense_seeds=1,
    finetune_seeds=1,
    grid=(0, 50, 100, 200, 400),
    finetune_batch=64,
    finetune_warmup=50,
)
QUICK = Setup(
    n_train=400,
    n_test=64,
    n_detect=400,
    steps=4,
    batch=32,
    seeds=1,
    defense_seeds=1,
    finetune_seeds=1,
    grid=(0, 2, 4),
    finetune_batch=16,
    finetune_warmup=1,
    k=8,
)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def poisoned_manifest(setup: Setup, folder: Path) -> tuple[Path, torch.Tensor]:
    """The poisoned training set as a manifest (written once per setting) and its (N,) poison mask."""
    clean = ShapesSource("train", n=setup.n_train, image_size=setup.image_size)
    poisoned = poison_dataset(clean, POISON_RATE, TARGET_CAPTION, TRIGGER, seed=0)
    where = folder / f"poisoned-{setup.n_train}-{setup.image_size}px-patch{PATCH}"
    manifest = where / "manifest.jsonl"
    if not manifest.is_file():
        shutil.rmtree(where, ignore_errors=True)
        poisoned.to_manifest(where)
    return manifest, poisoned.poisoned_mask()


@dataclass(frozen=True)
class TestSet:
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    labels: torch.Tensor
    classes: list[str]


def test_set(setup: Setup) -> TestSet:
    source = ShapesSource("test", n=setup.n_test, image_size=setup.image_size)
    images = torch.stack([image_to_tensor(source[i]["image"]) for i in range(len(source))]).float() / 255
    return TestSet(images, torch.tensor(source.label_list()), list(source.classes))


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


def shapes_spec(split: str, n: int, setup: Setup, seed: int = 0) -> str:
    return f"{{name: shapes, split: {split}, n: {n}, image_size: {setup.image_size}, seed: {seed}}}"


def base_overrides(setup: Setup, seed: int, steps: int) -> list[str]:
    return [
        f"seed={seed}",
        f"data.image_size={setup.image_size}",
        f"data.eval={shapes_spec('test', setup.n_test, setup)}",
        f"train.steps={steps}",
        "train.progress=false",
        f"train.log_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.keep_checkpoints=1",
    ]


def arm_overrides(arm: str, setup: Setup, seed: int, manifest: Path) -> list[str]:
    """``--set`` overrides of ``configs/shapes-clip.yaml`` for a from-scratch arm."""
    data = shapes_spec("train", setup.n_train, setup) if arm == "clean" else f"{{manifest: {manifest}}}"
    overrides = [
        *base_overrides(setup, seed, setup.steps),
        f"data.train={data}",
        f"train.batch_size={setup.batch}",
    ]
    if arm in DEFENSES:
        epoch = max(1, setup.n_train // setup.batch)  # steps per epoch (the sampler drops the last batch)
        spec = (
            DEFENSES[arm]
            .replace("WARMUP", str(max(1, setup.steps // 6)))
            .replace("TWO_EPOCHS", str(2 * epoch))
            .replace("EPOCH", str(epoch))
        )
        overrides.append(f"loss.defense={spec}")
    return overrides


def finetune_overrides(arm: str, setup: Setup, seed: int, poisoned_run: Path) -> list[str]:
    """Fine-tune the poisoned model on a disjoint clean set (shapes seed 1), checkpointing on the grid."""
    every = math.gcd(*setup.grid[1:])
    overrides = [
        *base_overrides(setup, seed, setup.grid[-1]),
        f"data.train={shapes_spec('train', setup.n_train, setup, seed=1)}",
        f"train.init_from={poisoned_run}",
        f"train.batch_size={setup.finetune_batch}",
        f"train.checkpoint_every={every}",
        f"train.keep_checkpoints={setup.grid[-1] // every}",
        f"optim.lr={FINETUNE_LR}",
        f"optim.warmup_steps={setup.finetune_warmup}",
    ]
    if arm == "ft_cleanclip":
        overrides.append(f"loss.defense={DEFENSES['cleanclip']}")
    return overrides


def attack(trainer: Trainer, test: TestSet) -> dict[str, float]:
    """ASR and CA of the trainer's model on the test images."""
    result = attack_success_rate(
        trainer.model,
        trainer.tokenizer,
        test.images,
        test.labels,
        test.classes.index(TARGET),
        TRIGGER,
        test.classes,
        templates=trainer.config.eval.templates,
    )
    return {"asr": result.asr, "ca": result.clean_accuracy}


def train_arm(run_dir: Path, overrides: list[str], test: TestSet) -> tuple[Trainer, dict]:
    """Train one config into ``run_dir`` (afresh); its clean metrics and ASR on the test set."""
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(load_config(CONFIG, overrides), run_dir)
    trainer.fit()
    metrics = trainer.evaluate()
    result = {
        "r1_i2t": metrics["retrieval/i2t_R@1"],
        "r1_t2i": metrics["retrieval/t2i_R@1"],
        **attack(trainer, test),
        "seconds": trainer.train_seconds,
    }
    return trainer, result


def detector_sample(n: int, size: int, seed: int) -> list[int]:
    """A uniform sample of ``size`` of the ``n`` training pairs (sorted), drawn from a stream of
    its own: seed 0's first draws are ``poison_dataset``'s poisoned indices."""
    draw = torch.Generator().manual_seed(DETECT_SEED + seed)
    return torch.randperm(n, generator=draw)[:size].sort().values.tolist()


@torch.no_grad()
def detector_aurocs(
    trainer: Trainer, manifest: Path, mask: torch.Tensor, setup: Setup, seed: int
) -> dict[str, float]:
    """AUROC (poisoned vs clean) of each detector on a uniform sample of the poisoned training set."""
    source = ManifestSource(manifest)
    indices = detector_sample(len(source), setup.n_detect, seed)
    config = trainer.config
    embed = Embedder(trainer.model, trainer.tokenizer, config.data.image_size, config.eval.batch_size)
    images, kept = embed(source, "image", indices)
    caption = TextTransform(config.data.caption_sentences)  # the caption the model was trained on
    texts = torch.cat(
        [
            embed.texts([caption(source[i]["text"]) for i in kept[s : s + config.eval.batch_size]])
            for s in range(0, len(kept), config.eval.batch_size)
        ]
    )
    poisoned = mask[torch.tensor(kept)]
    out = {m: detection_auroc(knn_outlier_scores(images, k=setup.k, method=m), poisoned) for m in DETECTORS}
    cosine = F.cosine_similarity(images.double(), texts.double(), dim=1)
    split = gmm_safe_split(cosine)
    out["cosine"] = detection_auroc(cosine, poisoned)
    out["gmm_risky"] = detection_auroc(1 - split.posterior, poisoned)
    out["risky_recall"] = float((~split.safe)[poisoned].double().mean())
    out["risky_share"] = float((~split.safe).double().mean())
    out["n_poisoned"] = int(poisoned.sum())
    return out


def persistence(
    trainer: Trainer, before: dict[str, float], test: TestSet, setup: Setup
) -> dict[int, dict[str, float]]:
    """ASR and CA at every grid step k: k = 0 is the poisoned model (``before``), k > 0 is read
    from the fine-tuning run's checkpoints."""
    curve = {0: {"asr": before["asr"], "ca": before["ca"]}}
    for k in setup.grid[1:]:
        restore(load_checkpoint(checkpoint_dir(trainer.run_dir, k)), trainer.model, restore_rng=False)
        curve[k] = attack(trainer, test)
    return curve


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------


def pct(values: list[float]) -> str:
    return mean_std([100 * v for v in values], 1)


def main_table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| arm | seeds | CA (%) ↑ | R@1 i→t (%) ↑ | R@1 t→i (%) ↑ | ASR (%) ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for arm, runs in results.items():
        cells = [pct([r[c] for r in runs]) for c in ("ca", "r1_i2t", "r1_t2i", "asr")]
        lines.append(f"| {LABELS[arm]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detector_table(found: list[dict[str, float]]) -> str:
    header = (
        "| detector (poisoned model) | k-distance | LID | DAO | pair cosine | GMM risky posterior "
        "| risky recall (%) | risky share (%) |"
    )
    cells = [mean_std([d[c] for d in found], 3) for c in (*DETECTORS, "cosine", "gmm_risky")]
    cells += [pct([d["risky_recall"] for d in found]), pct([d["risky_share"] for d in found])]
    return "\n".join([header, "|---" * 8 + "|", "| AUROC, poisoned vs clean | " + " | ".join(cells) + " |"])


def persistence_table(curves: dict[str, list[dict[int, dict[str, float]]]], grid: tuple[int, ...]) -> str:
    arms = [a for a in curves if curves[a]]
    names = [LABELS[a].split(", then ")[1] for a in arms]
    header = "| clean fine-tuning steps k | " + " | ".join(
        f"{n}: ASR (%) | {n}: r(k) | {n}: CA (%)" for n in names
    )
    lines = [header + " |", "|---" * (1 + 3 * len(arms)) + "|"]
    for k in grid:
        cells = []
        for arm in arms:
            runs = curves[arm]
            cells += [
                pct([c[k]["asr"] for c in runs]),
                mean_std([ratio_at(c, k) for c in runs], 2),
                pct([c[k]["ca"] for c in runs]),
            ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    areas = []
    for arm in arms:
        areas += ["", mean_std([area(c) for c in curves[arm]], 2), ""]
    lines.append("| normalised area under r(k) | " + " | ".join(areas) + " |")
    return "\n".join(lines)


def ratio_at(curve: dict[int, dict[str, float]], k: int) -> float:
    """r(k) = ASR(k) / ASR(0); NaN when there is no backdoor (ASR(0) = 0)."""
    if curve[0]["asr"] == 0:
        return math.nan
    return persistence_curve({0: curve[0]["asr"], k: curve[k]["asr"]}).ratio[-1] if k else 1.0


def area(curve: dict[int, dict[str, float]]) -> float:
    if curve[0]["asr"] == 0:
        return math.nan
    return persistence_curve({k: v["asr"] for k, v in curve.items()}).auc


def verdict(
    results: dict[str, list[dict[str, float]]], curves: dict[str, list[dict[int, dict[str, float]]]]
) -> str:
    """The claim, decided from the numbers: (1) the attack works (ASR >= 90% and clearly above the
    clean model's false-trigger rate), (2) no clear CA drop beyond 0.8 points, (3) no defense and
    no fine-tune clearly reduces ASR (by 2 SE and 10 points) while keeping CA (losing at most 5
    points; a defense that does so only by breaking the model does not count as removing it)."""
    asr = {arm: [r["asr"] for r in runs] for arm, runs in results.items()}
    ca = {arm: [r["ca"] for r in runs] for arm, runs in results.items()}
    _, above_clean = clear_gain(asr["poisoned"], asr["clean"], ATTACK_FLOOR)
    mean_asr = statistics.fmean(asr["poisoned"])
    works = above_clean and mean_asr >= NEAR_TOTAL_ASR
    ca_drop, ca_hurt = clear_gain(ca["clean"], ca["poisoned"], CA_DROP)
    # (ASR before, CA before, ASR after, CA after) of each defense and each fine-tune
    changes = {
        arm: (asr["poisoned"], ca["poisoned"], asr[arm], ca[arm]) for arm in DEFENSES if results.get(arm)
    }
    for arm, runs in curves.items():
        if runs:
            first, last = [c[0] for c in runs], [c[max(c)] for c in runs]
            changes[arm] = tuple(
                [p[key] for p in points] for points in (first, last) for key in ("asr", "ca")
            )
    outcomes: dict[str, list[str]] = {"removed": [], "broke": [], "kept": []}
    for arm, (asr_before, ca_before, asr_after, ca_after) in changes.items():
        _, lower = clear_gain(asr_before, asr_after, DEFENSE_FLOOR)
        ca_loss = statistics.fmean(ca_before) - statistics.fmean(ca_after)
        kind = "kept" if not lower else "broke" if ca_loss > CA_BROKEN else "removed"
        outcomes[kind].append(LABELS[arm])
    strength = (
        "near-total and clearly above it"
        if works
        else "not near-total"
        if above_clean
        else "not clearly above it: no clear backdoor"
    )
    ca_note = "clear: beyond 2 SE and 0.8 points" if ca_hurt else "not clear: within 2 SE or under 0.8 points"
    parts = [
        f"Attack: ASR {100 * mean_asr:.1f}% vs {100 * statistics.fmean(asr['clean']):.1f}% for the clean "
        f"model ({strength})",
        f"CA drop {100 * ca_drop:+.1f} points ({ca_note})",
        "ASR clearly reduced, CA kept: " + (", ".join(outcomes["removed"]) or "none"),
        f"ASR clearly reduced, but CA fell by more than {100 * CA_BROKEN:.0f} points: "
        + (", ".join(outcomes["broke"]) or "none"),
        "ASR not clearly reduced: " + (", ".join(outcomes["kept"]) or "none"),
    ]
    if not works:
        outcome = "did not reproduce" if not above_clean else "partly reproduced"
    else:
        held = (not ca_hurt) + (not outcomes["removed"])
        outcome = ("partly reproduced", "partly reproduced", "reproduced")[held]
    return (
        "; ".join(parts) + ". Claim (BadCLIP++: near-100% ASR from a small poison share, persisting through "
        f"defenses and fine-tuning with < 0.8% CA drop) {outcome}."
    )


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def log(start: float, text: str) -> None:
    print(f"[{time.time() - start:7.1f}s] {text}", flush=True)


def cached(run_dir: Path, overrides: list[str], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``, or what it returned before for the same overrides (``run_dir``/backdoor.json):
    an interrupted full run picks up where it stopped."""
    record = run_dir / "backdoor.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved["overrides"] == overrides:
            return {**saved["found"], "reused": True}
    found = compute()
    record.write_text(json.dumps({"overrides": overrides, "found": found}))
    return found


def run(setup: Setup, cache: Path, start: float) -> tuple[dict, list, dict, int]:
    """Train and measure every arm; returns (results, detector AUROCs, persistence curves, the
    number of runs reused from the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    manifest, mask = poisoned_manifest(setup, cache / "data")
    log(start, f"poisoned set: {int(mask.sum())} of {mask.numel()} pairs -> {manifest}")
    test = test_set(setup)
    scratch_arms = ("clean", "poisoned", *DEFENSES)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in (*scratch_arms, *FINETUNES)}
    curves: dict[str, list[dict[int, dict[str, float]]]] = {arm: [] for arm in FINETUNES}
    detectors, reused = [], 0
    for arm in scratch_arms:
        seeds = setup.seeds if arm in ("clean", "poisoned") else setup.defense_seeds
        for seed in range(seeds):
            run_dir = cache / f"{arm}-s{seed}"
            overrides = arm_overrides(arm, setup, seed, manifest)

            def scratch(arm=arm, run_dir=run_dir, overrides=overrides, seed=seed) -> dict[str, Any]:
                trainer, result = train_arm(run_dir, overrides, test)
                if arm != "poisoned":
                    return {"result": result}
                return {"result": result, "detectors": detector_aurocs(trainer, manifest, mask, setup, seed)}

            found = cached(run_dir, overrides, scratch)
            reused += found.get("reused", False)
            results[arm].append(found["result"])
            log(start, f"{arm} seed {seed}: " + format_metrics(found["result"]))
            if arm != "poisoned":
                continue
            detectors.append(found["detectors"])
            log(start, "  detectors: " + format_metrics(detectors[-1]))
            for ft in FINETUNES if seed < setup.finetune_seeds else ():
                ft_dir, ft_overrides = cache / f"{ft}-s{seed}", finetune_overrides(ft, setup, seed, run_dir)

                def tune(ft_dir=ft_dir, ft_overrides=ft_overrides, before=found["result"]) -> dict[str, Any]:
                    tuned, result = train_arm(ft_dir, ft_overrides, test)
                    return {"result": result, "curve": persistence(tuned, before, test, setup)}

                tuned = cached(ft_dir, ft_overrides, tune)
                reused += tuned.get("reused", False)
                results[ft].append(tuned["result"])
                curves[ft].append({int(k): v for k, v in tuned["curve"].items()})
                log(
                    start,
                    f"  {ft} seed {seed}: " + format_metrics(tuned["result"]),
                )
    return results, detectors, curves, reused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (2; 1 with --quick or on a busy CPU)"
    )
    args = parser.parse_args(argv)
    args.threads = args.threads or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    start = time.time()
    setup = QUICK if args.quick else FULL
    docs = args.docs if args.quick else (args.docs or DOCS)
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) if args.quick else CACHE / f"n{setup.n_train}-steps{setup.steps}"
        results, detectors, curves, reused = run(setup, cache, start)
    results = {arm: runs for arm, runs in results.items() if runs}
    table = "\n\n".join(
        [main_table(results), detector_table(detectors), persistence_table(curves, setup.grid)]
    )
    summary = verdict(results, curves)
    runtime = time.time() - start
    caption = (
        f"shapes ({'--quick' if args.quick else 'full run'}): {setup.n_train} training pairs at "
        f"{setup.image_size}x{setup.image_size}, {round(POISON_RATE * setup.n_train)} poisoned "
        f"({100 * POISON_RATE:.1f}%, "
        f'{PATCH}x{PATCH} centre BadNet patch, caption "{TARGET_CAPTION}"); {setup.steps} steps x batch '
        f"{setup.batch} per run; fine-tuning batch {setup.finetune_batch}, lr {FINETUNE_LR:g}; test: "
        f"{setup.n_test} shapes test images; detectors on {setup.n_detect} sampled training pairs, k = "
        f"{setup.k}; mean ± std over seeds; run time {runtime:.0f}s on {args.threads} CPU thread(s)"
        f"{f' ({reused} runs reused from the cache)' if reused else ''}."
    )
    command = "python experiments/backdoor.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
