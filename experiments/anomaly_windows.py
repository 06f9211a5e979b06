"""Claim (VETime, METHODS.md 3.19): the anomaly-window contrast (AWCL) sharpens anomaly detection.

    python experiments/anomaly_windows.py            # Daphnet + ItalyPowerDemand, 3 seeds, ~5 min
    python experiments/anomaly_windows.py --quick    # synthetic series, a few seconds (smoke test)

Setup (the check METHODS asks for, on the real series this machine has):

- Series: Daphnet S06R02E0 (the ankle's vertical acceleration, 7,040 points at 64 Hz; its own
  freezing labels are not used) and ItalyPowerDemand (the 1,096 train+test days of 24 hourly
  values, concatenated into one series). Each is standardised (median, IQR); the first 70% is
  the training part, the last 30% the test part. ``--quick`` uses a synthetic AR(1) + sine series.
- Anomalies injected into windows of 256 points (32 patches of 8): 1 or 2 per window, each a
  spike (1-3 points, +-3..6), a level shift (12-48 points, +-1..2.5) or a frequency shift
  (16-48 points replaced by the series played 2-3x faster). Training windows are random crops
  with fresh injections every step; the test windows are the non-overlapping windows of the test
  part, each injected 8 times with fixed seeds.
- Two views: the raw window (z^2, VETime's TS branch) and a smoothed copy (moving average over 9
  points; z^1, standing in for the rendered image branch).
- Model: per view a small patch encoder (a stride-8 patch convolution to 32 channels, then three
  dilated convolutions over patches, GELU) and a projection MLP 32 -> 32 -> 16 (GELU,
  L2-normalised) for AWCL; the anomaly head is a linear map of both views' patch tokens
  to one logit per patch, trained with BCE on patch labels (a patch is anomalous if any point is).
- Arms (same seeds, initialisation and batches; AWCL draws its background windows from its own
  generator): BCE alone (L_AD), and L_AD + 0.1 AWCL
  (tau 0.1, 10 background windows, 50 tries). Adam lr 2e-3, batch 32.
- Metrics on the test windows, the patch probability given to each of its points: point F1 at
  threshold 0.5; onset error = |first flagged point in [s - 8, e) - s| per true anomaly [s, e)
  (a missed anomaly counts as e - s + 8), in points, mean over anomalies; and the share of
  anomalies detected. Mean and std over seeds.

The full run rewrites the marked block of docs/methods/sequences.md; ``--quick`` writes nowhere
unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.data.segments import find_segments
from contrastkit.losses.anomaly import anomaly_window_info_nce
from contrastkit.report.blocks import clear_gain, mean_std, print_progress, publish_result

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "timeseries"
DOCS = ROOT / "docs" / "methods" / "sequences.md"
BEGIN, END = "<!-- anomaly-windows-table:begin -->", "<!-- anomaly-windows-table:end -->"
ARMS = ("bce", "awcl")
LABELS = {"bce": "BCE (L_AD)", "awcl": "L_AD + 0.1 AWCL"}
WINDOW, PATCH = 256, 8
SMOOTH = 9
AWCL_WEIGHT = 0.1
TEST_REPEATS = 8
MIN_GAIN = {"f1": 0.005, "onset": 0.25}  # a difference must also exceed these to count

# --------------------------------------------------------------------------------------------
# series
# --------------------------------------------------------------------------------------------


def standardise(x: torch.Tensor) -> torch.Tensor:
    """(x - median) / IQR: robust to the spikes and gaps of a real recording."""
    q1, med, q3 = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype))
    return (x - med) / (q3 - q1)


def load_daphnet() -> torch.Tensor:
    """The ankle's vertical acceleration of Daphnet S06R02E0 (7,040 points)."""
    lines = (DATA / "Daphnet_S06R02E0" / "S06R02E0.csv").read_text().splitlines()
    column = lines[0].split(",").index("ankle_vert")
    return torch.tensor([float(line.split(",")[column]) for line in lines[1:]])


def load_italy_power() -> torch.Tensor:
    """ItalyPowerDemand's train and test days (24 values each, sktime .ts) in one series."""
    values: list[float] = []
    for split in ("TRAIN", "TEST"):
        text = (DATA / "ItalyPowerDemand" / f"ItalyPowerDemand_{split}.ts").read_text()
        cases = text.split("@data", 1)[1].split()
        for case in cases:
            values += [float(v) for v in case.split(":")[0].split(",")]
    return torch.tensor(values)


