"""experiments/severity_labels.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("severity_labels", tmp_path)
    for label in (
        "| SimCLR (nt_xent, strong crops) |",
        "| SupCon on severity bins, K = 2 |",
        "| SupCon on severity bins, K = 8 |",
        "| random-init encoder (floor) |",
        "biomarker accuracy",
        "Spearman with lesion radius",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- severity-labels-table:begin -->") == 1
    assert text.count("<!-- severity-labels-table:end -->") == 1 and "| SimCLR" in text


def test_retinas_healthy_lesion_and_biomarker() -> None:
    module = load_experiment("severity_labels")
    healthy = module.make_retinas(32, torch.Generator().manual_seed(0), healthy=True)
    assert healthy.images.shape == (32, 1, 32, 32)
    assert bool((healthy.radius == 0).all()) and int(healthy.biomarker.sum()) == 0
    sick = module.make_retinas(400, torch.Generator().manual_seed(1))
    assert 0.1 < float((sick.radius == 0).double().mean()) < 0.3
    assert float(sick.radius.max()) <= module.MAX_RADIUS
    # the biomarker is more frequent with larger lesions, and lesions darken the image
    large = sick.radius > 3.5
    assert sick.biomarker[large].double().mean() > sick.biomarker[sick.radius == 0].double().mean()
    brightness = sick.images.mean(dim=(1, 2, 3))
    assert brightness[large].mean() < brightness[sick.radius == 0].mean()
    again = module.make_retinas(400, torch.Generator().manual_seed(1))
    assert torch.equal(again.images, sick.images)


def test_strong_crops_are_seeded_and_keep_the_shape() -> None:
    module = load_experiment("severity_labels")
    x = torch.rand(4, 1, 32, 32)
    a = module.strong_crops(x, torch.Generator().manual_seed(0))
    b = module.strong_crops(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, module.strong_crops(x, torch.Generator().manual_seed(1)))


def test_verdict_follows_the_numbers() -> None:
    module = load_experiment("severity_labels")

    def runs(*accuracies: float) -> list[dict[str, float]]:
        return [{"accuracy": a, "f1": a} for a in accuracies]

    base = {"random": runs(0.6, 0.6), "simclr": runs(0.70, 0.71, 0.72)}
    win = runs(0.80, 0.81, 0.82)
    assert "reproduced." in module.verdict({**base, "K=4": win, "K=32": win}).split("Claim")[1]
    mixed = module.verdict({**base, "K=4": win, "K=32": runs(0.70, 0.71, 0.72)})
    assert "partly reproduced" in mixed and "1 of 2" in mixed
    assert "did not reproduce" in module.verdict({**base, "K=4": runs(0.69, 0.72, 0.75)})
    table = module.format_table({**base, "K=4": win})
    assert "| SupCon on severity bins, K = 4 | 0.810 ± 0.010 | 0.810 ± 0.010 |" in table
