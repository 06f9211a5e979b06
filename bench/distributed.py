"""Distributed benchmark on one 2-core CPU: 2 gloo processes vs 1 process, side by side, same run.

    python bench/distributed.py            # B in {4096, 16384} + training, writes bench/results/, ~10 min
    python bench/distributed.py --quick    # B = 1024 + 12 training steps, under ~90 s, writes nothing
    python bench/distributed.py --part loss --out /tmp/x   # one part only; --out DIR writes the files
    python bench/distributed.py --from-json bench/results/distributed-cpu-2core.json  # reprint a run

The machine may be shared: the last column of both tables is the CPU other processes used while a
case ran (machine busy time from /proc/stat less this script's and its children's), and a full run
waits up to 30 s for a quiet machine before each case and reruns a case disturbed by more than
0.25 cores, twice at most, within a budget (``--wait-quiet``, ``--retries``, ``--budget-s``).

Part A, the loss step per rank. Global batch B, D = 512, float32. W = 2 processes joined in a gloo
group on loopback, each with ``torch.set_num_threads(1)`` (OMP_NUM_THREADS=1), hold rows
[r B/2, (r+1) B/2) of the same unit-row inputs and call ``clip_loss`` / ``siglip_loss`` with
``distributed=`` "gather", "local" or "ring" (siglip). The baseline, in the same run: one process,
the whole batch, ``distributed=None``, with 1 thread and with 2 threads (the machine's two cores).
Every case runs in fresh processes, so its memory is its own. Per rank: one 64-row step first (the
libraries' and gloo's one-time set-up), then one full step whose peak resident-set growth over the
inputs is sampled by ``bench/losses.py``'s ``PeakRSS`` thread (working memory + the input
gradients; the sampler runs only in that step), then ``--repeats`` timed steps, a barrier before
each; "ms / step" is the median of those, the max over ranks. ``chunk_size=None`` (automatic)
tiles once a logit block exceeds 16 MiB (B = 2048 square), so from B = 4096 the memory is the
tiled engine's; the "plain" rows (``chunk_size=0``, B = 4096) show the materialised logits:
B x B in one process and under "gather", B_r x B under "local".

Computed columns (from the shapes, not measured):

- comm MiB: bytes each rank sends per step (it receives as many). "gather" and "local" all-gather
  the embeddings they need ((W-1) B_r D floats each: x and y for clip and for siglip "gather", y
  alone for siglip "local") and all-reduce their (B, D) gradients backward (2 (W-1)/W B D floats
  each, a bandwidth-optimal ring all-reduce); "ring" passes (W-1) blocks of B_r x D forward and
  their gradients back. The few-integer handshakes of every call are left out.
- GEMM work: (B x D)-by-(D x B)-sized multiply-adds of one rank over the 1-process loss's, with
  3 GEMMs per logit block in the plain path (logits, dx, dy) and 4 when tiled (+ the recompute).
  "local" scores one B_r x B block per rank (clip completes its column log-sum-exps with an
  all-reduce of B floats), 1/W of the work; "ring" the same as W blocks of B_r x B_r.

Part B, training throughput: ``contrastkit train configs/shapes-clip.yaml`` for a fixed number of
steps (the same global ``train.batch_size`` in every run), once as one process with
OMP_NUM_THREADS=2 and twice under ``torch.distributed.run --standalone --nproc_per_node 2`` with
OMP_NUM_THREADS=1 (``loss.distributed`` local and gather). samples/s is the median of log.csv's
``samples_per_s`` over the rows after the first (the first window includes start-up); "wall s" is
the whole command (imports, data, tokenizer, training, the small evaluation, the report). Peak RSS
is each worker's kernel high-water mark (``VmHWM`` in /proc/<pid>/status), read by this script
every 0.25 s while the worker lives: at most the last 0.25 s of a worker's life is missed.

Nothing here asserts a time; the load average is printed because other work on the machine
slows both sides of every ratio unevenly.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import importlib.util
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONFIG = ROOT / "configs" / "shapes-clip.yaml"
RESULT_NAME = "distributed-cpu-2core"


def _load_losses_bench():
    """bench/losses.py as a module, for its ``PeakRSS`` sampler, ``_rss_mb`` and ``_inputs``."""
    spec = importlib.util.spec_from_file_location("bench_losses", BENCH / "losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_losses = _load_losses_bench()
PeakRSS, _rss_mb, _inputs = _losses.PeakRSS, _losses._rss_mb, _losses._inputs

WORLD = 2
DIM = 512
SIZES = (4096, 16384)
QUICK_SIZES = (1024,)
PLAIN_SIZES = (4096,)  # also chunk_size=0 (materialised logits) at these sizes
MODES = {"clip": ("gather", "local"), "siglip": ("gather", "local", "ring")}
CASE_TIMEOUT_S = 900
TRAIN_STEPS, QUICK_TRAIN_STEPS = 60, 12
FLOAT_BYTES = 4


# ---- other work on the machine ---------------------------------------------------------------------
def _cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children (and theirs) that were waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """The CPU the rest of the machine used while the block ran: the machine's busy time less this
    process's and its (waited-for) descendants', in cores (CPU-s per wall-s)."""

    def __enter__(self) -> OtherLoad:
        self._start = (time.perf_counter(), *_cpu_seconds(), _own_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, steal, own = (
            b - a
            for a, b in zip(
                self._start, (time.perf_counter(), *_cpu_seconds(), _own_cpu_seconds()), strict=True
            )
        )
        self.cores = max(0.0, busy - own) / max(wall, 1e-9)
        self.steal = steal / max(wall, 1e-9)


NOISY_CORES = 0.25


def measured(run, args, deadline: float) -> dict:
    """``run()`` with the other processes' CPU use alongside (``other_cores``); waits for a quiet
    machine first and reruns a disturbed case (``--wait-quiet``, ``--retries``, ``--budget-s``)."""
    best = None
    for attempt in range(1 + args.retries):
        late = time.perf_counter() > deadline
        if args.wait_quiet and not late:
            wait_until_quiet(args.wait_quiet)
        with OtherLoad() as load:
            result = run()
        result = {**result, "other_cores": load.cores, "steal_cores": load.steal, "attempts": attempt + 1}
        if best is None or result["other_cores"] < best["other_cores"]:
            best = result
        if load.cores < NOISY_CORES or late:
            break
        print(f"  (other processes used {load.cores:.2f} cores; running it again)", file=sys.stderr)
    return best


def wait_until_quiet(patience_s: float, threshold: float = 0.15) -> float:
    """Wait (up to ``patience_s``) until other processes use under ``threshold`` cores over 1 s;
    returns the last such load."""
    deadline = time.monotonic() + patience_s
    while True:
        with OtherLoad() as load:
            time.sleep(1.0)
        if load.cores < threshold or time.monotonic() >= deadline:
            return load.cores
        time.sleep(4.0)


# ---- Part A: one loss step per rank --------------------------------------------------------------
def case(loss: str, mode: str, batch: int, *, world: int = WORLD, threads: int = 1, chunk=None, dim=DIM):
    """A case description: mode "none" is the 1-process baseline (``distributed=None``)."""
    return {
        "loss": loss,
        "mode": mode,
        "batch": batch,
        "world": world,
        "threads": threads,
        "chunk": chunk,
        "dim": dim,
    }


def loss_cases(sizes, plain_sizes) -> list[dict]:
    cases = []
    for batch in sizes:
        for loss in MODES:
            cases += [case(loss, "none", batch, world=1, threads=t) for t in (1, 2)]
            cases += [case(loss, mode, batch) for mode in MODES[loss]]
    for batch in plain_sizes:
        for loss in MODES:
            cases += [case(loss, "none", batch, world=1, threads=2, chunk=0)]
            cases += [case(loss, mode, batch, chunk=0) for mode in ("gather", "local")]
    return cases


def rank_step(spec: dict, rank: int, repeats: int) -> dict:
    """This rank's part of a case (the process group, if any, already joined): the peak growth of
    one full step and the median time of ``repeats`` more."""
    import torch.distributed as dist

    from contrastkit import clip_loss, siglip_loss

    loss, world, chunk, dim = spec["loss"], spec["world"], spec["chunk"], spec["dim"]
    distributed = None if spec["mode"] == "none" else spec["mode"]

    def step(x, y, scale, bias):
        if loss == "clip":
            return clip_loss(x, y, scale, chunk_size=chunk, distributed=distributed)
        return siglip_loss(x, y, scale, bias, chunk_size=chunk, distributed=distributed)

    def shard(batch: int):
        x, y, scale, bias = _inputs(batch, dim)  # the global batch; this rank keeps its rows
        rows = slice(rank * batch // world, (rank + 1) * batch // world)
        return (
            x.detach()[rows].clone().requires_grad_(),
            y.detach()[rows].clone().requires_grad_(),
            scale,
            bias,
        )

    sync = dist.barrier if world > 1 else (lambda: None)
    step(*shard(64)).backward()  # one-time set-up: kernels, autograd threads, gloo connections
    inputs = shard(spec["batch"])
    sync()
    before = _rss_mb()
    with PeakRSS() as memory:
        value = step(*inputs)
        value.backward()
    seconds = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        sync()
        start = time.perf_counter()
        step(*inputs).backward()
        seconds.append(time.perf_counter() - start)
    return {
        "rank": rank,
        "value": float(value.detach()),
        "seconds": statistics.median(seconds),
        "all_seconds": seconds,
        "peak_mb": memory.peak - before,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(spec: dict, rank: int, port: int, repeats: int) -> dict:
    """Entry of one rank's fresh process (``--rank-case``)."""
    import torch.distributed as dist

    torch.set_num_threads(spec["threads"])
    if spec["world"] > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=spec["world"],
            timeout=datetime.timedelta(seconds=CASE_TIMEOUT_S),
        )
    try:
        return rank_step(spec, rank, repeats)
    finally:
        if spec["world"] > 1:
            dist.destroy_process_group()


