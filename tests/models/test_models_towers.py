"""Built-in towers: shapes, dtypes, padding invariance, determinism, gradients and bad inputs."""

from __future__ import annotations

import pytest
import torch

from contrastkit import InputError
from contrastkit.models import ImageCNN, ImageViT, SeriesCNN, SeriesPatchTransformer, TextTransformer


def text_batch(lengths: list[int], length: int, vocab: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ids (pad 0) of the given real lengths, padded to ``length``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), length), generator=g)
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


_IMAGES = (3, 3, 16, 16)
_SERIES = (3, 2, 20)
TOWER_CASES = {
    "cnn": (lambda: ImageCNN(width=4, depth=2, output_dim=10), _IMAGES),
    "cnn_batchnorm": (lambda: ImageCNN(width=4, depth=2, output_dim=None, norm="batch"), _IMAGES),
    "vit_cls": (lambda: ImageViT(16, patch_size=8, dim=16, depth=2, heads=2, output_dim=10), _IMAGES),
    "vit_mean": (lambda: ImageViT(16, patch_size=4, dim=16, depth=1, heads=4, pooling="mean"), _IMAGES),
    "text_eos": (lambda: TextTransformer(50, max_length=8, dim=16, depth=2, heads=2), ([3, 8, 1], 8)),
    "text_mean": (
        lambda: TextTransformer(50, max_length=8, dim=16, depth=1, heads=2, pooling="mean", output_dim=10),
        ([3, 5, 1], 6),
    ),
    "series_cnn": (lambda: SeriesCNN(2, width=4, depth=3, output_dim=10), _SERIES),
    "series_patch": (lambda: SeriesPatchTransformer(2, patch_size=4, dim=16, depth=2, heads=2), _SERIES),
    "series_patch_mean": (
        lambda: SeriesPatchTransformer(2, 6, dim=16, depth=1, heads=2, pooling="mean", output_dim=10),
        _SERIES,
    ),
}


def tiny_tower(name: str) -> tuple[torch.nn.Module, object]:
    """(tower, a batch of 3) for one of TOWER_CASES, built under a fixed seed."""
    build, shape = TOWER_CASES[name]
    torch.manual_seed(0)
    tower = build()
    g = torch.Generator().manual_seed(1)
    if name.startswith("text"):
        return tower, text_batch(*shape)
    return tower, torch.randn(*shape, generator=g)


NAMES = list(TOWER_CASES)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_dtype_and_output_dim(name):
    tower, batch = tiny_tower(name)
    out = tower(batch)
    assert out.shape == (3, tower.output_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_output_dim_defaults():
    assert ImageCNN(width=4, depth=3, output_dim=None).output_dim == 16
    assert ImageCNN().output_dim == 256
    assert ImageViT(image_size=16, dim=24, heads=3, depth=1).output_dim == 24
    assert TextTransformer(10, dim=32, depth=1).output_dim == 32
    assert SeriesCNN(3, width=8, depth=4).output_dim == 32  # width * 4 from the third block on
    assert SeriesPatchTransformer(3, dim=32, depth=1).output_dim == 32


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name):
    a_tower, batch = tiny_tower(name)
    b_tower, _ = tiny_tower(name)
    torch.testing.assert_close(a_tower(batch), b_tower(batch), atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_every_parameter(name):
    tower, batch = tiny_tower(name)
    tower.train()
    tower(batch).pow(2).sum().backward()
    for pname, p in tower.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("pooling", ["eos", "mean"])
def test_text_tower_ignores_extra_padding(pooling):
    tower = TextTransformer(50, max_length=16, dim=16, depth=2, heads=2, pooling=pooling)
    short = text_batch([2, 5, 4], 5)
    long = {k: torch.cat([v, torch.zeros(3, 9, dtype=v.dtype)], dim=1) for k, v in short.items()}
    long["input_ids"][:, 5:] = 7  # ids under a zero mask are ignored too
    for mode in (True, False):  # the fused eval fast path and the training path
        tower.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(tower(short), tower(long), atol=1e-5, rtol=1e-5)


def test_text_eos_pooling_reads_the_last_real_token():
    tower = TextTransformer(50, max_length=8, dim=16, depth=1, heads=2).eval()
    batch = text_batch([3, 6], 6)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 2] = (changed["input_ids"][0, 2] % 49) + 1  # the last real token of row 0
    with torch.no_grad():
        before, after = tower(batch), tower(changed)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])


def test_text_tower_accepts_bool_mask_and_extra_keys():
    tower = TextTransformer(50, max_length=8, dim=16, depth=1, heads=2).eval()
    batch = text_batch([2, 4], 4)
    with torch.no_grad():
        want = tower(batch)
        got = tower({**batch, "attention_mask": batch["attention_mask"].bool(), "token_type_ids": 0})
    torch.testing.assert_close(got, want)