def synthetic_series(n: int, seed: int = 0) -> torch.Tensor:
    """AR(1) noise (phi 0.8) on a sine of period 48: the ``--quick`` stand-in."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, generator=g) * 0.3
    ar = torch.zeros(n)
    for t in range(1, n):
        ar[t] = 0.8 * ar[t - 1] + noise[t]
    return torch.sin(torch.arange(n) * 2 * torch.pi / 48) + ar


# --------------------------------------------------------------------------------------------
# anomalies and views
# --------------------------------------------------------------------------------------------


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _int(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=g))


def inject(window: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """1 or 2 anomalies (spike, level shift or frequency shift) -> (series, point labels bool)."""
    x, labels = window.clone(), torch.zeros(window.shape[0], dtype=torch.bool)
    n = x.shape[0]
    for _ in range(_int(g, 1, 2)):
        kind = _int(g, 0, 2)
        sign = 1.0 if _int(g, 0, 1) else -1.0
        if kind == 0:
            length = _int(g, 1, 3)
            s = _int(g, 0, n - length)
            x[s : s + length] += sign * _uniform(g, 3.0, 6.0)
        elif kind == 1:
            length = _int(g, 12, 48)
            s = _int(g, 0, n - length)
            x[s : s + length] += sign * _uniform(g, 1.0, 2.5)
        else:
            length, speed = _int(g, 16, 48), _int(g, 2, 3)
            s = _int(g, 0, n - length)
            source = (s + speed * torch.arange(length)).clamp(max=n - 1)
            x[s : s + length] = window[source]
        labels[s : s + length] = True
    return x, labels


def smoothed(x: torch.Tensor) -> torch.Tensor:
    """(B, T) -> moving average over SMOOTH points (edges replicated): the second view."""
    padded = F.pad(x[:, None], (SMOOTH // 2, SMOOTH // 2), mode="replicate")
    return F.avg_pool1d(padded, SMOOTH, stride=1)[:, 0]


def patch_labels(point_labels: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T / PATCH): a patch is anomalous if any of its points is."""
    return point_labels.view(point_labels.shape[0], -1, PATCH).any(dim=-1)


