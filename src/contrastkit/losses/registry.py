"""Config names -> loss functions, so that a training config can say ``loss: clip``."""

from __future__ import annotations

from collections.abc import Callable

from contrastkit.errors import InputError
from contrastkit.losses.alignment import cosine_alignment
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.crossmodal import cross_modal_supcon
from contrastkit.losses.decoys import anchor_hinge, clip_loss_extra_negatives
from contrastkit.losses.degradation import degradation_supcon
from contrastkit.losses.dense import dense_info_nce
from contrastkit.losses.domains import cross_domain_supcon
from contrastkit.losses.hyperbolic import decoupled_hyperbolic_supcon, hyperbolic_info_nce
from contrastkit.losses.icl import icl_loss
from contrastkit.losses.infonce import hard_negative_info_nce, info_nce
from contrastkit.losses.multineg import multi_negative_info_nce
from contrastkit.losses.pixel import pixel_supcon, prototype_info_nce
from contrastkit.losses.ranking import group_rank_n_contrast, rank_n_contrast
from contrastkit.losses.regression import regression_clip_loss
from contrastkit.losses.retrieval import margin_mse, mnrl
from contrastkit.losses.selfsup import dcl, nt_xent
from contrastkit.losses.sigmoid import siglip_loss
from contrastkit.losses.supervised import supcon
from contrastkit.losses.tokens import multi_positive_info_nce, token_info_nce
from contrastkit.losses.tracklets import tracklet_supcon
from contrastkit.losses.transport import sigrot_hybrid_loss, sigrot_loss

LOSSES: dict[str, Callable[..., object]] = {
    "info_nce": info_nce,
    "clip": clip_loss,
    "siglip": siglip_loss,
    "nt_xent": nt_xent,
    "dcl": dcl,
    "supcon": supcon,
    "hard_negative_info_nce": hard_negative_info_nce,
    "mnrl": mnrl,
    "margin_mse": margin_mse,
    "rank_n_contrast": rank_n_contrast,
    "cosine_alignment": cosine_alignment,
    "sigrot": sigrot_loss,
    "sigrot_hybrid": sigrot_hybrid_loss,
    "cross_modal_supcon": cross_modal_supcon,
    "regression_clip": regression_clip_loss,
    "clip_extra_negatives": clip_loss_extra_negatives,
    "anchor_hinge": anchor_hinge,
    "multi_negative_info_nce": multi_negative_info_nce,
    "hyperbolic_info_nce": hyperbolic_info_nce,
    "decoupled_hyperbolic_supcon": decoupled_hyperbolic_supcon,
    "group_rank_n_contrast": group_rank_n_contrast,
    "token_info_nce": token_info_nce,
    "multi_positive_info_nce": multi_positive_info_nce,
    "pixel_supcon": pixel_supcon,
    "prototype_info_nce": prototype_info_nce,
    "dense_info_nce": dense_info_nce,
    "icl": icl_loss,
    "tracklet_supcon": tracklet_supcon,
    "cross_domain_supcon": cross_domain_supcon,
    "degradation_supcon": degradation_supcon,
}


def get_loss(name: str) -> Callable[..., object]:
    """The loss function registered under ``name``; an unknown name lists the known ones."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(LOSSES))
        raise InputError(f"get_loss: unknown loss {name!r}; known losses: {known}.") from None
