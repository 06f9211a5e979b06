"""The config registry: every name maps to the public loss; unknown names list the known ones."""

from __future__ import annotations

import pytest

import contrastkit
import contrastkit.losses as losses
from contrastkit import InputError
from contrastkit.losses import LOSSES, get_loss

EXPECTED = {
    "info_nce": contrastkit.info_nce,
    "clip": contrastkit.clip_loss,
    "siglip": contrastkit.siglip_loss,
    "nt_xent": contrastkit.nt_xent,
    "dcl": contrastkit.dcl,
    "supcon": contrastkit.supcon,
    "hard_negative_info_nce": contrastkit.hard_negative_info_nce,
    "mnrl": contrastkit.mnrl,
    "margin_mse": contrastkit.margin_mse,
    "rank_n_contrast": contrastkit.rank_n_contrast,
    "cosine_alignment": contrastkit.cosine_alignment,
    "sigrot": contrastkit.sigrot_loss,
    "sigrot_hybrid": contrastkit.sigrot_hybrid_loss,
    "cross_modal_supcon": contrastkit.cross_modal_supcon,
    "regression_clip": contrastkit.regression_clip_loss,
    "clip_extra_negatives": contrastkit.clip_loss_extra_negatives,
    "anchor_hinge": contrastkit.anchor_hinge,
    "multi_negative_info_nce": contrastkit.multi_negative_info_nce,
    "hyperbolic_info_nce": contrastkit.hyperbolic_info_nce,
    "decoupled_hyperbolic_supcon": contrastkit.decoupled_hyperbolic_supcon,
    "group_rank_n_contrast": contrastkit.group_rank_n_contrast,
    "token_info_nce": contrastkit.token_info_nce,
    "multi_positive_info_nce": contrastkit.multi_positive_info_nce,
    "pixel_supcon": contrastkit.pixel_supcon,
    "prototype_info_nce": contrastkit.prototype_info_nce,
    "dense_info_nce": contrastkit.dense_info_nce,
    "icl": contrastkit.icl_loss,
    "tracklet_supcon": contrastkit.tracklet_supcon,
    "cross_domain_supcon": contrastkit.cross_domain_supcon,
    "degradation_supcon": contrastkit.degradation_supcon,
}


def test_registry_names_are_exactly_the_expected_ones() -> None:
    assert set(LOSSES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_maps_to_the_public_function(name: str) -> None:
    fn = EXPECTED[name]
    assert LOSSES[name] is fn
    assert get_loss(name) is fn
    # ... and that function is exported by name from both public namespaces.
    assert getattr(contrastkit, fn.__name__) is fn
    assert getattr(losses, fn.__name__) is fn
    assert fn.__name__ in contrastkit.__all__


def test_registered_functions_are_distinct() -> None:
    assert len({id(f) for f in LOSSES.values()}) == len(LOSSES)


@pytest.mark.parametrize("name", ["infonce", "CLIP", "", "supcon ", "simclr"])
def test_unknown_name_raises_listing_known_names(name: str) -> None:
    with pytest.raises(InputError) as info:
        get_loss(name)
    message = str(info.value)
    assert repr(name) in message
    for known in LOSSES:
        assert known in message


@pytest.mark.parametrize("name", [None, 3, ["clip"]])
def test_non_string_name_raises_input_error(name: object) -> None:
    with pytest.raises(InputError, match="known losses"):
        get_loss(name)  # type: ignore[arg-type]
