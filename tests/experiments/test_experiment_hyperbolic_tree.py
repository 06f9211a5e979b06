"""experiments/hyperbolic_tree.py --quick runs end to end in seconds and rewrites only its marked block."""

from __future__ import annotations

from pathlib import Path

import torch

from contrastkit.geometry import Euclidean, PoincareBall
from experiment_scripts import load_experiment, run_quick


def test_quick_run_prints_the_table_and_writes_the_block(tmp_path: Path) -> None:
    out, text = run_quick("hyperbolic_tree", tmp_path)
    for label in (
        "| Euclidean |",
        "| Poincaré, learnable c |",
        "| Lorentz, c = 1 |",
        "| tree | 2 |",
        "| CIFAR-10 | 2 |",
    ):
        assert label in out
    assert "edge mAP" in out and "MMD²" in out
    assert "Claim " in out and "reproduce" in out
    assert text.count("<!-- hyperbolic-tree-table:begin -->") == 1 and "| Euclidean |" in text


def test_tree_and_image_hierarchy() -> None:
    module = load_experiment("hyperbolic_tree")
    tree = module.make_tree(3, 2)
    assert tree.parent.tolist() == [-1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert tree.depth.tolist() == [0, 1, 1, 1] + [2] * 9
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert module.superclass_of(classes) == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    x = torch.arange(20, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(20) % 10
    images, f = module.image_tree(x, y, classes, per_class=2)
    assert images.parent.tolist()[:13] == [-1, 0, 0] + [2, 2, 1, 1, 1, 1, 1, 1, 2, 2]
    assert len(images.parent) == 13 + 20 and images.depth.tolist()[13:] == [3] * 20
    torch.testing.assert_close(f[0], x.mean(0))  # the root: mean of every image
    torch.testing.assert_close(f[3], x[[0, 10]].mean(0))  # class 0 (airplane): images 0 and 10


def test_metrics_on_known_embeddings() -> None:
    module = load_experiment("hyperbolic_tree")
    tree = module.make_tree(2, 1)  # root 0 with children 1 and 2
    # children next to the root, far from each other: every neighbour ranks first -> mAP 1
    dist = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 3.0], [1.0, 3.0, 0.0]])
    assert module.edge_map(dist, tree) == 1.0
    # child 1 nearer child 2 than the root: its parent ranks 2nd (AP 1/2); child 2 likewise
    dist = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
    assert abs(module.edge_map(dist, tree) - (1 + 0.5 + 0.5) / 3) < 1e-12
    assert module.recall_at_1(torch.tensor([[0.0, 1.0], [0.5, 0.7]])) == 0.5
    z = torch.randn(6, 2)
    assert abs(module.mmd2(Euclidean(), z, z)) < 1e-6
    assert module.mmd2(Euclidean(), z, z + 5.0) > 0.5
    assert abs(module.pearson(torch.tensor([0, 1, 2]), torch.tensor([1.0, 3.0, 5.0])) - 1) < 1e-12
    ball = PoincareBall()
    assert isinstance(module.make_manifold("poincare_c").theta, torch.nn.Parameter)
    assert float(module.make_manifold("lorentz").c) == float(ball.c)
