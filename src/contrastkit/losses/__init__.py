"""Contrastive losses: one module per family, a function each, modules where state is held.

Embeddings are used as given (normalise them first) except where a loss is defined on cosine
similarity (nt_xent, dcl, mnrl, cosine_alignment). A ``scale`` is multiplicative
(logits = scale * x y^T); a ``temperature`` divides.
"""

from contrastkit.losses.alignment import cosine_alignment
from contrastkit.losses.anomaly import AnomalyWindowLoss, anomaly_window_info_nce
from contrastkit.losses.clip import CLIPLoss, clip_loss
from contrastkit.losses.crossmodal import (
    SemiPushPullTest,
    cross_modal_supcon,
    semi_push_pull_condition,
    semi_push_pull_test,
)
from contrastkit.losses.decoys import anchor_hinge, clip_loss_extra_negatives
from contrastkit.losses.degradation import degradation_supcon
from contrastkit.losses.dense import WeightedMultiLevelContrast, channel_dropout, dense_info_nce
from contrastkit.losses.domains import crcc_loss, cross_domain_supcon
from contrastkit.losses.grad_split import info_nce_grad_split
from contrastkit.losses.groupviews import group_view_nt_xent, mixed_recommendation_loss, sample_group_views
from contrastkit.losses.hyperbolic import decoupled_hyperbolic_supcon, hyperbolic_info_nce
from contrastkit.losses.icl import icl_loss
from contrastkit.losses.infonce import hard_negative_info_nce, info_nce
from contrastkit.losses.multimodal import multimodal_info_nce
from contrastkit.losses.multineg import multi_negative_info_nce, split_embedding_similarity
from contrastkit.losses.pixel import PixelMemory, pixel_supcon, prototype_info_nce, sample_pixels_per_class
from contrastkit.losses.ranking import group_rank_n_contrast, rank_n_contrast, sample_per_group
from contrastkit.losses.registry import LOSSES, get_loss
from contrastkit.losses.regression import regression_clip_loss
from contrastkit.losses.retrieval import margin_mse, mnrl
from contrastkit.losses.scale import LogitScale, mark_no_weight_decay
from contrastkit.losses.selfsup import dcl, nt_xent
from contrastkit.losses.sigmoid import SigLIPLoss, siglip_loss
from contrastkit.losses.supervised import supcon
from contrastkit.losses.tokens import multi_positive_info_nce, token_info_nce
from contrastkit.losses.tracklets import tracklet_supcon
from contrastkit.losses.transport import generalized_kl, sigrot_hybrid_loss, sigrot_loss

__all__ = [
    "AnomalyWindowLoss",
    "CLIPLoss",
    "LOSSES",
    "LogitScale",
    "PixelMemory",
    "SemiPushPullTest",
    "SigLIPLoss",
    "WeightedMultiLevelContrast",
    "anchor_hinge",
    "anomaly_window_info_nce",
    "channel_dropout",
    "clip_loss",
    "clip_loss_extra_negatives",
    "cosine_alignment",
    "crcc_loss",
    "cross_domain_supcon",
    "cross_modal_supcon",
    "dcl",
    "decoupled_hyperbolic_supcon",
    "degradation_supcon",
    "dense_info_nce",
    "generalized_kl",
    "get_loss",
    "group_rank_n_contrast",
    "group_view_nt_xent",
    "hard_negative_info_nce",
    "hyperbolic_info_nce",
    "icl_loss",
    "info_nce",
    "info_nce_grad_split",
    "margin_mse",
    "mark_no_weight_decay",
    "mixed_recommendation_loss",
    "mnrl",
    "multi_negative_info_nce",
    "multi_positive_info_nce",
    "multimodal_info_nce",
    "nt_xent",
    "pixel_supcon",
    "prototype_info_nce",
    "rank_n_contrast",
    "regression_clip_loss",
    "sample_group_views",
    "sample_per_group",
    "sample_pixels_per_class",
    "semi_push_pull_condition",
    "semi_push_pull_test",
    "siglip_loss",
    "sigrot_hybrid_loss",
    "sigrot_loss",
    "split_embedding_similarity",
    "supcon",
    "token_info_nce",
    "tracklet_supcon",
]
