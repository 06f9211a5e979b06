"""Training: the config, the Trainer, checkpoints and GradCache.

Example:
    >>> from contrastkit.train import load_config, train
    >>> config = load_config("configs/shapes-clip.yaml", ["train.steps=100"])
    >>> metrics = train(config, "runs/a")  # doctest: +SKIP
"""

from contrastkit.train.auxiliary import AuxiliaryLosses, AuxLoss
from contrastkit.train.checkpoint import CheckpointError, load_checkpoint, restore, save_checkpoint
from contrastkit.train.config import Config, ConfigError, load_config
from contrastkit.train.gradcache import RandomState, gradcache_step, split_batch
from contrastkit.train.mean_teacher import MeanTeacher, pseudo_labels
from contrastkit.train.trainer import Trainer, TrainingError, train
from contrastkit.train.twostep import TwoStepConditionalStep, TwoStepStats

__all__ = [
    "AuxLoss",
    "AuxiliaryLosses",
    "CheckpointError",
    "Config",
    "ConfigError",
    "MeanTeacher",
    "RandomState",
    "Trainer",
    "TrainingError",
    "TwoStepConditionalStep",
    "TwoStepStats",
    "gradcache_step",
    "load_checkpoint",
    "load_config",
    "pseudo_labels",
    "restore",
    "save_checkpoint",
    "split_batch",
    "train",
]
