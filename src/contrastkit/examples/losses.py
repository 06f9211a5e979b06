"""The loss library on real data: three encoders trained on scikit-learn's bundled digits.

1,797 real 8x8 handwritten digits (scikit-learn ships them; nothing is downloaded) are split
into train and test. One small MLP encoder is trained with each of

* ``nt_xent``   self-supervised: two augmented views of each image, no labels;
* ``supcon``    supervised contrast over the same two views, with the digit labels;
* ``CLIPLoss``  image <-> class-name alignment with a learnable temperature: a second
                "text" tower embeds the ten class tokens, ``sample_ids`` makes every image of
                a class a positive of its class token, and classification is zero-shot.

It prints the 1-NN test accuracy of each embedding (cosine), next to raw pixels, and the
CLIP model's zero-shot accuracy. Run: ``python -m contrastkit.examples.losses [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.losses import CLIPLoss, clip_loss, nt_xent, supcon


def load_digits_split(seed: int, n_test: int = 597) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test); x: (n, 8, 8) in [0, 1], y: (n,) int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "this example reads scikit-learn's bundled digits: pip install 'contrastkit[examples]'"
        ) from exc
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random shift of up to one pixel, a brightness change and Gaussian noise. (n, 8, 8)."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, :, None]
    cols = (dx[:, None] + torch.arange(8))[:, None, :]
    shifted = padded[torch.arange(n)[:, None, None], rows, cols]
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, generator=generator)
    return shifted * brightness + 0.1 * torch.randn(shifted.shape, generator=generator)


def encoder(dim: int = 32) -> nn.Module:
    """64 pixels -> dim, L2-normalised outside."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, dim))


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model(images), dim=1)


def nearest_neighbour_accuracy(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor
) -> float:
    """1-NN accuracy under cosine similarity. train: (n, D), test: (m, D)."""
    nearest = (F.normalize(test, dim=1) @ F.normalize(train, dim=1).T).argmax(dim=1)
    return float((train_labels[nearest] == test_labels).float().mean())


def train(
    step_loss: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch: int,
    seed: int,
) -> tuple[float, float]:
    """AdamW on ``step_loss(images, labels, generator)``; returns (first loss, last loss)."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=generator)
        loss = step_loss(x[idx], y[idx], generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per loss")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="30 steps: a smoke run in seconds")
    args = parser.parse_args(argv)
    steps = 30 if args.quick else args.steps

    x_train, y_train, x_test, y_test = load_digits_split(args.seed)
    print(f"scikit-learn digits: {len(y_train)} train / {len(y_test)} test images, 10 classes")
    ones = F.normalize(torch.ones(8, 4), dim=1)
    print(
        f"sanity: clip_loss of identical embeddings at scale 0 = {float(clip_loss(ones, ones, 0.0)):.4f}"
        f" = log 8 = {math.log(8):.4f}"
    )

    results: dict[str, float] = {
        "pixels/1nn": nearest_neighbour_accuracy(x_train.flatten(1), y_train, x_test.flatten(1), y_test)
    }
    rows = [("raw pixels (64-D)", "-", "-", results["pixels/1nn"], None)]

    for name in ("nt_xent", "supcon"):
        torch.manual_seed(args.seed)
        model = encoder()

        def two_views(images, labels, generator, model=model, name=name):
            z1 = embed(model, augment(images, generator))
            z2 = embed(model, augment(images, generator))
            if name == "nt_xent":
                return nt_xent(z1, z2, temperature=0.2)
            return supcon(torch.stack([z1, z2], dim=1), labels, temperature=0.1)

        start = time.perf_counter()
        first, last = train(
            two_views, list(model.parameters()), x_train, y_train, steps, args.batch, args.seed
        )
        seconds = time.perf_counter() - start
        with torch.no_grad():
            acc = nearest_neighbour_accuracy(embed(model, x_train), y_train, embed(model, x_test), y_test)
        results[f"{name}/1nn"] = acc
        rows.append((f"{name} (32-D)", f"{first:.3f} -> {last:.3f}", f"{seconds:.1f}", acc, None))

    torch.manual_seed(args.seed)
    image_tower, class_tokens, criterion = encoder(), nn.Embedding(10, 32), CLIPLoss()

    def image_text(images, labels, generator):
        return criterion(
            embed(image_tower, augment(images, generator)),
            F.normalize(class_tokens(labels), dim=1),
            sample_ids=labels,
        )

    params = [*image_tower.parameters(), *class_tokens.parameters(), *criterion.parameters()]
    start = time.perf_counter()
    first, last = train(image_text, params, x_train, y_train, steps, args.batch, args.seed)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        test_emb = embed(image_tower, x_test)
        zero_shot = (test_emb @ F.normalize(class_tokens.weight, dim=1).T).argmax(dim=1)
        results["clip/zeroshot"] = float((zero_shot == y_test).float().mean())
        results["clip/1nn"] = nearest_neighbour_accuracy(
            embed(image_tower, x_train), y_train, test_emb, y_test
        )
    results["clip/scale"] = criterion.scale
    rows.append(
        (
            "CLIPLoss image<->class (32-D)",
            f"{first:.3f} -> {last:.3f}",
            f"{seconds:.1f}",
            results["clip/1nn"],
            results["clip/zeroshot"],
        )
    )

    print(f"\n{'embedding':<30} {'train loss':>17} {'time s':>7} {'1-NN acc':>9} {'zero-shot':>10}")
    for label, loss, seconds, acc, zs in rows:
        zs_text = "-" if zs is None else f"{zs:.3f}"
        print(f"{label:<30} {loss:>17} {seconds:>7} {acc:>9.3f} {zs_text:>10}")
    print(
        f"\nlearned CLIP scale: {results['clip/scale']:.2f} (started at {1 / 0.07:.2f}); "
        f"chance accuracy: 0.100; steps per loss: {steps}"
    )
    return results


if __name__ == "__main__":
    main()
