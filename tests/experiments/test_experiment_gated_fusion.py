"""experiments/gated_fusion.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_tables_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("gated_fusion", tmp_path)
    for label in (
        "| gate λ=0.01 |",
        "| fixed 0.5 (λ=0.01) |",
        "| concat-MLP (λ=0.01) |",
        "| averaged-feature linear |",
        "image-only",
        "mixed: text-driven rows",
    ):
        assert label in out
    assert re.search(r"Claim (reproduced|partly reproduced|did not reproduce) on this setup\.", out)
    assert text.count("<!-- gated-fusion-table:begin -->") == 1 and "| gate λ=0.01 |" in text


def test_variants_put_the_label_in_the_stated_modality() -> None:
    module = load_experiment("gated_fusion")
    image_y = torch.arange(10).repeat(200)
    animal = torch.tensor([c in module.ANIMALS for c in module.CIFAR10_CLASSES])
    n_classes, n_named = len(module.CIFAR10_CLASSES), len(module.TEMPLATES) * len(module.CIFAR10_CLASSES)
    for variant in module.VARIANTS:
        pairs = module.build_variant(variant, image_y, torch.Generator().manual_seed(0))
        said = pairs["sentence"] % n_classes
        named = pairs["sentence"] < n_named
        if variant == "combined":
            assert torch.equal(pairs["label"], (said == image_y).long())
            assert 0.4 < float(pairs["label"].float().mean()) < 0.6
        elif variant == "image-only":
            assert torch.equal(pairs["label"], animal[image_y].long())
            assert abs(float((said == image_y).float().mean()) - 0.1) < 0.03  # statement independent
        elif variant == "text-only":
            assert torch.equal(pairs["label"], animal[said].long())
        else:
            text_rows = pairs["driven"] == 1
            assert torch.equal(named, text_rows)  # image-driven rows get a class-free statement
            assert torch.equal(pairs["label"][text_rows], animal[said[text_rows]].long())
            assert torch.equal(pairs["label"][~text_rows], animal[image_y[~text_rows]].long())


def test_isometry_keeps_norms_and_the_concat_baseline_matches_the_gate_size() -> None:
    module = load_experiment("gated_fusion")
    q = module.isometry(128, 512, torch.Generator().manual_seed(0))
    x = torch.randn(6, 128)
    torch.testing.assert_close((x @ q).norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-6)
    hidden = module.equal_size_hidden()
    gate = module.n_parameters(module.build_model("gate", hidden))
    concat = module.n_parameters(module.build_model("concat", hidden))
    assert abs(gate - concat) < 0.001 * gate
