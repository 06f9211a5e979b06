"""End-of-run evaluation of a ContrastiveModel on a source, and the report's artifacts.

Paired image-text data: retrieval both ways (several captions per image by the standard
protocol), zero-shot classification when the source names its classes, and representation
geometry. One-modality data with labels: kNN and linear-probe accuracy against training
embeddings. Metric keys are flat (``retrieval/i2t_R@1``, ``zeroshot/top1``, ``probe/knn_top1``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.data import Collator, ContrastiveDataset, ImageTransform, Source
from contrastkit.eval import (
    class_embeddings,
    knn_accuracy,
    linear_probe_accuracy,
    paired_retrieval,
    representation_metrics,
    top_k_neighbours,
    zero_shot_accuracy,
)
from contrastkit.models import ContrastiveModel

THUMBNAILS = 32


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Embedder:
    """Embeds records of a source with one modality's tower, in eval mode and without augmentation."""

    def __init__(self, model: ContrastiveModel, tokenizer: Any, image_size: int, batch_size: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.image_size, self.batch_size = image_size, batch_size

    @torch.no_grad()
    def __call__(
        self, source: Source, modality: str, indices: Sequence[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """(embeddings (n, D) float32 on CPU, the indices that loaded; bad records are left out)."""
        if modality == "text":
            captions = {i: source[i].get("text") for i in indices}
            kept = [i for i, text in captions.items() if isinstance(text, str) and text.strip()]
            chunks = [
                self.texts([captions[i] for i in kept[s : s + self.batch_size]])
                for s in range(0, len(kept), self.batch_size)
            ]
            return (torch.cat(chunks) if chunks else torch.empty(0, self.model.embed_dim)), kept
        transforms = {"image": ImageTransform(self.image_size)} if "image" in source.modalities else {}
        dataset = ContrastiveDataset(source, transforms)
        collate = Collator({"text": self.tokenizer} if self.tokenizer is not None else {})
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out, kept = [], []
        for start in range(0, len(indices), self.batch_size):
            batch = collate([dataset[i] for i in indices[start : start + self.batch_size]])
            if batch["index"].numel() == 0:
                continue
            out.append(self.model.encode(modality, to_device(batch[modality], device)).float().cpu())
            kept.extend(batch["index"].tolist())
        self.model.train(was_training)
        if not out:
            return torch.empty(0, self.model.embed_dim), []
        return torch.cat(out), kept

    @torch.no_grad()
    def texts(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor:
        """Embeddings (n, D) of raw strings, in eval mode; unit rows unless ``normalize=False``."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        batch = to_device(self.tokenizer(texts), device)
        out = self.model.encode("text", batch, normalize=normalize).float().cpu()
        self.model.train(was_training)
        return out


def _first_of_each_group(source: Source, limit: int | None) -> tuple[list[int], torch.Tensor]:
    """(index of the first record of each group, group index of every record), capped at ``limit`` groups."""
    _, group_of = source.groups()
    first: dict[int, int] = {}
    for index, group in enumerate(group_of.tolist()):
        first.setdefault(group, index)
    chosen = list(first.values())  # groups are numbered in first-seen order
    return (chosen if limit is None else chosen[:limit]), group_of


def evaluate_paired(
    embed: Embedder, source: Source, templates: Sequence[str], max_images: int | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Image-text retrieval, zero-shot and geometry; returns (metrics, artifacts for the report)."""
    image_records, group_of = _first_of_each_group(source, max_images)
    images, image_kept = embed(source, "image", image_records)
    position = {int(group_of[i]): p for p, i in enumerate(image_kept)}
    text_records = [i for i in range(len(source)) if int(group_of[i]) in position]
    texts, text_kept = embed(source, "text", text_records)
    text_to_image = torch.tensor([position[int(group_of[i])] for i in text_kept], dtype=torch.int64)
    metrics = {f"retrieval/{k}": v for k, v in paired_retrieval(images, texts, text_to_image).items()}
    geometry = representation_metrics(images[text_to_image], texts)
    metrics.update({f"geometry/{k}": v for k, v in geometry.items()})
    labels = source.labels()
    if source.classes and labels is not None:
        classes = class_embeddings(embed.texts, list(source.classes), list(templates))
        image_labels = labels[torch.tensor(image_kept)]
        for k, v in zero_shot_accuracy(images, classes, image_labels).items():
            metrics[f"zeroshot/{k}"] = v
        metrics["zeroshot/chance"] = 1.0 / len(source.classes)
    metrics["retrieval/chance_R@1"] = 1.0 / len(image_kept)
    artifacts = {
        "images": images,
        "texts": texts,
        "text_to_image": text_to_image,
        "image_records": image_kept,
        "text_records": text_kept,
    }
    return metrics, artifacts


def evaluate_probe(
    embed: Embedder, train: Source, test: Source, k: int, max_records: int | None
) -> dict[str, float]:
    """kNN and linear-probe accuracy of the image embeddings (labels needed on both sources),
    on the first ``max_records`` records of each (5,000 when None)."""
    limit = max_records or 5000
    train_z, train_kept = embed(train, "image", list(range(min(len(train), limit))))
    test_z, test_kept = embed(test, "image", list(range(min(len(test), limit))))
    train_y, test_y = train.labels()[torch.tensor(train_kept)], test.labels()[torch.tensor(test_kept)]
    return {
        "probe/knn_top1": knn_accuracy(train_z, train_y, test_z, test_y, k=k),
        "probe/linear_top1": linear_probe_accuracy(train_z, train_y, test_z, test_y),
        "probe/chance": 1.0 / len(set(train_y.tolist())),
    }


def _thumbnail(tensor: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image -> uint8 (H, W, 3)."""
    return ((tensor.clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def write_artifacts(
    run_dir: Path, source: Source, artifacts: dict[str, Any], image_size: int, examples: int
) -> None:
    """``eval/similarity.npy``, ``eval/examples.json`` and ``eval/thumbnails.npy`` for the report."""
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    images, texts, text_to_image = artifacts["images"], artifacts["texts"], artifacts["text_to_image"]
    first_caption = {}
    for t, image in enumerate(text_to_image.tolist()):
        first_caption.setdefault(image, t)
    shown = [i for i in range(min(THUMBNAILS, len(images))) if i in first_caption]
    captions = torch.tensor([first_caption[i] for i in shown], dtype=torch.int64)
    similarity = (images[shown] @ texts[captions].T).numpy().astype(np.float32)
    np.save(out / "similarity.npy", similarity)

    queries = captions[:examples]
    scores, retrieved = top_k_neighbours(texts[queries], images, k=min(5, len(images)))
    gallery: dict[int, int] = {}
    records = []
    for q, text_index in enumerate(queries.tolist()):
        target = int(text_to_image[text_index])
        ids = [gallery.setdefault(int(i), len(gallery)) for i in [target, *retrieved[q].tolist()]]
        records.append(
            {
                "query": source[artifacts["text_records"][text_index]]["text"],
                "target": ids[0],
                "retrieved": ids[1:],
                "scores": [round(float(s), 4) for s in scores[q]],
            }
        )
    (out / "examples.json").write_text(json.dumps(records, indent=1))
    dataset = ContrastiveDataset(source, {"image": ImageTransform(image_size)})
    thumbs = []
    for image in sorted(gallery, key=gallery.get):
        item = dataset[artifacts["image_records"][image]]
        thumbs.append(
            _thumbnail(item["image"])
            if isinstance(item, dict)
            else np.zeros((image_size, image_size, 3), np.uint8)
        )
    if thumbs:
        np.save(out / "thumbnails.npy", np.stack(thumbs))
