"""Claim (MoBind, METHODS.md 3.16): the token loss gives sub-window synchronisation that the
global loss cannot.

    python experiments/imu_alignment.py            # 3 sensor pairings x 2 arms x 2 seeds, ~6 min
    python experiments/imu_alignment.py --quick    # synthetic stand-in, a few seconds (smoke test)

Setup: paired sensor streams cut into windows of tokens (one token = one patch of P samples).

- Pairings (real IMU data, ../shared/data/timeseries): BasicMotions accelerometer <-> gyroscope
  (3 + 3 channels, 10 Hz, its own 40/40 train/test cases); Daphnet S06R02E0 ankle <-> thigh and
  ankle <-> trunk accelerometers (3 axes each, 64 Hz averaged down to 32 Hz; the first 60 % of
  the recording trains, the last 40 % tests). ``--quick`` uses synthetic periodic "limb" motion
  and its second derivative plus noise (METHODS.md 3.16's check) instead.
- Model: ``ContrastiveModel`` with one ``SeriesPatchTransformer`` per sensor (dim 32, depth 2,
  4 heads, CLS pooling), embed_dim 32, ``token_heads=True``; the objective is the trainer's own
  (``build_objective``): CLIP on the CLS embeddings (learnable scale), plus 0.5 ``token_info_nce``
  on the per-patch tokens for the "global + token" arm (``loss.token_weight: 0.5``). Random aligned
  crops, each window standardised per channel; batch 64, AdamW lr 1e-3, wd 1e-4, same seeds and
  batches for both arms.
- Cross-modal R@1: aligned test windows (stride W/2), first sensor -> second and back, averaged.
- Synchronisation: the first sensor's window is taken delta samples late, delta uniform in
  [-D, D]; the second sensor's window slides over every offset k in [-D, D] and k^ = argmax of a
  similarity; error |k^ - delta| in seconds (MAE). Two similarities: the global cosine of the
  CLS embeddings, and the sliding token similarity (mean over n of <t_a[n], t_b[n]>, the tokens at
  the same index). Each arm is scored by its better estimator. Chance (uniform guess) MAE ~ 2D/3.

The full run rewrites the marked block of docs/methods/sequences.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from contrastkit.eval.retrieval import paired_retrieval
from contrastkit.models import build_model
from contrastkit.models.contrastive import tokens_key
from contrastkit.report.blocks import mean_std, publish_result
from contrastkit.train.config import load_config
from contrastkit.train.objective import build_objective

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "timeseries"
DOCS = ROOT / "docs" / "methods" / "sequences.md"
BEGIN, END = "<!-- imu-alignment-table:begin -->", "<!-- imu-alignment-table:end -->"
TOKEN_WEIGHT = 0.5
ARMS = {"global": None, "global + token": TOKEN_WEIGHT}
GAIN = 0.5  # the token arm's sync MAE must be at most half the global arm's to count


class Pairing(NamedTuple):
    """Two sensors' streams: train/test lists of ((C, T), (C, T)) float32 arrays, sampled at fs Hz;
    windows of ``window`` samples cut into patches of ``patch``; shifts up to ``max_shift``."""

    name: str
    train: list[tuple[np.ndarray, np.ndarray]]
    test: list[tuple[np.ndarray, np.ndarray]]
    fs: float
    window: int
    patch: int
    max_shift: int


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def read_ts(path: Path) -> np.ndarray:
    """An sktime .ts file of equal-length cases -> (cases, dims, T) float32 (labels dropped)."""
    cases, in_data = [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@data"):
            in_data = True
            continue
        if in_data:
            dims = line.split(":")[:-1]  # the label is last
            cases.append([[float(v) for v in d.split(",")] for d in dims])
    return np.asarray(cases, dtype=np.float32)


def basic_motions(root: Path) -> Pairing:
    """BasicMotions: channels 0-2 accelerometer, 3-5 gyroscope, 100 steps at 10 Hz."""
    splits = [read_ts(root / "BasicMotions" / f"BasicMotions_{s}.ts") for s in ("TRAIN", "TEST")]
    train, test = ([(case[:3], case[3:]) for case in split] for split in splits)
    return Pairing("BasicMotions accel <-> gyro", train, test, 10.0, 40, 4, 10)


DAPHNET_SENSORS = {"ankle": "ankle", "thigh": "leg", "trunk": "trunk"}
DAPHNET_AXES = ("horiz_fwd", "vert", "horiz_lateral")


def daphnet(root: Path, first: str, second: str) -> Pairing:
    """Daphnet S06R02E0: two body-worn accelerometers, 64 Hz averaged to 32 Hz; time split 60/40."""
    path = root / "Daphnet_S06R02E0" / "S06R02E0.csv"
    header = path.read_text().splitlines()[0].split(",")
    values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, len(header)), dtype=np.float32)
    columns = header[1:]

    def sensor(name: str) -> np.ndarray:
        prefix = DAPHNET_SENSORS[name]
        x = values[:, [columns.index(f"{prefix}_{axis}") for axis in DAPHNET_AXES]].T
        x = x[:, : x.shape[1] // 2 * 2]
        return x.reshape(3, -1, 2).mean(axis=2)

    a, b = sensor(first), sensor(second)
    cut = int(0.6 * a.shape[1])
    return Pairing(
        f"Daphnet {first} <-> {second}",
        [(a[:, :cut], b[:, :cut])],
        [(a[:, cut:], b[:, cut:])],
        32.0,
        64,
        4,
        16,
    )


def synthetic(cases: int, length: int, generator: torch.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Periodic limb motion (3 axes, 2 random harmonics each) and its IMU: the second derivative
    plus noise, at 10 Hz."""
    t = torch.arange(length, dtype=torch.float64) / 10.0
    out = []
    for _ in range(cases):
        freq = 0.3 + 1.2 * torch.rand(3, 2, 1, generator=generator, dtype=torch.float64)
        phase = 2 * torch.pi * torch.rand(3, 2, 1, generator=generator, dtype=torch.float64)
        amp = 0.5 + torch.rand(3, 2, 1, generator=generator, dtype=torch.float64)
        omega = 2 * torch.pi * freq
        pose = (amp * torch.sin(omega * t + phase)).sum(1)
        imu = -(amp * omega**2 * torch.sin(omega * t + phase)).sum(1)
        imu = imu + 0.3 * imu.std() * torch.randn(imu.shape, generator=generator, dtype=torch.float64)
        out.append((pose.float().numpy(), imu.float().numpy()))
    return out