def run_case(spec: dict, repeats: int = 3) -> dict:
    """Run a case in ``spec['world']`` fresh processes; max time and memory over ranks."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--rank-case", json.dumps(spec), str(rank), str(port), str(repeats)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(spec["world"])
    ]
    outputs, errors = [], []
    deadline = time.monotonic() + CASE_TIMEOUT_S
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, err = proc.communicate()
            errors.append(f"timed out after {CASE_TIMEOUT_S} s")
        if proc.returncode != 0:
            lines = err.strip().splitlines()
            errors.append(lines[-1] if lines else f"exit {proc.returncode}")
        else:
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    for proc in procs:  # reap every process, the killed ones too
        proc.wait()
    if errors:
        return {**spec, "error": "; ".join(errors)}
    return {
        **spec,
        "ms": 1000 * max(r["seconds"] for r in outputs),
        "peak_mb": max(r["peak_mb"] for r in outputs),
        "value": statistics.fmean(r["value"] for r in outputs),
        "ranks": outputs,
    }


def _tiled(chunk, rows: int, cols: int) -> bool:
    from contrastkit.functional import resolve_chunk_size

    return resolve_chunk_size("bench", chunk, rows, cols, torch.float32) > 0


def blocks(spec: dict) -> list[tuple[int, int]]:
    """The logit blocks (rows, cols) one rank scores in a step."""
    batch, world, mode = spec["batch"], spec["world"], spec["mode"]
    own = batch // world
    if mode in ("none", "gather"):
        return [(batch, batch)]
    if mode == "ring":
        return [(own, own)] * world
    return [(own, batch)]


def _tiled_step(spec: dict) -> bool:
    """Whether the step tiles: the ring decides once for all its blocks (B_r x B), as the loss does."""
    batch, world, mode = spec["batch"], spec["world"], spec["mode"]
    if mode == "ring":
        return _tiled(spec["chunk"], batch // world, batch)
    return any(_tiled(spec["chunk"], r, c) for r, c in blocks(spec))


def path_of(spec: dict) -> str:
    return "tiled" if _tiled_step(spec) else "plain"


def gemm_work(spec: dict) -> float:
    """Multiply-adds / D of one rank's step: 3 GEMMs per plain logit block, 4 per tiled one."""
    return sum((4 if _tiled_step(spec) else 3) * r * c for r, c in blocks(spec))


