"""Towers (image, text, series, pretrained adapters), projection heads and ContrastiveModel.

A tower is an nn.Module with ``output_dim`` whose forward maps its modality's batch to
(B, output_dim) features; ContrastiveModel adds one projection head per modality, the clamped
logit scale and the optional logit bias. ``build_tower`` / ``build_model`` build them from config
dicts.
"""

from contrastkit.models.adapters import HFTextTower, HFTokenizer, TimmImageTower
from contrastkit.models.aligner import MultiModalProjectionAligner
from contrastkit.models.builders import TOWERS, build_model, build_tower
from contrastkit.models.contrastive import ContrastiveModel
from contrastkit.models.fusion import FusionOutput, GatedFusionHead, gated_fusion_loss
from contrastkit.models.heads import ProjectionHead
from contrastkit.models.image import ImageCNN, ImageViT
from contrastkit.models.positional import (
    stretch_positional_embedding,
    stretch_text_positions,
    stretched_length,
)
from contrastkit.models.reversal import GradientReversal, grad_reverse, reversal_lambda
from contrastkit.models.series import SeriesCNN, SeriesPatchTransformer
from contrastkit.models.text import TextTransformer

__all__ = [
    "ContrastiveModel",
    "FusionOutput",
    "GatedFusionHead",
    "GradientReversal",
    "HFTextTower",
    "HFTokenizer",
    "ImageCNN",
    "ImageViT",
    "MultiModalProjectionAligner",
    "ProjectionHead",
    "SeriesCNN",
    "SeriesPatchTransformer",
    "TOWERS",
    "TextTransformer",
    "TimmImageTower",
    "build_model",
    "build_tower",
    "gated_fusion_loss",
    "grad_reverse",
    "reversal_lambda",
    "stretch_positional_embedding",
    "stretch_text_positions",
    "stretched_length",
]
