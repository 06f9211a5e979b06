"""experiments/anomaly_windows.py --quick runs in seconds without the shared data and rewrites
only its marked block; its injections, metrics and loaders behave as documented."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("anomaly_windows", tmp_path)
    for label in ("| BCE (L_AD) |", "| L_AD + 0.1 AWCL |", "point F1", "onset error", "synthetic"):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- anomaly-windows-table:begin -->") == 1 and "| L_AD + 0.1 AWCL |" in text


def test_injections_are_labelled_and_patch_labels_cover_them() -> None:
    module = load_experiment("anomaly_windows")
    g = torch.Generator().manual_seed(0)
    window = module.synthetic_series(module.WINDOW)
    for _ in range(20):
        x, labels = module.inject(window, g)
        assert bool(labels.any()) and torch.equal(x[~labels], window[~labels])
        patches = module.patch_labels(labels[None])[0]
        assert torch.equal(patches, labels.view(-1, module.PATCH).any(1))


def test_metrics_on_known_predictions() -> None:
    module = load_experiment("anomaly_windows")
    truth = torch.zeros(1, 40, dtype=torch.bool)
    truth[0, 10:14] = True
    truth[0, 30:32] = True
    predicted = torch.zeros(1, 40, dtype=torch.bool)
    predicted[0, 8:16] = True  # hits the first anomaly 2 points early, misses the second
    assert module.point_f1(predicted, truth) == 2 * 4 / (8 + 6)
    assert module.onset_errors(predicted, truth) == [(2, True), (2 + module.PATCH, False)]
    assert module.point_f1(torch.zeros_like(truth), truth) == 0.0


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("anomaly_windows")
    worse = [{"f1": 0.5, "onset": 10.0, "detected": 50.0}, {"f1": 0.51, "onset": 10.2, "detected": 50.0}]
    better = [{"f1": 0.7, "onset": 5.0, "detected": 70.0}, {"f1": 0.71, "onset": 5.2, "detected": 70.0}]
    assert module.verdict({"s": {"bce": worse, "awcl": better}}).endswith("reproduced.")
    assert "partly" not in module.verdict({"s": {"bce": worse, "awcl": better}})
    assert module.verdict({"s": {"bce": better, "awcl": worse}}).endswith("did not reproduce.")


def test_real_series_load(shared_data: Path) -> None:
    module = load_experiment("anomaly_windows")
    module.DATA = shared_data / "timeseries"
    daphnet, italy = module.load_daphnet(), module.load_italy_power()
    assert daphnet.shape == (7040,) and italy.shape == (1096 * 24,)
    assert bool(torch.isfinite(daphnet).all()) and bool(torch.isfinite(italy).all())
