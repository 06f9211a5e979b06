"""experiments/anchored_decoys.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("anchored_decoys", tmp_path)
    for label in (
        "| CLIP |",
        "| + decoys |",
        "| + decoys + anchor hinge |",
        "AUROC, shortcut-free",
        "Spearman",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- anchored-decoys-table:begin -->") == 1 and "| CLIP |" in text


def test_metrics_on_known_scores() -> None:
    module = load_experiment("anchored_decoys")
    positive = torch.tensor([[3.0, 2.0], [0.0, 1.0]])
    negative = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    # row 0: pairs (3>1, 3>2, 2>1, 2=2) -> 3.5/4; row 1: every active below every decoy -> 0
    torch.testing.assert_close(
        module.auroc(positive, negative), torch.tensor([0.875, 0.0], dtype=torch.float64)
    )
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    y = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(module.spearman(x, y), torch.tensor([1.0, -1.0], dtype=torch.float64))
    ties = module.average_ranks(torch.tensor([[5.0, 1.0, 5.0]]))
    torch.testing.assert_close(ties, torch.tensor([[2.5, 1.0, 2.5]], dtype=torch.float64))


def test_edits_are_minimal_and_the_shortcut_is_training_only() -> None:
    module = load_experiment("anchored_decoys")
    g = torch.Generator().manual_seed(0)
    pockets = module.make_pockets(64, g)
    actives = module.binders(pockets, g)
    assert torch.equal(actives.types, -pockets.types) and torch.equal(actives.mask, pockets.mask)
    fair = module.edit(actives, g, 1)
    shortcut = module.edit(actives, g, 1, 4)
    wrong = ((fair.types != actives.types) & fair.mask).sum(1)
    assert torch.equal(wrong, torch.ones(64, dtype=torch.long)) and torch.equal(fair.mask, actives.mask)
    assert torch.equal(shortcut.mask.sum(1), actives.mask.sum(1) - 4)
    assert bool(((shortcut.types != actives.types) & shortcut.mask).sum(1).eq(1).all())