def comm_bytes(spec: dict) -> int:
    """Bytes one rank sends per step (computed; as many are received)."""
    batch, world, dim, mode = spec["batch"], spec["world"], spec["dim"], spec["mode"]
    if mode == "none" or world == 1:
        return 0
    own = batch // world
    if mode == "ring":
        return 2 * (world - 1) * own * dim * FLOAT_BYTES
    gathered = 1 if mode == "local" else 2  # local gathers the texts only
    all_gather = (world - 1) * own * dim
    all_reduce = 2 * (world - 1) * batch * dim // world
    # clip local: column log-sum-exps all-reduced (max and sum forward, the gradient backward)
    lse = 3 * 2 * (world - 1) * batch // world if (spec["loss"], mode) == ("clip", "local") else 0
    return (gathered * (all_gather + all_reduce) + lse) * FLOAT_BYTES


def _other(r: dict) -> str:
    """The other processes' CPU use while a case ran (see ``OtherLoad``), or "-" when not measured."""
    return f"{r['other_cores']:.2f}" if "other_cores" in r else "-"


def _baseline_key(r: dict) -> tuple:
    return (r["loss"], r["batch"], r["chunk"])


def _label(r: dict) -> str:
    return "1 process" if r["mode"] == "none" else r["mode"]


def loss_table(results: list[dict]) -> str:
    """Part A as markdown; ratios against the 1-process, 2-thread run of the same loss, B and path."""
    lines = [
        "| B | loss | mode | procs x threads | path | loss value | ms / step (max over ranks) "
        "| peak MB / rank (max) | time / 1-proc 2-thr | memory / 1-proc | GEMM work / rank "
        "/ 1-proc (computed) | comm MiB / rank / step (computed) | other procs (cores) |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {
        _baseline_key(r): r for r in results if r["mode"] == "none" and r["threads"] == 2 and "error" not in r
    }
    for r in results:
        head = (
            f"| {r['batch']} | {r['loss']} | {_label(r)} | {r['world']} x {r['threads']} | "
            f"{path_of(r)}{' (chunk_size=0)' if r['chunk'] == 0 else ''} |"
        )
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} ||||||||")
            continue
        b = base.get(_baseline_key(r))
        time_ratio = f"{r['ms'] / b['ms']:.2f}" if b else "-"
        mem_ratio = f"{r['peak_mb'] / b['peak_mb']:.2f}" if b and b["peak_mb"] > 0 else "-"
        work = f"{gemm_work(r) / gemm_work(b):.2f}" if b else "-"
        comm = comm_bytes(r) / 2**20
        lines.append(
            f"{head} {r['value']:.5f} | {r['ms']:.1f} | {r['peak_mb']:.1f} | {time_ratio} | {mem_ratio} | "
            f"{work} | {comm:.1f} | {_other(r)} |"
        )
    return "\n".join(lines)


