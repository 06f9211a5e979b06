"""The distributed benchmark's pieces run (a smoke test so the script cannot rot; no timing asserted).

One tiny loss case in 2 fresh gloo processes and its 1-process baseline (a few seconds: three
interpreters start). Part B (torchrun training runs) is too slow for the suite and is left out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "distributed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distributed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_computed_columns(bench):
    local = bench.case("clip", "local", 4096)
    assert bench.blocks(local) == [(2048, 4096)]  # one block: the columns' LSEs are all-reduced
    # all-gather of y (2048 x 512 floats) + all-reduce of its (4096, 512) gradient + 3 LSE vectors
    assert bench.comm_bytes(local) == (2048 * 512 + 4096 * 512 + 3 * 4096) * 4
    gather = bench.case("clip", "gather", 4096)
    assert bench.comm_bytes(gather) == 2 * (2048 * 512 + 4096 * 512) * 4
    ring = bench.case("siglip", "ring", 4096)
    assert bench.comm_bytes(ring) == 2 * 2048 * 512 * 4
    assert bench.path_of(ring) == "tiled"  # decided for all W blocks at once (B_r x B > 16 MiB)
    baseline = bench.case("siglip", "none", 4096, world=1, threads=2)
    assert bench.comm_bytes(baseline) == 0
    assert bench.gemm_work(bench.case("siglip", "local", 4096)) / bench.gemm_work(baseline) == 0.5
    assert bench.path_of(bench.case("clip", "local", 4096, chunk=0)) == "plain"


def test_a_two_process_case_and_its_baseline_run_and_the_table_prints(bench):
    results = [
        bench.run_case(bench.case("clip", "none", 64, world=1, threads=2, dim=8), repeats=1),
        bench.run_case(bench.case("clip", "local", 64, dim=8), repeats=1),
    ]
    for r in results:
        assert "error" not in r, r.get("error")
        assert r["ms"] > 0 and r["peak_mb"] >= 0
    baseline, local = results
    assert len(local["ranks"]) == 2
    assert local["value"] == pytest.approx(baseline["value"], rel=1e-5)  # the same loss, split over 2
    table = bench.loss_table(results).splitlines()
    for column in (
        "ms / step (max over ranks)",
        "peak MB / rank (max)",
        "time / 1-proc 2-thr",
        "memory / 1-proc",
        "comm MiB / rank / step (computed)",
    ):
        assert column in table[0]
    assert table[2].startswith("| 64 | clip | 1 process | 1 x 2 | plain |")
    assert table[3].startswith("| 64 | clip | local | 2 x 1 | plain |")
    assert "| 1.00 |" in table[2]


def test_the_train_table_and_the_reading_print(bench):
    runs = [
        {
            "run": "1 process",
            "distributed": None,
            "procs": 1,
            "threads": 2,
            "samples_per_s": 100.0,
            "train_s": 1.0,
            "wall_s": 2.0,
            "worker_peak_mb": [500.0],
            "final_loss": 3.0,
        },
        {
            "run": "torchrun 2, local",
            "distributed": "local",
            "procs": 2,
            "threads": 1,
            "samples_per_s": 150.0,
            "train_s": 1.0,
            "wall_s": 2.0,
            "worker_peak_mb": [400.0, 400.0],
            "final_loss": 3.0,
        },
    ]
    table = bench.train_table(runs, batch_size=256, steps=12)
    assert "train.batch_size = 256" in table and "| torchrun 2, local | 2 x 1 | 150 | 1.50 |" in table
    assert "1.50x" in bench.reading([], runs)