def training_batch(series: torch.Tensor, batch: int, g: torch.Generator):
    starts = torch.randint(0, series.shape[0] - WINDOW + 1, (batch,), generator=g).tolist()
    pairs = [inject(series[s : s + WINDOW], g) for s in starts]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def held_out_windows(series: torch.Tensor, seed: int = 10_000):
    """Every non-overlapping window of ``series``, each injected TEST_REPEATS times."""
    g = torch.Generator().manual_seed(seed)
    n = series.shape[0] // WINDOW
    pairs = [inject(series[i * WINDOW : (i + 1) * WINDOW], g) for _ in range(TEST_REPEATS) for i in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


class PatchEncoder(nn.Module):
    """(B, T) -> (B, T / PATCH, dim) patch tokens: a patch convolution, then dilated convolutions."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Conv1d(1, dim, PATCH, stride=PATCH)
        self.context = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=d, dilation=d) for d in (1, 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.embed(x[:, None]))
        for conv in self.context:
            h = h + F.gelu(conv(h))
        return h.transpose(1, 2)


class TwoViewDetector(nn.Module):
    """Raw and smoothed views, a patch encoder and a projection MLP each, a shared patch head."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(PatchEncoder(dim) for _ in range(2))
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim // 2)) for _ in range(2)
        )
        self.head = nn.Linear(2 * dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T) -> patch logits (B, N), z_image (B, N, D/2), z_series (B, N, D/2)."""
        tokens = [encoder(view) for encoder, view in zip(self.encoders, (smoothed(x), x), strict=True)]
        z_image, z_series = (F.normalize(p(t), dim=-1) for p, t in zip(self.projections, tokens, strict=True))
        return self.head(torch.cat(tokens, dim=-1))[..., 0], z_image, z_series


def train(arm: str, series: torch.Tensor, *, steps: int, batch: int, seed: int) -> TwoViewDetector:
    g = torch.Generator().manual_seed(seed)  # the batches: the same for both arms
    g_awcl = torch.Generator().manual_seed(seed + 1)  # AWCL's background windows, its own stream
    torch.manual_seed(seed)
    model = TwoViewDetector()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x, points = training_batch(series, batch, g)
        labels = patch_labels(points)
        logits, z_image, z_series = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        if arm == "awcl":
            awcl = anomaly_window_info_nce(z_image, z_series, labels, generator=g_awcl)
            loss = loss + AWCL_WEIGHT * awcl.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def point_f1(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """F1 of point predictions (bool, any shape) pooled over all points; 0 when nothing is hit."""
    hits = float((predicted & truth).sum())
    if hits == 0:
        return 0.0
    return 2 * hits / (float(predicted.sum()) + float(truth.sum()))


def onset_errors(predicted: torch.Tensor, truth: torch.Tensor) -> list[tuple[float, bool]]:
    """Per true anomaly [s, e) of each row: (|first flagged point in [s - PATCH, e) - s|, detected);
    a missed anomaly scores e - s + PATCH."""
    out = []
    for row, segments in enumerate(find_segments(truth)):
        for s, e in segments:
            flagged = predicted[row, max(0, s - PATCH) : e].nonzero()
            if flagged.numel():
                out.append((abs(int(flagged[0, 0]) + max(0, s - PATCH) - s), True))
            else:
                out.append((float(e - s + PATCH), False))
    return out


@torch.no_grad()
def evaluate(model: TwoViewDetector, x: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    logits = model(x)[0]
    predicted = (logits > 0).repeat_interleave(PATCH, dim=1)  # sigmoid > 0.5, patch -> its points
    onsets = onset_errors(predicted, truth)
    return {
        "f1": point_f1(predicted, truth),
        "onset": statistics.fmean(err for err, _ in onsets),
        "detected": 100 * statistics.fmean(hit for _, hit in onsets),
    }


# --------------------------------------------------------------------------------------------
# table and verdict
# --------------------------------------------------------------------------------------------

COLUMNS = ("f1", "onset", "detected")
HEADER = ("point F1 ↑", "onset error (points) ↓", "anomalies detected (%)")


def format_table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = ["| series | arm | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 2) + "|"]
    for name, arms in results.items():
        for arm, runs in arms.items():
            cells = (mean_std([r[c] for r in runs], 3 if c == "f1" else 1) for c in COLUMNS)
            lines.append(f"| {name} | {LABELS[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def awcl_gain(runs: dict[str, list[dict[str, float]]], column: str) -> tuple[float, bool]:
    """(AWCL's improvement in ``column``, positive = better; whether it exceeds 2 SE and MIN_GAIN)."""
    sign = -1.0 if column == "onset" else 1.0
    a = [sign * r[column] for r in runs["awcl"]]
    b = [sign * r[column] for r in runs["bce"]]
    return clear_gain(a, b, MIN_GAIN[column])


def verdict(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    parts, held, losses = [], 0, 0
    for name, runs in results.items():
        for column, what in (("f1", "point F1"), ("onset", "onset error reduced by")):
            gain, clear = awcl_gain(runs, column)
            _, worse = awcl_gain({"awcl": runs["bce"], "bce": runs["awcl"]}, column)
            held += clear
            losses += worse
            note = "clear gain" if clear else ("clear loss" if worse else "no clear difference")
            parts.append(f"{name} {what} {gain:+.3f} ({note})")
    checks = 2 * len(results)
    outcome = "reproduced" if held == checks else ("partly reproduced" if held else "did not reproduce")
    return (
        "AWCL vs BCE alone: " + "; ".join(parts) + f" (clear = beyond 2 SE and {MIN_GAIN['f1']} F1 / "
        f"{MIN_GAIN['onset']} points; {held} of {checks} checks gained, {losses} lost). "
        f"Claim (AWCL raises point F1 and lowers the onset error) {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run on a synthetic series (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (1000; 20 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    steps = args.steps or (20 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 3)
    batch = 32
    docs = args.docs if args.quick else (args.docs or DOCS)
    if args.quick:
        sources = {"synthetic AR(1) + sine": synthetic_series(4 * WINDOW)}
    else:
        sources = {"Daphnet (ankle)": load_daphnet(), "ItalyPowerDemand": load_italy_power()}

    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    sizes = []
    for name, raw in sources.items():
        series = standardise(raw)
        cut = int(0.7 * series.shape[0])
        x_test, truth = held_out_windows(series[cut:])
        sizes.append(f"{name} {series.shape[0]} points, {x_test.shape[0]} test windows")
        results[name] = {arm: [] for arm in ARMS}
        for arm in ARMS:
            for seed in range(seeds):
                t0 = time.time()
                model = train(arm, series[:cut], steps=steps, batch=batch, seed=seed)
                metrics = evaluate(model, x_test, truth)
                results[name][arm].append(metrics)
                print_progress(start, f"{name} {arm} seed {seed}", metrics, t0)

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Injected anomalies ({'--quick' if args.quick else 'full run'}): {'; '.join(sizes)}; windows of "
        f"{WINDOW} points in patches of {PATCH}; {steps} steps x batch {batch}, {seeds} seed(s), "
        f"mean ± std; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/anomaly_windows.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
