"""The loss benchmark's pieces run (a smoke test so the script cannot rot; no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "losses.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_the_three_implementations_agree_on_the_loss(bench, loss):
    x, y, scale, bias = bench._inputs(64, 16)
    values = [bench.loss_function(loss, impl)(x, y, scale, bias) for impl in bench.IMPLS]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0], atol=1e-5, rtol=1e-5)


def test_a_case_runs_and_the_table_prints(bench):
    result = bench.run_case("clip", "tiled", 128, 16, repeats=1)
    assert result["seconds"] > 0 and result["peak_mb"] >= 0
    naive = {**result, "impl": "naive"}
    table = bench.table([naive, result], rate=1e9, dim=16)
    assert "| clip | 128 | tiled |" in table and "1.00" in table
