"""Training: GradCache, and (issue 4) the config, trainer and checkpoints."""

from contrastkit.train.gradcache import RandomState, gradcache_step, split_batch

__all__ = ["RandomState", "gradcache_step", "split_batch"]
