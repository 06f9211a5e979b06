"""Claim (AVDE, METHODS.md 3.18): the 0.8 MSE + 0.2 CLIP mixture serves retrieval and regression.

    python experiments/regression_contrast.py            # CIFAR-10 features, ~3-8 min (after the cache)
    python experiments/regression_contrast.py --quick    # tiny shapes features, seconds (smoke test)

The claim, made testable: trained on the same data, the mixture beats pure MSE on 200-way
identification (top-1) and beats pure InfoNCE (the symmetric CLIP loss) on embedding cosine error.

Setup:

- Targets v: frozen 128-d L2-normalised image embeddings of a contrastkit SupCon CNN trained on
  CIFAR-10 (experiments/cifar_features.py): 10,000 train and 10,000 test images.
- A linear-Gaussian "brain": EEG = A v + sigma n with A (64 x 128) of i.i.d. N(0, 1) entries and
  n ~ N(0, I_64), sigma = 0.3 (the default of ``--noise``), one fixed brain (seed 0). 64 < 128
  channels and the noise make the task lossy: neither trivial nor hopeless.
- Decoder: a linear map 64 -> 128 (with bias), trained with AdamW (AVDE: lr 5e-4, weight decay
  0.05 on the weights, batch 128, 50 epochs over the train split), with a learnable logit
  parameter t (init ln(1/0.07), no weight decay; clamped after each step to [0, ln 100] with exp,
  to [0, 100] without).
- Objectives: ``regression_clip_loss`` with alpha = 1 (MSE), 0 (InfoNCE) and 0.8 (the mixture;
  ``--alpha``), weight 10, in the four modes normalised/raw x exp/no-exp (MSE has no scale, so
  two modes). The faithful AVDE mode is raw + no-exp.
- Evaluation on 2,000 test images, each its own class: 200-way top-1/top-5 (``kway_zero_shot``,
  10 seeded draws; class embeddings = the test images' v), embedding cosine error
  mean(1 - cos(e_i, v_i)) and MSE of the raw prediction; mean ± std over seeds (decoder init and
  batch order).

The full run rewrites the marked block of docs/methods/regression-contrast.md; ``--quick`` writes
nowhere unless ``--docs PATH`` is given.
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

from contrastkit.eval.kway import kway_zero_shot
from contrastkit.losses.regression import regression_clip_loss
from contrastkit.report.blocks import mean_std, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "regression-contrast.md"
BEGIN, END = "<!-- regression-contrast-table:begin -->", "<!-- regression-contrast-table:end -->"
MODES = ((False, False), (False, True), (True, False), (True, True))  # (normalize, exp_scale)
T_INIT = math.log(1 / 0.07)


def load_features(quick: bool):
    """The shared frozen image embeddings (experiments/ is on sys.path when this runs as a script)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cifar_features import cifar10_features

    return cifar10_features(quick=quick)


