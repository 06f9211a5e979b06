"""contrastkit: exact, memory-efficient contrastive representation learning across modalities."""

from contrastkit.errors import ContrastkitError, InputError, NoPositivePairsError
from contrastkit.losses import (
    CLIPLoss,
    SigLIPLoss,
    clip_loss,
    cosine_alignment,
    dcl,
    generalized_kl,
    hard_negative_info_nce,
    info_nce,
    margin_mse,
    mnrl,
    multimodal_info_nce,
    nt_xent,
    rank_n_contrast,
    siglip_loss,
    sigrot_hybrid_loss,
    sigrot_loss,
    supcon,
)

__version__ = "0.1.0"

__all__ = [
    "CLIPLoss",
    "ContrastkitError",
    "InputError",
    "NoPositivePairsError",
    "SigLIPLoss",
    "__version__",
    "clip_loss",
    "cosine_alignment",
    "dcl",
    "generalized_kl",
    "hard_negative_info_nce",
    "info_nce",
    "margin_mse",
    "mnrl",
    "multimodal_info_nce",
    "nt_xent",
    "rank_n_contrast",
    "siglip_loss",
    "sigrot_hybrid_loss",
    "sigrot_loss",
    "supcon",
]
