"""experiments/decoder_contrast.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("decoder_contrast", tmp_path)
    for label in (
        "| random init (no pre-training) |",
        "| encoder-only dense contrast |",
        "| DeCon α=0.5, dropout 0.2 |",
        "| DeCon α=0.25, dropout 0.0 |",
        "mIoU, 1% masks",
        "mIoU, 10% masks",
    ):
        assert label in out
    assert "Claim " in out and "reproduce" in out
    assert (
        text.count("<!-- decoder-contrast-table:begin -->") == 1 and "| DeCon α=0.75, dropout 0.2 |" in text
    )


def test_mean_iou_on_known_masks() -> None:
    module = load_experiment("decoder_contrast")
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]])
    assert module.mean_iou(target, target) == 1.0
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 0]])
    # class 0: inter 1 / union 3; class 1: 2/3; class 2: 2/2; class 3: 1/2
    assert abs(module.mean_iou(pred, target) - (1 / 3 + 2 / 3 + 1 + 1 / 2) / 4) < 1e-12


def test_images_masks_and_unet_shapes() -> None:
    module = load_experiment("decoder_contrast")
    images, masks = module.make_images(16, torch.Generator().manual_seed(0))
    assert images.shape == (16, 3, 32, 32) and masks.shape == (16, 32, 32)
    assert set(masks.unique().tolist()) == {0, 1, 2, 3}
    again, _ = module.make_images(16, torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    bottleneck, levels = module.TinyUNet()(images)
    assert bottleneck.shape == (16, 32, 8, 8)
    assert [tuple(m.shape) for m in levels] == [(16, 16, 16, 16), (16, 8, 32, 32)]
