"""experiments/decoupled_radial.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("decoupled_radial", tmp_path)
    for label in (
        "| Euclidean SupCon |",
        "| hyperbolic SupCon (-d/τ) |",
        "| decoupled, radial margin |",
        "| decoupled, radial consistency |",
        "acc, level 3 (%)",
        "corr(radius, intensity)",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- decoupled-radial-table:begin -->") == 1 and "| Euclidean SupCon |" in text


def test_spearman_on_known_orders() -> None:
    module = load_experiment("decoupled_radial")
    x = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert abs(module.spearman(x, x**3) - 1.0) < 1e-12
    assert abs(module.spearman(x, -x) + 1.0) < 1e-12
    # ranks (0, 2, 1, 3) vs (0, 1, 2, 3): 1 - 6 * 2 / (4 * 15) = 0.8
    assert abs(module.spearman(x, torch.arange(4.0)) - 0.8) < 1e-12


def test_corruption_drops_modalities_but_keeps_one_and_the_latents() -> None:
    module = load_experiment("decoupled_radial")
    world = module.make_world()
    clean = module.sample(world, 512, torch.Generator().manual_seed(0))
    corrupt = module.sample(world, 512, torch.Generator().manual_seed(0), level=3)
    assert bool(clean.present.all())
    assert bool(corrupt.present.any(dim=1).all()) and not bool(corrupt.present.all())
    assert torch.equal(clean.labels, corrupt.labels) and torch.equal(clean.intensity, corrupt.intensity)
    # the class is the signal's direction, the intensity its length
    signal = (module.MIN_AMPLITUDE + clean.intensity)[:, None] * world.prototypes[clean.labels]
    torch.testing.assert_close(signal.norm(dim=1), module.MIN_AMPLITUDE + clean.intensity)


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("decoupled_radial")

    def runs(acc: float, corr: float) -> list[dict[str, float]]:
        return [{"acc_corrupt": acc + d, "corr": corr + d / 100} for d in (-0.1, 0.0, 0.1)]

    both = {"euclidean": runs(40, 0.2), "hyperbolic": runs(41, 0.3), "margin": runs(45, 0.8)}
    assert module.verdict(both).endswith("intensity) reproduced.")
    radius_only = {**both, "margin": runs(41, 0.8)}
    assert "partly reproduced" in module.verdict(radius_only)
    neither = {**both, "margin": runs(41, 0.3)}
    assert "did not reproduce" in module.verdict(neither)