def test_series_patch_pads_a_ragged_length():
    tower = SeriesPatchTransformer(2, patch_size=4, dim=16, depth=1, heads=2, max_patches=3).eval()
    x = torch.randn(2, 2, 10)
    padded = torch.cat([x, torch.zeros(2, 2, 2)], dim=2)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), tower(padded))
    with pytest.raises(InputError, match="max_patches=3"):
        tower(torch.randn(2, 2, 13))


def test_image_cnn_batch_norm_uses_batch_statistics_in_train_mode():
    tower = ImageCNN(width=4, depth=1, output_dim=None, norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())
    x = torch.randn(4, 3, 8, 8)
    alone = tower(x[:2])
    together = tower(x)[:2]
    assert not torch.allclose(alone, together)  # why GroupNorm is the default


@pytest.mark.parametrize(
    "tower, batch, match",
    [
        (ImageCNN(width=4, depth=1), torch.randn(2, 1, 8, 8), "3 channels"),
        (ImageCNN(width=4, depth=1), torch.randn(3, 8, 8), r"\(B, C, H, W\)"),
        (ImageCNN(width=4, depth=1), torch.zeros(2, 3, 8, 8, dtype=torch.long), "floating-point"),
        (ImageCNN(width=4, depth=1), torch.zeros(0, 3, 8, 8), "empty"),
        (ImageCNN(width=4, depth=1), [[0.0]], "torch.Tensor"),
        (ImageViT(image_size=16, dim=8, heads=2, depth=1), torch.randn(2, 3, 24, 24), "16x16"),
        (SeriesCNN(2, width=4, depth=1), torch.randn(2, 3, 16), "2 channels"),
        (SeriesCNN(2, width=4, depth=1), torch.randn(2, 16), r"\(B, C, T\)"),
        (SeriesPatchTransformer(2, dim=8, heads=2, depth=1), torch.randn(2, 3, 16), "2 channels"),
    ],
)
def test_dense_towers_reject_bad_inputs(tower, batch, match):
    with pytest.raises(InputError, match=match):
        tower(batch)


def _text(**override):
    batch = text_batch([2, 3], 3)
    batch.update(override)
    return batch


@pytest.mark.parametrize(
    "batch, match",
    [
        (torch.ones(2, 3, dtype=torch.long), "'input_ids' and 'attention_mask'"),
        ({"input_ids": torch.ones(2, 3, dtype=torch.long)}, "'input_ids' and 'attention_mask'"),
        (_text(input_ids=torch.ones(2, 3)), "integer"),
        (_text(input_ids=torch.ones(2, 3, dtype=torch.bool)), "integer token ids"),
        (_text(input_ids=torch.ones(6, dtype=torch.long)), r"shape \(B, L\)"),
        (_text(attention_mask=torch.ones(2, 4, dtype=torch.long)), "same shape"),
        (_text(attention_mask=torch.full((2, 3), 2)), "only 0"),
        (_text(attention_mask=torch.tensor([[1, 0, 0], [0, 0, 0]])), r"no real token \(first: \[1\]\)"),
        (_text(input_ids=torch.tensor([[1, 2, 50], [1, 2, 3]])), r"\[0, 50\)"),
        (_text(input_ids=torch.tensor([[1, 2, -1], [1, 2, 3]])), r"\[0, 50\)"),
        (text_batch([2, 9], 9), "max_length 8"),
        (_text(input_ids=[[1]]), "torch.Tensor"),
    ],
)
def test_text_tower_rejects_bad_batches(batch, match):
    tower = TextTransformer(50, max_length=8, dim=8, depth=1, heads=2)
    with pytest.raises(InputError, match=match):
        tower(batch)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ImageCNN(width=0), "'width' must be an int >= 1"),
        (lambda: ImageCNN(depth=True), "'depth' must be an int >= 1"),
        (lambda: ImageCNN(norm="layer"), "'norm' must be one of 'group', 'batch'"),
        (lambda: ImageCNN(output_dim=0), "'output_dim'"),
        (lambda: ImageViT(image_size=30, patch_size=8), "must divide"),
        (lambda: ImageViT(dim=10, heads=3), r"divisible by 'heads' \(3\); pick e.g. heads=2"),
        (lambda: ImageViT(pooling="max"), "'pooling'"),
        (lambda: ImageViT(dropout=1.0), "'dropout'"),
        (lambda: TextTransformer(0), "'vocab_size'"),
        (lambda: TextTransformer(10, pooling="cls"), "'eos', 'mean'"),
        (lambda: SeriesCNN(0), "'in_channels'"),
        (lambda: SeriesCNN(2, norm="instance"), "'norm'"),
        (lambda: SeriesPatchTransformer(2, max_patches=0), "'max_patches'"),
    ],
)
def test_bad_configuration_raises(build, match):
    with pytest.raises(InputError, match=match):
        build()


def test_docstrings_state_shapes():
    for cls in (ImageCNN, ImageViT, TextTransformer, SeriesCNN, SeriesPatchTransformer):
        assert "Shapes:" in cls.__doc__ and "(B, output_dim)" in cls.__doc__, cls.__name__