def synthetic_pairing(generator: torch.Generator) -> Pairing:
    return Pairing(
        "synthetic pose <-> IMU",
        synthetic(32, 100, generator),
        synthetic(8, 100, generator),
        10.0,
        40,
        4,
        10,
    )


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each window's channels to mean 0, std 1 (B, C, W), as the data layer's SeriesTransform."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-6)


def crops(
    streams: list[tuple[np.ndarray, np.ndarray]], starts: list[tuple[int, int, int]], window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (case, start_a, start_b) -> standardised (B, C, window) pairs."""
    a = np.stack([streams[c][0][:, s : s + window] for c, s, _ in starts])
    b = np.stack([streams[c][1][:, s : s + window] for c, _, s in starts])
    return standardise(torch.from_numpy(a)), standardise(torch.from_numpy(b))


def random_starts(
    streams: list[tuple[np.ndarray, np.ndarray]], n: int, window: int, generator: torch.Generator
) -> list[tuple[int, int, int]]:
    """n aligned random crops, cases drawn by length."""
    lengths = torch.tensor([a.shape[1] - window + 1 for a, _ in streams], dtype=torch.float64)
    cases = torch.multinomial(lengths, n, replacement=True, generator=generator).tolist()
    out = []
    for c in cases:
        s = int(torch.randint(int(lengths[c]), (1,), generator=generator))
        out.append((c, s, s))
    return out


# --------------------------------------------------------------------------------------------
# training and metrics
# --------------------------------------------------------------------------------------------


def make_config(pairing: Pairing, token_weight: float | None):
    tower = (
        f"{{type: series_patch, in_channels: 3, patch_size: {pairing.patch}, dim: 32, depth: 2, heads: 4, "
        f"max_patches: {pairing.window // pairing.patch}}}"
    )
    overrides = [f"model={{towers: {{first: {tower}, second: {tower}}}, embed_dim: 32, token_heads: true}}"]
    if token_weight is not None:
        overrides.append(f"loss.token_weight={token_weight}")
    return load_config(None, overrides)


def train_arm(pairing: Pairing, token_weight: float | None, seed: int, steps: int, batch: int = 64):
    """One model trained with the trainer's objective (global CLIP, + token loss when weighted)."""
    config = make_config(pairing, token_weight)
    torch.manual_seed(seed)
    model = build_model(config.model)
    objective = build_objective(config, model)
    optimizer = torch.optim.AdamW(model.param_groups(1e-4), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        a, b = crops(pairing.train, random_starts(pairing.train, batch, pairing.window, g), pairing.window)
        inputs = {"first": a, "second": b}
        loss = objective(model(inputs, tokens=objective.uses_tokens), inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


@torch.no_grad()
def embed(model, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return model({"first": a, "second": b}, tokens=True)


def grid_starts(pairing: Pairing, stride: int, margin: int) -> list[tuple[int, int]]:
    """(case, start) on a grid over the test streams, leaving ``margin`` samples free each side."""
    out = []
    for c, (a, _) in enumerate(pairing.test):
        out += [(c, s) for s in range(margin, a.shape[1] - pairing.window - margin + 1, stride)]
    return out


def recall_at_1(model, pairing: Pairing) -> float:
    """Cross-modal R@1 on aligned test windows (stride W/2), mean of both directions."""
    starts = [(c, s, s) for c, s in grid_starts(pairing, pairing.window // 2, 0)]
    z = embed(model, *crops(pairing.test, starts, pairing.window))
    ranks = paired_retrieval(z["first"], z["second"], torch.arange(len(starts)), ks=(1,))
    return 0.5 * (ranks["i2t_R@1"] + ranks["t2i_R@1"])


def sliding_scores(z_a: dict, z_b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One first-sensor window against K candidate offsets: (K,) global cosine and (K,) sliding
    token similarity (mean over token index n of <t_a[n], t_b[n]>)."""
    global_score = z_b["second"] @ z_a["first"][0]
    token_score = (z_b[tokens_key("second")] * z_a[tokens_key("first")]).sum(-1).mean(-1)
    return global_score, token_score


def sync_errors(model, pairing: Pairing, generator: torch.Generator) -> tuple[float, float]:
    """MAE in seconds of the imposed shift recovered by (global cosine, sliding token similarity)."""
    d, w = pairing.max_shift, pairing.window
    offsets = list(range(-d, d + 1))
    errors = {"global": [], "token": []}
    for c, s in grid_starts(pairing, max(w // 4, 1), d):
        delta = int(torch.randint(-d, d + 1, (1,), generator=generator))
        z_a = embed(model, *crops(pairing.test, [(c, s + delta, s + delta)], w))
        z_b = embed(model, *crops(pairing.test, [(c, s + k, s + k) for k in offsets], w))
        for name, score in zip(("global", "token"), sliding_scores(z_a, z_b), strict=True):
            errors[name].append(abs(offsets[int(score.argmax())] - delta))
    return tuple(statistics.fmean(errors[k]) / pairing.fs for k in ("global", "token"))


def chance_mae(pairing: Pairing) -> float:
    """E|k - delta| in seconds for k, delta independent uniform on [-D, D]."""
    d = pairing.max_shift
    values = torch.arange(-d, d + 1, dtype=torch.float64)
    return float((values[:, None] - values[None, :]).abs().mean()) / pairing.fs


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def run(
    pairings: list[Pairing], seeds: list[int], steps: int
) -> dict[tuple[str, str], dict[str, list[float]]]:
    results = {}
    for pairing in pairings:
        for arm, weight in ARMS.items():
            cell = results.setdefault((pairing.name, arm), {"r1": [], "global": [], "token": []})
            for seed in seeds:
                model = train_arm(pairing, weight, seed, steps)
                cell["r1"].append(recall_at_1(model, pairing))
                mae_global, mae_token = sync_errors(
                    model, pairing, torch.Generator().manual_seed(1000 + seed)
                )
                cell["global"].append(mae_global)
                cell["token"].append(mae_token)
    return results


def _fmt(values: list[float], digits: int = 2) -> str:
    return mean_std(values, digits)


def best_mae(cell: dict[str, list[float]]) -> float:
    """An arm's sync MAE with its better estimator (global cosine or sliding tokens)."""
    return min(statistics.fmean(cell["global"]), statistics.fmean(cell["token"]))


def table(results, pairings: list[Pairing]) -> str:
    lines = [
        "| pairing | arm | R@1 | sync MAE, global cosine (s) | sync MAE, sliding tokens (s) "
        "| chance MAE (s) |",
        "|---|---|---|---|---|---|",
    ]
    for pairing in pairings:
        for arm in ARMS:
            cell = results[(pairing.name, arm)]
            lines.append(
                f"| {pairing.name} | {arm} | {_fmt(cell['r1'])} | {_fmt(cell['global'])} | "
                f"{_fmt(cell['token'])} | {chance_mae(pairing):.2f} |"
            )
    return "\n".join(lines)


def verdict(results, pairings: list[Pairing]) -> str:
    """Decided from the numbers: per pairing, does the token arm's best sync MAE fall to at most
    GAIN x the global arm's best?"""
    wins = []
    for pairing in pairings:
        token = best_mae(results[(pairing.name, "global + token")])
        plain = best_mae(results[(pairing.name, "global")])
        wins.append((pairing.name, token <= GAIN * plain, token, plain))
    held = sum(w for _, w, _, _ in wins)
    outcome = "reproduced" if held == len(wins) else "did not reproduce" if held == 0 else "partly reproduced"
    details = "; ".join(f"{name}: {token:.2f} s vs {plain:.2f} s" for name, _, token, plain in wins)
    return (
        f"Claim 'the token loss gives sub-window synchronisation that the global loss cannot' {outcome}: "
        f"the global + token arm's best sync MAE is at most {GAIN} x the global arm's on {held} of "
        f"{len(wins)} pairings ({details})."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, few steps (smoke test)")
    parser.add_argument("--docs", type=Path, default=None, help="Markdown page to write the table into")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start, start_cpu = time.perf_counter(), time.process_time()
    if args.quick:
        pairings, seeds, steps = [synthetic_pairing(torch.Generator().manual_seed(0))], [0], 20
    else:
        if not DATA.is_dir():
            sys.exit(f"imu_alignment: the real data folder {DATA} is absent; run with --quick instead.")
        pairings = [basic_motions(DATA), daphnet(DATA, "ankle", "thigh"), daphnet(DATA, "ankle", "trunk")]
        seeds, steps = list(range(args.seeds)), args.steps
    results = run(pairings, seeds, steps)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    docs = args.docs if args.docs is not None or args.quick else DOCS
    command = "python experiments/imu_alignment.py" + (" --quick" if args.quick else "")
    caption = (
        f"IMU alignment, global vs global + {TOKEN_WEIGHT} token loss: {len(seeds)} seed(s), {steps} steps, "
        f"mean ± std over seeds; {elapsed / 60:.1f} min wall clock, {cpu / 60:.1f} min CPU time on one "
        f"thread."
    )
    publish_result(
        docs, BEGIN, END, caption=caption, table=table(results, pairings),
        summary=verdict(results, pairings), command=command,
    )  # fmt: skip


if __name__ == "__main__":
    main()