def linear_brain(v: torch.Tensor, channels: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """EEG = A v + noise * n for a fixed A (channels, D) drawn first from ``generator``."""
    mixing = torch.randn(channels, v.shape[1], generator=generator)
    return v @ mixing.T + noise * torch.randn(v.shape[0], channels, generator=generator)


def mixture_name(alpha: float) -> str:
    return f"{alpha:g}·MSE + {1 - alpha:.3g}·CLIP"


def objectives(alpha: float) -> dict[str, float]:
    """Row name -> the alpha of ``regression_clip_loss``: MSE, InfoNCE and the mixture."""
    return {"MSE": 1.0, "InfoNCE": 0.0, mixture_name(alpha): alpha}


def runs(alpha: float) -> list[tuple[str, bool, bool]]:
    """(objective, normalize, exp_scale) of every row; MSE has no scale, so exp is not varied."""
    out = []
    for name in objectives(alpha):
        for normalize, exp_scale in MODES:
            if name == "MSE" and exp_scale:
                continue
            out.append((name, normalize, exp_scale))
    return out


def train_decoder(eeg, v, *, alpha, normalize, exp_scale, epochs, batch, lr, seed) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = torch.nn.Linear(eeg.shape[1], v.shape[1])
    t = torch.nn.Parameter(torch.tensor(T_INIT))
    optimizer = torch.optim.AdamW(
        [
            {"params": [decoder.weight], "weight_decay": 0.05},
            {"params": [decoder.bias, t], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    t_max = math.log(100) if exp_scale else 100.0
    for _ in range(epochs):
        order = torch.randperm(eeg.shape[0], generator=g)
        for s in range(0, eeg.shape[0] - batch + 1, batch):
            rows = order[s : s + batch]
            loss = regression_clip_loss(
                decoder(eeg[rows]), v[rows], t, alpha=alpha, normalize=normalize, exp_scale=exp_scale
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                t.clamp_(0, t_max)
    return decoder


@torch.no_grad()
def evaluate(pred: torch.Tensor, v: torch.Tensor, k: int, n_draws: int) -> dict[str, float]:
    """200-way top-1/top-5 in % (each row its own class), cosine error and MSE of the raw prediction."""
    kway = kway_zero_shot(
        pred, v, torch.arange(v.shape[0]), k=k, n_draws=n_draws, generator=torch.Generator().manual_seed(0)
    )
    return {
        "top1": 100 * kway["top1"],
        "top5": 100 * kway["top5"],
        "cos_err": float((1 - F.cosine_similarity(pred, v, dim=1)).mean()),
        "mse": float(F.mse_loss(pred, v)),
    }


COLUMNS = ("top1", "top5", "cos_err", "mse")


def _cell(values: list[float], column: str) -> str:
    if column == "mse":
        values = [1e3 * x for x in values]
    digits = 1 if column.startswith("top") else 3
    return mean_std(values, digits)


def _mean(results, key, column) -> float:
    return statistics.fmean(r[column] for r in results[key])


@torch.no_grad()
def reference_predictions(eeg_train, v_train, eeg_test, ridge: float = 1e-3) -> dict[str, torch.Tensor]:
    """Two untrained baselines: the train mean for every trial, and the closed-form ridge
    regression (the least-squares optimum that MSE training approaches)."""
    design = F.pad(eeg_train.double(), (0, 1), value=1.0)
    gram = design.T @ design + ridge * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, design.T @ v_train.double())
    return {
        "train mean (constant)": v_train.mean(0).expand(eeg_test.shape[0], -1),
        "ridge regression (closed form)": (F.pad(eeg_test.double(), (0, 1), value=1.0) @ weights).float(),
    }


def format_table(
    results: dict[tuple[str, bool, bool], list[dict[str, float]]],
    references: dict[str, dict[str, float]],
    k: int,
) -> str:
    header = (
        f"| objective | normalize | scale | {k}-way top-1 % | {k}-way top-5 % | cos error ↓ | MSE ×1e3 ↓ |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for (name, normalize, exp_scale), rows in results.items():
        scale = "—" if name == "MSE" else ("exp(t)" if exp_scale else "t (no exp)")
        cells = [_cell([r[c] for r in rows], c) for c in COLUMNS]
        lines.append(f"| {name} | {'unit' if normalize else 'raw'} | {scale} | " + " | ".join(cells) + " |")
    for name, metrics in references.items():
        cells = [_cell([metrics[c]], c) for c in COLUMNS]
        lines.append(f"| {name} | — | — | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: dict[tuple[str, bool, bool], list[dict[str, float]]]) -> str:
    """The claim in the faithful mode (raw, no exp), with the clean mode (unit, exp) alongside."""
    mix = next(name for name, _, _ in results if name not in ("MSE", "InfoNCE"))

    def check(normalize: bool, exp_scale: bool) -> tuple[bool, bool, str]:
        m, mse, nce = (
            (mix, normalize, exp_scale),
            ("MSE", normalize, False),
            ("InfoNCE", normalize, exp_scale),
        )
        retrieval = _mean(results, m, "top1") > _mean(results, mse, "top1")
        regression = _mean(results, m, "cos_err") < _mean(results, nce, "cos_err")
        beats = {True: "beats", False: "does not beat"}
        text = (
            f"top-1 {_mean(results, m, 'top1'):.1f}% vs MSE {_mean(results, mse, 'top1'):.1f}% "
            f"({beats[retrieval]} MSE), cos error {_mean(results, m, 'cos_err'):.3f} "
            f"vs InfoNCE {_mean(results, nce, 'cos_err'):.3f} ({beats[regression]} InfoNCE)"
        )
        return retrieval, regression, text

    faithful = check(False, False)
    clean = check(True, True)
    outcome = {2: "reproduced", 1: "partly reproduced", 0: "did not reproduce"}[sum(faithful[:2])]
    return (
        f"Claim (the mixture beats MSE on k-way top-1 and InfoNCE on cosine error, faithful mode) "
        f"{outcome}. Faithful mode (raw, no exp): mixture {faithful[2]}. "
        f"Clean mode (unit, exp): mixture {clean[2]}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes features, a few steps (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="decoder seeds per row (3; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (50; 2 with --quick)")
    parser.add_argument("--alpha", type=float, default=0.8, help="MSE share of the mixture (AVDE: 0.8)")
    parser.add_argument("--channels", type=int, default=64, help="EEG channels of the linear brain")
    parser.add_argument("--noise", type=float, default=0.3, help="EEG noise std sigma")
    parser.add_argument("--eval", type=int, default=2000, help="test images scored (each its own class)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    try:
        features = load_features(args.quick)
    except FileNotFoundError as err:
        print(f"SKIP: {err}")
        return 0
    log(f"features: {features.source}")
    if args.quick:
        epochs, seeds, docs = args.epochs or 2, args.seeds or 1, args.docs
    else:
        epochs, seeds, docs = args.epochs or 50, args.seeds or 3, args.docs or DOCS
    batch, lr, n_draws = 128, 5e-4, 10
    brain = torch.Generator().manual_seed(0)
    v_train, v_test = features.train_x.float(), features.test_x[: args.eval].float()
    eeg_train = linear_brain(torch.cat([v_train, v_test]), args.channels, args.noise, brain)
    eeg_train, eeg_test = eeg_train[: len(v_train)], eeg_train[len(v_train) :]
    k = min(200, len(v_test))

    results: dict[tuple[str, bool, bool], list[dict[str, float]]] = {}
    alphas = objectives(args.alpha)
    for name, normalize, exp_scale in runs(args.alpha):
        key = (name, normalize, exp_scale)
        results[key] = []
        for seed in range(seeds):
            decoder = train_decoder(
                eeg_train, v_train, alpha=alphas[name], normalize=normalize, exp_scale=exp_scale,
                epochs=epochs, batch=batch, lr=lr, seed=seed,
            )  # fmt: skip
            with torch.no_grad():
                results[key].append(evaluate(decoder(eeg_test), v_test, k, n_draws))
        m = results[key][-1]
        log(
            f"{name} normalize={normalize} exp={exp_scale}: top1 {m['top1']:.1f}%, cos err {m['cos_err']:.3f}"
        )

    references = {
        name: evaluate(pred, v_test, k, n_draws)
        for name, pred in reference_predictions(eeg_train, v_train, eeg_test).items()
    }
    table = format_table(results, references, k)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"{'--quick: ' if args.quick else ''}targets: {features.source}; {len(v_train)} train / "
        f"{len(v_test)} test images (each test image its own class, {k}-way, {n_draws} draws). "
        f"Brain: EEG = A v + {args.noise} n, {args.channels} channels. Linear decoder, {epochs} epochs x "
        f"batch {batch}, {seeds} seed(s), mean ± std; run time {runtime:.0f}s on "
        f"{args.threads} CPU thread(s)."
    )
    command = "python experiments/regression_contrast.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
