"""Loss benchmark: forward+backward time and peak memory, naive vs plain vs tiled, side by side.

    python bench/losses.py            # B in {1024, 4096, 16384} (+ 65536 tiled only), ~6 min
    python bench/losses.py --quick    # B in {512, 2048}, under a minute

Every case runs in a fresh subprocess, so its memory is its own; "peak MB" is the largest growth
of the resident set over the inputs while the step runs (sampled every 0.5 ms by a thread; the
loss's working memory plus the two input gradients, 2 B D floats for every implementation).
Implementations:

- naive: written the way open_clip computes it. CLIP: two logit matrices (x y^T and y x^T) and two
  cross-entropies (``ClipLoss``); SigLIP: a +-1 label matrix and ``-logsigmoid(labels * logits)``
  (``SigLipLoss``).
- plain: contrastkit with ``chunk_size=0`` (one logit matrix, materialised).
- tiled: contrastkit's tiled exact engine (``chunk_size=256``).

The useful work of one step is four B x B x D GEMM-equivalents (logits; their recompute or
transpose; dx; dy). A GEMM rate is measured in the same run, and "x 4 GEMM" is the step time
over the time of four such GEMMs at that rate (1.0 = the GEMMs alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

SIZES = (1024, 4096, 16384)
TILED_ONLY_SIZES = (65536,)
QUICK_SIZES = (512, 2048)
IMPLS = ("naive", "plain", "tiled")
LOSSES = ("clip", "siglip")
TILE_ROWS = 256


def naive_clip(x, y, scale, bias):
    """open_clip ``ClipLoss``: two logit matrices and two cross-entropies."""
    logits_per_image = scale * x @ y.T
    logits_per_text = scale * y @ x.T
    labels = torch.arange(x.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def naive_siglip(x, y, scale, bias):
    """open_clip ``SigLipLoss``: a +-1 label matrix and -logsigmoid(labels * logits) / B."""
    logits = scale * x @ y.T + bias
    labels = 2 * torch.eye(x.shape[0]) - torch.ones(x.shape[0], x.shape[0])
    return -F.logsigmoid(labels * logits).sum() / x.shape[0]


def loss_function(loss: str, impl: str):
    from contrastkit import clip_loss, siglip_loss

    if impl == "naive":
        return naive_clip if loss == "clip" else naive_siglip
    chunk = 0 if impl == "plain" else TILE_ROWS
    if loss == "clip":
        return lambda x, y, s, b: clip_loss(x, y, s, chunk_size=chunk)
    return lambda x, y, s, b: siglip_loss(x, y, s, b, chunk_size=chunk)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The largest resident set seen while the block runs, sampled by a thread."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.0005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _inputs(batch: int, dim: int):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    y = F.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
    return x, y, torch.tensor(14.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)


def run_case(loss: str, impl: str, batch: int, dim: int, repeats: int) -> dict:
    """One case in this process: best forward+backward time of ``repeats`` and the peak growth.

    A warm-up step on a 64-row batch first takes the one-time set-up out of the timing.
    """
    fn = loss_function(loss, impl)
    fn(*_inputs(64, dim)).backward()
    x, y, scale, bias = _inputs(batch, dim)
    before = _rss_mb()
    best = float("inf")
    with PeakRSS() as memory:
        for _ in range(repeats):
            x.grad = y.grad = scale.grad = bias.grad = None
            start = time.perf_counter()
            fn(x, y, scale, bias).backward()
            best = min(best, time.perf_counter() - start)
    return {"loss": loss, "impl": impl, "batch": batch, "seconds": best, "peak_mb": memory.peak - before}


def gemm_rate(dim: int) -> float:
    """FLOP/s of a (4096 x D) @ (D x 16384) float32 matmul, best of 3 after a warm-up."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, dim, generator=g), torch.randn(16384, dim, generator=g)
    a @ b.T
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - start)
    return 2 * 4096 * 16384 * dim / best


def in_subprocess(loss: str, impl: str, batch: int, dim: int) -> dict:
    repeats = 3 if batch <= 4096 else 1
    cmd = [sys.executable, __file__, "--case", loss, impl, str(batch), str(dim), str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"loss": loss, "impl": impl, "batch": batch, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict], rate: float, dim: int) -> str:
    lines = [
        "| loss | B | impl | fwd+bwd s | peak MB | time / naive | memory / naive | GFLOP/s | x 4 GEMM |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    naive = {(r["loss"], r["batch"]): r for r in results if r["impl"] == "naive" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['loss']} | {r['batch']} | {r['impl']} | failed: {' '.join(r['error'])} |||||")
            continue
        flops = 4 * 2 * r["batch"] ** 2 * dim
        base = naive.get((r["loss"], r["batch"]))
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        mem_ratio = f"{r['peak_mb'] / base['peak_mb']:.3f}" if base else "-"
        lines.append(
            f"| {r['loss']} | {r['batch']} | {r['impl']} | {r['seconds']:.3f} | {r['peak_mb']:.0f} | "
            f"{time_ratio} | {mem_ratio} | {flops / r['seconds'] / 1e9:.0f} | "
            f"{r['seconds'] / (flops / rate):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        loss, impl, batch, dim, repeats = args.case
        print(json.dumps(run_case(loss, impl, int(batch), int(dim), int(repeats))))
        return 0

    sizes = QUICK_SIZES if args.quick else SIZES
    cases = [(loss, impl, b) for loss in LOSSES for b in sizes for impl in IMPLS]
    if not args.quick:
        cases += [(loss, "tiled", b) for loss in LOSSES for b in TILED_ONLY_SIZES]
    rate = gemm_rate(args.dim)
    print(
        f"# contrastkit loss benchmark: D={args.dim}, float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"GEMM rate {rate / 1e9:.0f} GFLOP/s",
        flush=True,
    )
    results = []
    for loss, impl, batch in cases:
        results.append(in_subprocess(loss, impl, batch, args.dim))
        print(f"  {loss:6} B={batch:6} {impl:5} {results[-1]}", file=sys.stderr, flush=True)
    print(table(results, rate, args.dim))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_flops": rate, "dim": args.dim, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