# ---- Part B: training throughput -------------------------------------------------------------------
def _children_by_parent() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class TreePeaks:
    """The last ``VmHWM`` read of a process and of its descendants, every ``interval`` s."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root, self.interval = root, interval
        self.peaks: dict[int, float] = {}
        self.parent: dict[int, int] = {}
        self.commands: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_scan = 0.0
        while True:
            now = time.monotonic()
            if now - last_scan > 1.0:  # new descendants: a full /proc scan once a second
                last_scan = now
                children = _children_by_parent()
                todo = [self.root]
                while todo:
                    pid = todo.pop()
                    for child in children.get(pid, []):
                        if child not in self.parent:
                            self.parent[child] = pid
                            self.commands[child] = _cmdline(child)
                        todo.append(child)
            for pid in [self.root, *self.parent]:
                value = _vm_hwm_mb(pid)
                if value is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), value)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def train_overrides(steps: int, quick: bool) -> list[str]:
    sets = [
        f"train.steps={steps}",
        f"train.log_every={4 if quick else 10}",
        "train.checkpoint_every=1000",
        "train.progress=false",
        "data.eval_max_records=64",
    ]
    if quick:
        sets.append("data.train.n=512")
    return [arg for s in sets for arg in ("--set", s)]


def train_run(distributed: str | None, steps: int, quick: bool, workdir: Path) -> dict:
    """One ``contrastkit train``: 1 process with 2 threads, or 2 torchrun workers with 1 thread."""
    name = "1 process" if distributed is None else f"torchrun 2, {distributed}"
    out = Path(tempfile.mkdtemp(dir=workdir)) / ("single" if distributed is None else distributed)
    sets = train_overrides(steps, quick)
    if distributed is None:
        launch = [sys.executable, "-m", "contrastkit"]
        threads = 2
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        launch += ["-m", "contrastkit"]
        sets += ["--set", f"loss.distributed={distributed}"]
        threads = 1
    cmd = [*launch, "train", str(CONFIG), *sets, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path = out.parent / f"{out.name}.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        peaks = TreePeaks(proc.pid)
        try:
            proc.wait(timeout=CASE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            peaks.stop()
    wall = time.perf_counter() - start
    shown = " ".join(a for a in cmd[1:] if a != str(CONFIG)).replace(str(out), "RUN_DIR")
    result = {
        "run": name,
        "distributed": distributed,
        "procs": 1 if distributed is None else 2,
        "threads": threads,
        "command": f"OMP_NUM_THREADS={threads} python {shown} (config {CONFIG.relative_to(ROOT)})",
    }
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-3:]
        return {**result, "error": f"exit {proc.returncode}: {' / '.join(tail)}"}
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((out / "metrics.json").read_text())
    if distributed is None:
        workers = [proc.pid]
    else:
        workers = [
            pid
            for pid, parent in peaks.parent.items()
            if parent == proc.pid and "contrastkit" in peaks.commands[pid]
        ]
    return {
        **result,
        "samples_per_s": statistics.median(float(r["samples_per_s"]) for r in rows[1:] or rows),
        "log_rows": len(rows),
        "train_s": float(metrics["train/seconds"]),
        "wall_s": wall,
        "final_loss": float(rows[-1]["loss"]),
        "worker_peak_mb": [peaks.peaks.get(pid, float("nan")) for pid in workers],
        "launcher_peak_mb": None if distributed is None else peaks.peaks.get(proc.pid),
    }


def train_table(results: list[dict], batch_size: int, steps: int) -> str:
    lines = [
        f"Global batch train.batch_size = {batch_size} in every run ({steps} steps): 2 processes split "
        f"each global batch ({batch_size // 2} rows each), so the losses are the same run.",
        "",
        "| run | procs x threads | samples/s (median after the 1st log row) | samples/s / 1-proc | "
        "train s | wall s | peak RSS MB / worker | sum over workers MB | final loss | other procs (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in results if r["procs"] == 1 and "error" not in r), None)
    for r in results:
        head = f"| {r['run']} | {r['procs']} x {r['threads']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} ||||||||")
            continue
        ratio = f"{r['samples_per_s'] / base['samples_per_s']:.2f}" if base else "-"
        peaks = r["worker_peak_mb"]
        lines.append(
            f"{head} {r['samples_per_s']:.0f} | {ratio} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
            f"{' / '.join(f'{p:.0f}' for p in peaks)} | {sum(peaks):.0f} | {r['final_loss']:.4f} | "
            f"{_other(r)} |"
        )
    return "\n".join(lines)


# ---- the reading -----------------------------------------------------------------------------------
def _find(results, **want):
    for r in results:
        if "error" not in r and all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _loss_reading(results: list[dict]) -> list[str]:
    """Sentences on Part A at its largest B (and the plain rows)."""
    parts: list[str] = []
    sizes = sorted({r["batch"] for r in results if r["chunk"] is None})
    if not sizes:
        return parts
    b = sizes[-1]
    one = {loss: _find(results, loss=loss, batch=b, mode="none", threads=1, chunk=None) for loss in MODES}
    two = {loss: _find(results, loss=loss, batch=b, mode="none", threads=2, chunk=None) for loss in MODES}
    rows = {
        (loss, mode): _find(results, loss=loss, batch=b, mode=mode, chunk=None)
        for loss in MODES
        for mode in MODES[loss]
    }
    if all(one.values()) and all(two.values()) and all(rows.values()):
        t = {k: r["ms"] / two[k[0]]["ms"] for k, r in rows.items()}
        best = min(t[("clip", "local")], t[("siglip", "local")], t[("siglip", "ring")])
        verdict = (
            "about the speed of the 2-thread process (processes do not beat threads here)"
            if 0.9 <= best <= 1.1
            else f"{_x(best)} its time"
        )
        parts.append(
            f"At B = {b} a second thread makes one process {_x(one['clip']['ms'] / two['clip']['ms'])} "
            f"(clip) / {_x(one['siglip']['ms'] / two['siglip']['ms'])} (siglip) faster, so the "
            f"2-thread process is the bar: two 1-thread ranks take {_x(t[('clip', 'gather')])} its time "
            f"under clip gather and {_x(t[('clip', 'local')])} under clip local, "
            f"{_x(t[('siglip', 'gather')])} / {_x(t[('siglip', 'local')])} / {_x(t[('siglip', 'ring')])} "
            f"under siglip gather / local / ring. The computed work column says why: gather has every "
            f"rank compute the whole loss, so it runs at the 1-thread process's pace; local and ring "
            f"score one B_r x B block per rank (clip completes its column log-sum-exps with an "
            f"all-reduce of B floats), half the work at W = 2, which brings them to {verdict}."
        )
        spread = [
            rows[k]["peak_mb"] / two[k[0]]["peak_mb"]
            for k in rows
            if k[1] != "gather" and path_of(rows[k]) == "tiled" and two[k[0]]["peak_mb"] > 0
        ]
        if spread:
            size = "larger" if min(spread) > 1 else "not smaller" if max(spread) > 1 else "smaller"
            parts.append(
                f"With the tiled engine the memory per rank is {size}: {min(spread):.2f}-{max(spread):.2f}x "
                f"the single process's under local / ring at B = {b}, because the tiled logits take O(B) "
                f"while every rank holds O(B D) buffers the single process does not: the gathered "
                f"embeddings, the all-gather's staging copies and, backward, the (B, D) gradient of each "
                f"gathered tensor cloned for its all-reduce (of which each rank keeps B_r rows)."
            )
    for r in results:
        base = _find(results, loss=r["loss"], batch=r["batch"], mode="none", threads=2, chunk=r["chunk"])
        if r["mode"] == "ring" and "error" not in r and base and path_of(r) != path_of(base):
            parts.append(
                f"siglip ring at B = {r['batch']} runs the {path_of(r)} path (each B_r x B_r block fits the "
                f"automatic budget) yet keeps all W blocks' logits for the backward: "
                f"{r['peak_mb']:.0f} MB per rank, {_x(r['peak_mb'] / base['peak_mb'])} the single "
                f"process's, while being the fastest row ({_x(r['ms'] / base['ms'])} its time)."
            )
    plain = []
    for loss in MODES:
        local = _find(results, loss=loss, mode="local", chunk=0)
        if local is None:
            continue
        base = _find(results, loss=loss, batch=local["batch"], mode="none", threads=2, chunk=0)
        gather = _find(results, loss=loss, batch=local["batch"], mode="gather", chunk=0)
        if base and gather:
            plain.append(
                f"{loss} {local['peak_mb']:.0f} MB ({_x(local['peak_mb'] / base['peak_mb'])}) against "
                f"{base['peak_mb']:.0f} MB for one process and {gather['peak_mb']:.0f} MB under gather"
            )
            b4 = local["batch"]
    if plain:
        parts.append(
            f"In the plain path (chunk_size=0, B = {b4}) local saves what it should, B_r x B logits "
            f"instead of B x B: per rank {'; '.join(plain)}."
        )
    return parts


def _train_reading(results: list[dict]) -> list[str]:
    base = next((r for r in results if r["procs"] == 1 and "error" not in r), None)
    runs = [r for r in results if r["procs"] == 2 and "error" not in r]
    if not (base and runs):
        return []
    speed = " / ".join(_x(r["samples_per_s"] / base["samples_per_s"]) for r in runs)
    modes = " / ".join(str(r["distributed"]) for r in runs)
    losses = ", ".join(f"{r['final_loss']:.4f}" for r in [base, *runs])
    walls = ", ".join(f"{r['wall_s']:.1f}" for r in [base, *runs])
    launcher = [r["launcher_peak_mb"] for r in runs if r.get("launcher_peak_mb")]
    together = " / ".join(f"{sum(r['worker_peak_mb']):.0f}" for r in runs)
    return [
        f"In training, two 1-thread torchrun workers give {speed} ({modes}) the samples/s of one 2-thread "
        f"process on the same global batches (final losses {losses}). The loss is a small share of this "
        f"small model's step, so local and gather hardly differ; the gain presumably comes from running the "
        f"towers' many small operations (and each rank's data loading, num_workers = 0) in two processes "
        f"instead of two intra-op threads (not measured separately). Over the whole command the wall "
        f"times are {walls} s: torchrun's start-up (agent, rendezvous, a second interpreter) takes back "
        f"what the steps gain. The two workers hold {together} MB together (each a full model, optimiser "
        f"and data pipeline)"
        + (f", plus {max(launcher):.0f} MB for the torchrun agent," if launcher else ",")
        + f" against {base['worker_peak_mb'][0]:.0f} MB for the single process."
    ]


def reading(loss_results: list[dict], train_results: list[dict]) -> str:
    """One paragraph of what the tables say, with their numbers."""
    parts = _loss_reading(loss_results) + _train_reading(train_results)
    noisy = [r for r in [*loss_results, *train_results] if r.get("other_cores", 0) > NOISY_CORES]
    if noisy:
        parts.append(
            f"{len(noisy)} row(s) ran while other processes used over {NOISY_CORES} cores (the last "
            f"column, after retries) and are less reliable."
        )
    return " ".join(parts)


def source_state() -> str:
    """The commit and whether src/ differs from it (other work may be in progress), read-only."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else "?"

    changed = git("status", "--porcelain", "--", "src")
    edits = f"{len(changed.splitlines())} uncommitted paths under src/" if changed else "src/ clean"
    return f"commit {git('rev-parse', '--short', 'HEAD')}, {edits}"


