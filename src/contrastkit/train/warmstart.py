"""``train.init_from``: start a run from another run's model weights (fresh optimizer and step).

Fine-tuning a trained (e.g. poisoned) model with another objective, such as CleanCLIP: the
weights (towers, heads, logit scale and bias) come from the checkpoint, and so does the BPE
tokenizer, whose token ids the text tower was trained on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from contrastkit.train.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.pipeline import TOKENIZER_FILE


def _checkpoint_folder(path: str) -> Path:
    try:
        return resolve_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"train.init_from: {err}") from None


def copy_init_tokenizer(config: Config, run_dir: Path) -> None:
    """Put the checkpoint's ``tokenizer.json`` into ``run_dir`` (a BPE run must share its ids)."""
    if config.train.init_from is None or config.data.tokenizer != "bpe":
        return
    source = _checkpoint_folder(config.train.init_from) / TOKENIZER_FILE
    if not source.is_file():
        raise ConfigError(
            f"train.init_from: {source.parent} holds no {TOKENIZER_FILE}, so a BPE tokenizer trained "
            f"afresh would not match the text tower's ids; use the checkpoint's run's tokenizer settings."
        )
    shutil.copyfile(source, run_dir / TOKENIZER_FILE)


def init_weights_from(model: torch.nn.Module, path: str) -> Path:
    """Load the model weights of checkpoint ``path`` into ``model``; every key and shape must match.

    Returns the checkpoint folder. Raises ``ConfigError`` naming ``train.init_from`` when the
    checkpoint is missing or corrupt, or was written for other towers or sizes.
    """
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"train.init_from: {err}") from None
    saved, own = checkpoint["model"], model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    resized = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or resized:
        saved_config = checkpoint["state"].get("config")
        model_config = saved_config.get("model") if isinstance(saved_config, dict) else None
        towers = model_config.get("towers") if isinstance(model_config, dict) else "unknown"
        raise ConfigError(
            f"train.init_from: checkpoint {checkpoint['path']} does not fit this model (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}, other shapes {resized[:3]}); it was trained "
            f"with towers {towers}. Use the same model config (and embed_dim) as that run."
        )
    model.load_state_dict(saved)
    return checkpoint["path"]
