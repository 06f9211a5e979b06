"""experiments/backdoor.py: --quick runs end to end and writes only its block; the verdict, the
persistence summary and the run configs are checked on known inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from contrastkit.data import ShapesSource
from contrastkit.security import poison_dataset
from contrastkit.train.config import load_config
from experiment_scripts import load_experiment, run_quick


@pytest.fixture(scope="module")
def backdoor():
    return load_experiment("backdoor")


def test_quick_run_prints_the_tables_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("backdoor", tmp_path)
    for label in (
        "| CLIP, clean data |",
        "| CLIP, poisoned data |",
        "| CleanCLIP (from scratch) |",
        "| RoCLIP (from scratch) |",
        "| SafeCLIP (from scratch) |",
        "| Similarity unlearning (from scratch) |",
        "| poisoned, then CleanCLIP fine-tune |",
        "| poisoned, then CLIP fine-tune |",
        "| AUROC, poisoned vs clean |",
        "| normalised area under r(k) |",
    ):
        assert label in out
    assert "Claim (BadCLIP++" in out and "reproduce" in out
    assert text.count("<!-- backdoor-table:begin -->") == 1
    assert text.count("<!-- backdoor-table:end -->") == 1
    assert "| CLIP, poisoned data |" in text and "**Result:**" in text


def _runs(asr: list[float], ca: list[float] | None = None) -> list[dict[str, float]]:
    ca = ca or [0.8] * len(asr)
    return [{"asr": a, "ca": c, "r1_i2t": 0.4, "r1_t2i": 0.4} for a, c in zip(asr, ca, strict=True)]


def _curve(before: float, after: float) -> dict[int, dict[str, float]]:
    return {
        0: {"asr": before, "ca": 0.8},
        50: {"asr": (before + after) / 2, "ca": 0.8},
        100: {"asr": after, "ca": 0.8},
    }


def _results(backdoor, poisoned, defended, clean=(0.02, 0.03), ca_poisoned=(0.8, 0.8)):
    results = {"clean": _runs(list(clean)), "poisoned": _runs(list(poisoned), list(ca_poisoned))}
    for arm in backdoor.DEFENSES:
        results[arm] = _runs([defended])
    return results


def test_verdict_reproduced_when_the_backdoor_is_total_and_nothing_removes_it(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.98, 0.99), defended=0.97)
    curves = {"ft_cleanclip": [_curve(0.98, 0.96)], "ft_clip": [_curve(0.98, 0.97)]}
    summary = backdoor.verdict(results, curves)
    assert summary.endswith("reproduced.") and "did not reproduce" not in summary
    assert "partly" not in summary and "ASR clearly reduced, CA kept: none" in summary


def test_verdict_partly_when_a_defense_clearly_reduces_asr(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.98, 0.99), defended=0.97)
    results["roclip"] = _runs([0.10])
    curves = {"ft_cleanclip": [_curve(0.98, 0.96)], "ft_clip": [_curve(0.98, 0.97)]}
    summary = backdoor.verdict(results, curves)
    assert summary.endswith("partly reproduced.")
    assert "ASR clearly reduced, CA kept: RoCLIP (from scratch);" in summary


def test_verdict_does_not_count_a_defense_that_breaks_the_model(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.98, 0.99), defended=0.97)
    results["safeclip"] = _runs([0.02], [0.70])  # ASR gone, and 10 CA points with it
    summary = backdoor.verdict(results, {"ft_cleanclip": [], "ft_clip": []})
    assert "ASR clearly reduced, CA kept: none" in summary
    assert "CA fell by more than 5 points: SafeCLIP (from scratch);" in summary
    assert summary.endswith(") reproduced.")


def test_verdict_counts_a_fine_tune_that_removes_the_backdoor(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.98, 0.99), defended=0.97)
    curves = {"ft_cleanclip": [_curve(0.98, 0.05)], "ft_clip": [_curve(0.98, 0.97)]}
    summary = backdoor.verdict(results, curves)
    assert "ASR clearly reduced, CA kept: poisoned, then CleanCLIP fine-tune;" in summary
    assert summary.endswith("partly reproduced.")


def test_verdict_partly_when_clean_accuracy_clearly_drops(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.98, 0.99), defended=0.97, ca_poisoned=(0.70, 0.71))
    summary = backdoor.verdict(results, {"ft_cleanclip": [], "ft_clip": []})
    assert "CA drop +9.5 points (clear: beyond 2 SE and 0.8 points)" in summary
    assert summary.endswith("partly reproduced.")


def test_verdict_did_not_reproduce_without_a_backdoor(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.05, 0.04), defended=0.03)
    summary = backdoor.verdict(results, {"ft_cleanclip": [], "ft_clip": []})
    assert "no clear backdoor" in summary and summary.endswith("did not reproduce.")


def test_verdict_partly_when_the_backdoor_is_clear_but_not_near_total(backdoor) -> None:
    results = _results(backdoor, poisoned=(0.60, 0.62), defended=0.6)
    summary = backdoor.verdict(results, {"ft_cleanclip": [], "ft_clip": []})
    assert "not near-total" in summary and summary.endswith("partly reproduced.")


def test_persistence_ratio_and_area(backdoor) -> None:
    curve = {0: {"asr": 0.8, "ca": 0.5}, 50: {"asr": 0.4, "ca": 0.5}, 100: {"asr": 0.2, "ca": 0.5}}
    assert backdoor.ratio_at(curve, 0) == 1.0
    assert backdoor.ratio_at(curve, 50) == pytest.approx(0.5)
    # trapezoids over u = 0, 0.5, 1 of r = 1, 0.5, 0.25: 0.5 * 0.75 + 0.5 * 0.375
    assert backdoor.area(curve) == pytest.approx(0.5625)
    empty = {0: {"asr": 0.0, "ca": 0.5}, 50: {"asr": 0.1, "ca": 0.5}}
    assert math.isnan(backdoor.ratio_at(empty, 50)) and math.isnan(backdoor.area(empty))
    table = backdoor.persistence_table({"ft_cleanclip": [curve], "ft_clip": [empty]}, (0, 50, 100)[:2])
    assert "| 50 | 40.0 | 0.50 | 50.0 | 10.0 | – | 50.0 |" in table


def test_every_run_config_is_valid(backdoor, tmp_path: Path) -> None:
    setup = backdoor.FULL
    manifest = tmp_path / "manifest.jsonl"
    for arm in ("clean", "poisoned", *backdoor.DEFENSES):
        config = load_config(backdoor.CONFIG, backdoor.arm_overrides(arm, setup, 1, manifest))
        assert config.seed == 1 and config.train.steps == setup.steps
        assert ("manifest" in config.data.train) == (arm != "clean")
        assert (config.loss.defense or {}).get("name") == (arm if arm in backdoor.DEFENSES else None)
    safeclip = load_config(backdoor.CONFIG, backdoor.arm_overrides("safeclip", setup, 0, manifest))
    assert safeclip.loss.defense["warmup_steps"] == setup.steps // 6
    # RoCLIP's release schedule: a plain first epoch, then every 2nd epoch swapped whole
    roclip = load_config(backdoor.CONFIG, backdoor.arm_overrides("roclip", setup, 0, manifest))
    epoch = setup.n_train // setup.batch
    assert roclip.loss.defense["swap_every"] == 2 * epoch and roclip.loss.defense["swap_length"] == epoch
    for arm in backdoor.FINETUNES:
        config = load_config(backdoor.CONFIG, backdoor.finetune_overrides(arm, setup, 0, tmp_path))
        assert config.train.init_from == str(tmp_path) and config.train.steps == setup.grid[-1]
        assert config.data.train["seed"] == 1  # a clean set disjoint from the poisoned one
        every = config.train.checkpoint_every
        assert all(k % every == 0 for k in setup.grid)
        assert config.train.keep_checkpoints * every >= setup.grid[-1]
        assert (config.loss.defense is not None) == (arm == "ft_cleanclip")


def test_the_detector_sample_is_independent_of_the_poison_draw(backdoor) -> None:
    setup = backdoor.FULL
    clean = ShapesSource("train", n=setup.n_train, image_size=setup.image_size)
    mask = poison_dataset(clean, backdoor.POISON_RATE, "a.", backdoor.TRIGGER, seed=0).poisoned_mask()
    for seed in range(2):
        sample = backdoor.detector_sample(setup.n_train, setup.n_detect, seed)
        assert len(set(sample)) == setup.n_detect and sample == sorted(sample)
        # a uniform sample holds ~25 of the 100 poisoned pairs (binomial sd ~4.3), not all of them
        assert 10 <= int(mask[sample].sum()) <= 40
