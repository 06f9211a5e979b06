"""experiments/imu_alignment.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("imu_alignment", tmp_path)
    for label in (
        "| synthetic pose <-> IMU | global |",
        "| synthetic pose <-> IMU | global + token |",
        "R@1",
    ):
        assert label in out
    assert "sliding tokens" in out and "Claim " in out and "reproduce" in out
    assert text.count("<!-- imu-alignment-table:begin -->") == 1 and "| global + token |" in text


def test_sliding_scores_and_chance() -> None:
    module = load_experiment("imu_alignment")
    tokens_a = torch.eye(3)[None]  # (1, N=3, D=3)
    tokens_b = torch.stack([torch.eye(3), torch.eye(3).roll(1, dims=0)])  # candidate 0 aligned
    z_a = {"first": torch.tensor([[1.0, 0.0]]), "first.tokens": tokens_a}
    z_b = {"second": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "second.tokens": tokens_b}
    global_score, token_score = module.sliding_scores(z_a, z_b)
    torch.testing.assert_close(global_score, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(token_score, torch.tensor([1.0, 0.0]))
    pairing = module.Pairing("p", [], [], 10.0, 8, 2, 1)
    # offsets -1, 0, 1 against each other: mean |k - d| = (0+1+2+1+0+1+2+1+0)/9 = 8/9 samples
    assert module.chance_mae(pairing) == pytest.approx(8 / 9 / 10.0)


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("imu_alignment")
    pairings = [module.Pairing(name, [], [], 10.0, 8, 2, 1) for name in ("a", "b")]

    def cell(mae: float) -> dict:
        return {"r1": [0.5], "global": [mae], "token": [mae]}

    both = {("a", "global"): cell(1.0), ("a", "global + token"): cell(0.2)}
    both.update({("b", "global"): cell(1.0), ("b", "global + token"): cell(0.4)})
    assert " reproduced:" in module.verdict(both, pairings)
    both[("b", "global + token")] = cell(0.9)
    assert "partly reproduced" in module.verdict(both, pairings)
    both[("a", "global + token")] = cell(1.2)
    assert "did not reproduce" in module.verdict(both, pairings)


def test_windows_are_standardised_and_aligned() -> None:
    module = load_experiment("imu_alignment")
    g = torch.Generator().manual_seed(0)
    streams = module.synthetic(3, 60, g)
    starts = module.random_starts(streams, 16, 20, g)
    assert all(a == b and 0 <= a <= 40 for _, a, b in starts)
    a, b = module.crops(streams, starts, 20)
    assert a.shape == b.shape == (16, 3, 20)
    torch.testing.assert_close(a.mean(-1), torch.zeros(16, 3), atol=1e-5, rtol=0)
    case, start, _ = starts[0]
    raw = torch.from_numpy(np.ascontiguousarray(streams[case][1][:, start : start + 20]))
    torch.testing.assert_close(b[0], module.standardise(raw[None])[0])


def test_real_imu_pairings_load(shared_data: Path) -> None:
    module = load_experiment("imu_alignment")
    root = shared_data / "timeseries"
    motions = module.basic_motions(root)
    assert len(motions.train) == len(motions.test) == 40 and motions.train[0][0].shape == (3, 100)
    ankle = module.daphnet(root, "ankle", "trunk")
    (a, b), (ta, _) = ankle.train[0], ankle.test[0]
    assert a.shape == b.shape and a.shape[0] == 3 and a.shape[1] > ta.shape[1] > ankle.window