# ---- the command ------------------------------------------------------------------------------------
def header() -> str:
    load = os.getloadavg()
    return (
        f"# contrastkit distributed benchmark: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, gloo on loopback, W = {WORLD}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min); "
        f"{source_state()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 1024 and 12 training steps, under ~90 s")
    parser.add_argument("--part", choices=("loss", "train", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="timed loss steps per case (median)")
    parser.add_argument("--steps", type=int, help="training steps (default 60, --quick 12)")
    parser.add_argument(
        "--out",
        help="write distributed-cpu-2core.md/.json here (default bench/results; "
        "--quick writes only with --out)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="before each case wait up to this many s for other processes to go idle (default 30, --quick 0)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help=f"rerun a case during which other processes used over {NOISY_CORES} cores, at most this "
        "many times, keeping the least disturbed run (default 2, --quick 0)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=780.0, help="no more waiting or retries after this many s"
    )
    parser.add_argument("--from-json", help="print (and with --out write) the report of a saved .json")
    parser.add_argument("--rank-case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
        print(record["title"])
        return finish(record, args.out)
    if args.rank_case:
        spec, rank, port, repeats = args.rank_case
        print(json.dumps(_rank_main(json.loads(spec), int(rank), int(port), int(repeats))))
        return 0

    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 30.0
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    started = time.perf_counter()
    deadline = started + args.budget_s
    title = header()
    print(title, flush=True)
    loss_results: list[dict] = []
    if args.part in ("loss", "both"):
        cases = loss_cases(QUICK_SIZES if args.quick else SIZES, () if args.quick else PLAIN_SIZES)
        for spec in cases:
            repeats = args.repeats if spec["batch"] <= 4096 else max(1, args.repeats - 1)
            loss_results.append(measured(functools.partial(run_case, spec, repeats), args, deadline))
            shown = {
                k: loss_results[-1].get(k)
                for k in ("ms", "peak_mb", "value", "error")
                if k in loss_results[-1]
            }
            print(
                f"  {spec['loss']:6} B={spec['batch']:6} {spec['mode']:6} {spec['world']}x{spec['threads']} "
                f"chunk={spec['chunk']} {shown}",
                file=sys.stderr,
                flush=True,
            )
    train_results: list[dict] = []
    steps = args.steps or (QUICK_TRAIN_STEPS if args.quick else TRAIN_STEPS)
    if args.part in ("train", "both"):
        with tempfile.TemporaryDirectory(prefix="ck-bench-train-") as tmp:
            for distributed in (None, "local", "gather"):
                run = functools.partial(train_run, distributed, steps, args.quick, Path(tmp))
                train_results.append(measured(run, args, deadline))
                print(f"  train {train_results[-1]}", file=sys.stderr, flush=True)
    from contrastkit.train.config import load_config

    load = os.getloadavg()
    record = {
        "title": title,
        "dim": DIM,
        "world": WORLD,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "train_steps": steps,
        "train_batch_size": load_config(CONFIG).train.batch_size,
        "total_s": time.perf_counter() - started,
        "load_at_end": list(load),
        "loss": loss_results,
        "train": train_results,
    }
    return finish(record, args.out or (None if args.quick else str(BENCH / "results")))


def render(record: dict) -> tuple[str, str]:
    """The report (title, tables, reading) and the reading alone, from a run's record."""
    sections = [record["title"]]
    if record["loss"]:
        sections += [
            f"\n## Part A: one loss step per rank (D = {record['dim']}, float32; ratios against 1 process "
            f"with 2 threads for time and memory per process)\n",
            loss_table(record["loss"]),
        ]
    if record["train"]:
        sections += ["\n## Part B: training throughput (contrastkit train configs/shapes-clip.yaml)\n"]
        sections += [train_table(record["train"], record["train_batch_size"], record["train_steps"])]
    text = reading(record["loss"], record["train"])
    end = record["load_at_end"]
    sections += [
        "\n## Reading\n",
        text,
        f"\n(total {record['total_s']:.0f} s; load average at the end {end[0]:.2f} / {end[1]:.2f} / "
        f"{end[2]:.2f})",
    ]
    return "\n".join(sections), text


def finish(record: dict, out: str | None) -> int:
    """Print the report; with ``out``, write it (.md) and the record with the computed columns (.json)."""
    report, text = render(record)
    print(report.split("\n", 1)[1])  # the title was printed when the run started
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{RESULT_NAME}.md").write_text(report + "\n")
        loss = [
            {**r, "path": path_of(r), "gemm_work": gemm_work(r), "comm_bytes": comm_bytes(r)}
            for r in record["loss"]
        ]
        with open(Path(out) / f"{RESULT_NAME}.json", "w") as f:
            json.dump({**record, "loss": loss, "reading": text}, f, indent=1)
        print(f"wrote {Path(out) / RESULT_NAME}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
