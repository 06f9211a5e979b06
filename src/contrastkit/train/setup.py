"""Setting a run up: the device, the seeds, the learning-rate schedule, and the model with its
tokenizer."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.data import Source
from contrastkit.distributed import is_active
from contrastkit.models import ContrastiveModel, build_model
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.pipeline import build_tokenizer


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, mps or cpu, whichever is available; other names are checked. Under
    torchrun, ``cuda`` means this worker's GPU (``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} but no CUDA device is available; use cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' but MPS is not available; use cpu or auto.")
    if name.startswith("cuda") and is_active():
        if name != "cuda":
            raise ConfigError(
                f"train.device: {name!r} under torchrun would put every worker on one GPU; write cuda "
                f"(or auto): each worker then uses cuda:$LOCAL_RANK."
            )
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up to ``optim.lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    optim, total = config.optim, config.train.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
    floor = optim.min_lr_ratio * optim.lr
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_run_model(
    config: Config, source: Source | None, tokenizer_dir: Path | None
) -> tuple[ContrastiveModel, Any]:
    """The model of a config and its text tokenizer (None without a text tower).

    ``data.tokenizer: model`` takes the tokenizer the text tower carries (HF adapter); ``bpe``
    loads ``tokenizer_dir/tokenizer.json`` or trains one on ``source``'s captions and saves it there.
    """
    towers = config.model["towers"]
    tokenizer, sizes = None, {}
    if "text" in towers and config.data.tokenizer != "model":
        tokenizer = build_tokenizer(config, source, tokenizer_dir)
        sizes = {"vocab_sizes": {"text": tokenizer.vocab_size}, "max_lengths": {"text": tokenizer.max_length}}
    try:
        model = build_model(config.model, **sizes)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model: {err}") from None
    if "text" in towers and config.data.tokenizer == "model":
        tokenizer = getattr(model.towers["text"], "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(
                "data.tokenizer: 'model' needs a text tower that carries a tokenizer (type: hf)."
            )
    return model, tokenizer
