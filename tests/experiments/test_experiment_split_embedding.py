"""experiments/split_embedding.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    module = load_experiment("split_embedding")
    if not sorted(module.FONT_DIR.glob("*.ttf")):
        pytest.skip(f"no fonts in {module.FONT_DIR}")
    out, text = run_quick("split_embedding", tmp_path)
    for label in module.LABELS.values():
        assert f"| {label} |" in out
    assert "top-1 blank" in out and "Claim " in out and "reproduce" in out
    assert text.count(module.BEGIN) == 1 and text.count(module.END) == 1
    assert f"| {module.LABELS['full']} |" in text


def test_top1_counts_ties_as_misses_and_respects_the_mask() -> None:
    module = load_experiment("split_embedding")
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [0.3, 0.8, 0.1]])
    assert module.top1(scores) == pytest.approx(100 / 3)
    valid = torch.tensor([[True, True], [True, True], [False, True]])
    assert module.top1(scores, valid) == pytest.approx(200 / 3)


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("split_embedding")

    def results(full, no_self, single, neither):
        return {
            arm: [{"all": v}] for arm, v in zip(module.ARMS, (full, no_self, single, neither), strict=True)
        }

    assert "Claim reproduced" in module.verdict(results(40, 30, 35, 25))
    assert "Claim partly reproduced" in module.verdict(results(40, 30, 45, 35))
    assert "Claim did not reproduce" in module.verdict(results(20, 30, 25, 35))


def test_eval_candidates_put_the_same_page_first_and_skip_the_query_line() -> None:
    module = load_experiment("split_embedding")
    pages = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    cands = module.eval_candidates(pages, 20, seed=0)
    for i in range(8):
        lines = cands[i, :, 0]
        assert (lines != i).all()
        same_page = int((pages == pages[i]).sum()) - 1
        assert (pages[lines[: 5 * same_page]] == pages[i]).all()
        assert (pages[lines[5 * same_page :]] != pages[i]).all()
        assert len({tuple(c) for c in cands[i].tolist()}) == 20


def test_verdict_needs_gains_above_the_seed_noise() -> None:
    module = load_experiment("split_embedding")
    noisy = {
        arm: [{"all": v + 10}, {"all": v - 10}] for arm, v in zip(module.ARMS, (40, 39, 39, 38), strict=True)
    }
    assert "Claim did not reproduce" in module.verdict(noisy)
    steady = {arm: [{"all": float(v)}] * 2 for arm, v in zip(module.ARMS, (40, 39, 39, 38), strict=True)}
    assert "Claim reproduced" in module.verdict(steady)
