"""experiments/semi_push_pull.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiment_scripts import load_experiment, run_quick

BEGIN = "<!-- semi-push-pull-table:begin -->"


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("semi_push_pull", tmp_path)
    for label in (
        "| CE |",
        "| + intra SupCon |",
        "| one-step intra + inter |",
        "| two-step conditional (SPP-SCL) |",
        "accuracy (%)",
        "macro-F1 (%)",
        "of batches",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count(BEGIN) == 1 and "| CE |" in text


def test_macro_f1_matches_a_hand_count_and_sklearn() -> None:
    module = load_experiment("semi_push_pull")
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0])
    # F1: class 0: tp 1 fp 2 fn 1 -> 2/5; class 1: tp 2 fp 1 fn 0 -> 4/5; class 2: 0
    assert module.macro_f1(predicted, labels, 3) == pytest.approx((0.4 + 0.8 + 0.0) / 3)
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y, p = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    want = metrics.f1_score(y.numpy(), p.numpy(), average="macro", zero_division=0)
    assert module.macro_f1(p, y, 5) == pytest.approx(want)


def test_noisy_captions_follow_the_requested_mix() -> None:
    module = load_experiment("semi_push_pull")
    classes = list(module.SYNONYMS)
    labels = torch.arange(3000) % 10
    captions, kinds = module.noisy_captions(labels, classes, 0.5, 0.3, torch.Generator().manual_seed(1))
    shares = [float((kinds == k).float().mean()) for k in range(3)]
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    for caption, kind, y in zip(captions, kinds.tolist(), labels.tolist(), strict=True):
        named = [c for c, words in module.SYNONYMS.items() if any(f" {w}" in caption for w in words)]
        if kind == 2:
            assert caption in module.VAGUE and not named
        elif kind == 0:
            assert classes[y] in named
        else:
            assert classes[y] not in named and named


def test_verdict_is_decided_by_the_numbers() -> None:
    module = load_experiment("semi_push_pull")

    def runs(*accs):
        return [{"acc": a, "f1": a - 1, "fired": 0.25} for a in accs]

    base = {"ce": runs(70, 71, 72), "one_step": runs(70, 71, 72)}
    better = {**base, "two_step": runs(73, 74, 75.5)}
    assert "Claim (beats CE and the one-step combination) reproduced" in module.verdict(better)
    assert "fired on 25.0% of batches" in module.verdict(better)
    mixed = {**better, "one_step": runs(74, 75, 76)}
    assert "partly reproduced" in module.verdict(mixed)
    noisy = {**base, "two_step": runs(75, 66, 75)}  # higher mean, but within 2 standard errors
    assert "did not reproduce" in module.verdict(noisy)
