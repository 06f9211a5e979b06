"""experiments/severity_labels.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("severity_labels", tmp_path)
    for label in (
        "| SimCLR (nt_xent, weak crops) |",
        "| SupCon on severity bins, K = 2 |",
        "| SupCon on severity bins, K = 8 |",
        "| SupCon on oracle bins of the true radius, K = 4 |",
        "| probe on the true lesion radius (severity-only reference) |",
        "| probe on high-pass peak + true radius (feature ceiling) |",
        "| encoder trained on the biomarker labels (supervised ceiling) |",
        "| random-init encoder (floor) |",
        "oracle bins minus SimCLR",
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


def test_views_are_seeded_and_keep_the_shape() -> None:
    module = load_experiment("severity_labels")
    x = torch.rand(4, 1, 32, 32)
    a = module.random_views(x, torch.Generator().manual_seed(0))
    b = module.random_views(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, module.random_views(x, torch.Generator().manual_seed(1)))


def _dot_at_the_edge(n: int) -> torch.Tensor:
    """Flat images with the dot where the generator can put it closest to a corner (x = 3, y = 3.5)."""
    x = torch.arange(32.0)[None, :]
    y = torch.arange(32.0)[:, None]
    dot = torch.exp(-((x - 3.0) ** 2 + (y - 3.5) ** 2) / (2 * 0.7**2))
    return (0.3 + 0.8 * dot).expand(n, 1, 32, 32).clone()


def test_weak_crops_keep_the_dot_and_strong_crops_lose_it() -> None:
    module = load_experiment("severity_labels")
    images = _dot_at_the_edge(400)
    flat = torch.full_like(images, 0.3)

    def dot_left(**crop) -> torch.Tensor:
        """Peak of the dot in each view: the same crops, jitter and noise applied with and without it."""
        views = [module.random_views(x, torch.Generator().manual_seed(0), **crop) for x in (images, flat)]
        return (views[0] - views[1]).amax(dim=(1, 2, 3))

    assert float(dot_left().min()) > 0.8 * 0.6 * 0.5  # amplitude x lowest contrast x resampling
    strong = dot_left(area=(0.2, 1.0), max_aspect=4 / 3)
    assert float((strong < 0.1).double().mean()) > 0.3


def test_peak_feature_finds_the_dot() -> None:
    module = load_experiment("severity_labels")
    images = _dot_at_the_edge(2)
    peaks = module.peak_feature(torch.cat([images, torch.full_like(images, 0.3)]))
    assert float(peaks[:2].min()) > 0.4 and float(peaks[2:].abs().max()) < 1e-6


def test_train_encoder_objectives_give_their_output_sizes() -> None:
    module = load_experiment("severity_labels")
    retinas = module.make_retinas(16, torch.Generator().manual_seed(0))
    bins = torch.arange(16) % 4
    for objective, labels, size in (
        ("simclr", None, 32),
        ("supcon", bins, 32),
        ("supervised", retinas.biomarker, 1),
    ):
        model = module.train_encoder(retinas.images, labels, objective, steps=2, batch=8, seed=0)
        assert model(retinas.images[:3]).shape == (3, size)
        assert module.features(model, retinas.images).shape == (16, 64)


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
    extended = {
        "severity": runs(0.72),
        "features": runs(0.99),
        "supervised": runs(0.95, 0.96),
        **base,
        "K=4": runs(0.70, 0.71, 0.72),
        "oracle K=4": win,
    }
    text = module.verdict(extended)
    assert "Room above the severity-only rate: +0.270 (probe on high-pass peak + true radius)" in text
    assert (
        "best contrastive arm vs severity-only: +0.090 (SupCon on oracle bins of the true radius, K = 4)"
        in text
    )
    assert "oracle bins minus SimCLR: +0.100 (clear)" in text and text.endswith("did not reproduce.")
