"""The `make demo` job runs end to end (quick mode) on scikit-learn's bundled digits."""

import pytest

pytest.importorskip("sklearn", reason="the example reads scikit-learn's bundled digits")

from contrastkit.examples.losses import augment, load_digits_split, main, nearest_neighbour_accuracy  # noqa: E402


def test_quick_run_prints_the_table_and_learns(capsys):
    results = main(["--quick", "--batch", "128"])
    out = capsys.readouterr().out
    assert "zero-shot" in out and "raw pixels" in out
    # 30 steps are enough to move every encoder far above chance (0.1)
    for key in ("nt_xent/1nn", "supcon/1nn", "clip/1nn", "clip/zeroshot"):
        assert results[key] > 0.5, (key, results[key])


def test_split_and_augment_are_seeded():
    import torch

    a = load_digits_split(seed=3)
    b = load_digits_split(seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert len(a[1]) + len(a[3]) == 1797 and len(a[3]) == 597
    x = a[0][:5]
    v1 = augment(x, torch.Generator().manual_seed(1))
    v2 = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(v1, v2) and not torch.equal(v1, x)


def test_nearest_neighbour_accuracy_hand_case():
    import torch

    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    test = torch.tensor([[0.9, 0.1], [0.2, 0.8], [1.0, 0.2]])
    assert nearest_neighbour_accuracy(
        train, torch.tensor([0, 1]), test, torch.tensor([0, 1, 1])
    ) == pytest.approx(2 / 3)
