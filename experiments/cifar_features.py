"""Frozen CIFAR-10 image embeddings from a contrastkit model, trained once and cached.

    from cifar_features import cifar10_features   # experiments/ is on sys.path for a script
    f = cifar10_features()          # f.train_x (10000, 128), f.test_x (10000, 128), labels, classes

Several experiments need real image embeddings and there is no pretrained image model on this
machine, so they share one: the SupCon CNN of configs/cifar10-supcon.yaml (two augmented views,
class-balanced batches of 10 x 16), trained with ``contrastkit``'s Trainer for ``STEPS`` steps on
the 10,000 CIFAR-10 train images of ../shared/data/cifar10, then frozen. Its L2-normalised 128-d
embeddings of all train and test images are cached in runs/cifar_features/ (the first call trains,
about 3 minutes on two idle cores, 10 on busy ones; later calls load the cache).

``quick=True`` trains the same recipe for a few steps on the generated ``shapes`` data instead (no
shared data needed, seconds), for the experiments' smoke tests.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from contrastkit.data import get_source
from contrastkit.train import Trainer
from contrastkit.train.config import config_from_dict
from contrastkit.train.evaluate import Embedder

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cifar10"
CACHE = ROOT / "runs" / "cifar_features"
STEPS = 400


@dataclass(frozen=True)
class ImageFeatures:
    """Frozen embeddings of one data set's train and test images (float32, unit rows)."""

    train_x: torch.Tensor  # (N_train, D)
    train_y: torch.Tensor  # (N_train,) int64
    test_x: torch.Tensor  # (N_test, D)
    test_y: torch.Tensor  # (N_test,) int64
    classes: list[str]
    source: str  # one line: what model, trained on what


def _config(quick: bool) -> dict:
    if quick:
        data = {
            "train": {"name": "shapes", "split": "train", "n": 400},
            "eval": None,
            "classes_per_batch": 4,
            "samples_per_class": 8,
        }
        steps = 5
    else:
        root = str(DATA)
        data = {
            "train": {"name": "cifar10", "split": "train", "root": root},
            "eval": None,
            "classes_per_batch": 10,
            "samples_per_class": 16,
        }
        steps = STEPS
    per_batch = data["classes_per_batch"] * data["samples_per_class"]
    return {
        "seed": 0,
        "data": {**data, "image_size": 32, "augment": True, "views": 2, "sampler": "class_balanced"},
        "model": {
            "towers": {"image": {"type": "cnn", "width": 32, "depth": 3}},
            "embed_dim": 128,
            "projection": "mlp",
        },
        "loss": {"name": "supcon", "options": {"temperature": 0.1}},
        "optim": {"lr": 2.0e-3, "warmup_steps": min(50, steps)},
        "train": {
            "steps": steps,
            "batch_size": per_batch,
            "log_every": max(1, steps // 10),
            "checkpoint_every": steps,
            "progress": False,
        },
    }


def _train_and_embed(quick: bool) -> ImageFeatures:
    config = config_from_dict(_config(quick))
    with tempfile.TemporaryDirectory(prefix="cifar-features-") as run_dir:  # checkpoints not kept
        trainer = Trainer(config, run_dir)
        trainer.fit()
    model = trainer.model.eval()
    embed = Embedder(model, None, image_size=32, batch_size=500)
    splits = {}
    for split in ("train", "test"):
        if quick:
            source = get_source("shapes", split, n=400 if split == "train" else 200)
        else:
            source = get_source("cifar10", split, root=DATA)
        x, kept = embed(source, "image", range(len(source)))
        labels = source.labels()
        splits[split] = (x, labels[torch.tensor(kept)])
    what = "shapes (generated)" if quick else "CIFAR-10 train (10,000 images)"
    return ImageFeatures(
        *splits["train"],
        *splits["test"],
        classes=list(source.classes),
        source=f"a contrastkit SupCon CNN (width 32, depth 3, 128-d), {config.train.steps} steps on {what}",
    )


def cifar10_features(quick: bool = False) -> ImageFeatures:
    """The cached frozen embeddings (training the model on the first call).

    Raises:
        FileNotFoundError: the full mode needs ../shared/data/cifar10 (or $CONTRASTKIT_SHARED_DATA).
    """
    if not quick and not (DATA / "classes.json").is_file():
        raise FileNotFoundError(
            f"CIFAR-10 shards not found in {DATA}; set CONTRASTKIT_SHARED_DATA to the folder holding "
            f"cifar10/, or run with --quick."
        )
    path = CACHE / ("quick.pt" if quick else f"cifar10-supcon-{STEPS}.pt")
    if path.is_file() and not quick:
        fields = torch.load(path, weights_only=True)
        return ImageFeatures(**fields)
    features = _train_and_embed(quick)
    if not quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(features.__dict__, tmp)
        os.replace(tmp, path)
    return features
