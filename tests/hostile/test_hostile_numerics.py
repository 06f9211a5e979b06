"""NaN and inf in the inputs of every registered loss: one ``InputError`` naming the argument, never
a NaN loss or a traceback from deep inside torch. The table of example calls must cover the whole
registry, so a newly registered loss cannot skip this sweep."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastkit as ck
from contrastkit import InputError
from contrastkit.geometry import PoincareBall
from contrastkit.losses import LOSSES

B, D = 6, 4


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _labels() -> torch.Tensor:
    return torch.tensor([0, 0, 1, 1, 2, 2])


def _maps(seed: int) -> torch.Tensor:
    return torch.randn(2, D, 3, 3, generator=torch.Generator().manual_seed(seed))


# name -> (the call, {argument name: the example value}); every float tensor argument is poisoned
EXAMPLES = {
    "info_nce": (lambda a: ck.info_nce(a["q"], a["k"], 10.0), {"q": _unit(B, D), "k": _unit(B, D, seed=1)}),
    "clip": (lambda a: ck.clip_loss(a["x"], a["y"], 10.0), {"x": _unit(B, D), "y": _unit(B, D, seed=1)}),
    "siglip": (
        lambda a: ck.siglip_loss(a["x"], a["y"], 10.0, -10.0),
        {"x": _unit(B, D), "y": _unit(B, D, seed=1)},
    ),
    "nt_xent": (lambda a: ck.nt_xent(a["z1"], a["z2"]), {"z1": _unit(B, D), "z2": _unit(B, D, seed=1)}),
    "dcl": (lambda a: ck.dcl(a["z1"], a["z2"]), {"z1": _unit(B, D), "z2": _unit(B, D, seed=1)}),
    "supcon": (lambda a: ck.supcon(a["z"], _labels()), {"z": _unit(B, D)}),
    "hard_negative_info_nce": (
        lambda a: ck.hard_negative_info_nce(a["q"], a["k"], 2.0),
        {"q": _unit(B, D), "k": _unit(B, D, seed=1)},
    ),
    "mnrl": (
        lambda a: ck.mnrl(a["anchors"], a["positives"]),
        {"anchors": _unit(B, D), "positives": _unit(B, D, seed=1)},
    ),
    "margin_mse": (
        lambda a: ck.margin_mse(a["s_pos"], a["s_neg"], a["t_pos"], a["t_neg"]),
        {
            n: torch.randn(B, generator=torch.Generator().manual_seed(i))
            for i, n in enumerate(("s_pos", "s_neg", "t_pos", "t_neg"))
        },
    ),
    "rank_n_contrast": (
        lambda a: ck.rank_n_contrast(a["z"], a["y"]),
        {"z": _unit(B, D), "y": torch.arange(B, dtype=torch.float32)},
    ),
    "cosine_alignment": (
        lambda a: ck.cosine_alignment(a["x"], a["y"]),
        {"x": _unit(B, D), "y": _unit(B, D, seed=1)},
    ),
    "sigrot": (
        lambda a: ck.sigrot_loss(a["x"], a["y"], a["teacher_image"], a["teacher_text"], n_iters=5),
        {
            "x": _unit(B, D),
            "y": _unit(B, D, seed=1),
            "teacher_image": _unit(B, 3, seed=2),
            "teacher_text": _unit(B, 3, seed=3),
        },
    ),
    "sigrot_hybrid": (
        lambda a: ck.sigrot_hybrid_loss(
            a["x"], a["y"], 10.0, a["teacher_image"], a["teacher_text"], n_iters=5
        ),
        {
            "x": _unit(B, D),
            "y": _unit(B, D, seed=1),
            "teacher_image": _unit(B, 3, seed=2),
            "teacher_text": _unit(B, 3, seed=3),
        },
    ),
    "cross_modal_supcon": (
        lambda a: ck.cross_modal_supcon(a["a"], a["b"], _labels()),
        {"a": _unit(B, D), "b": _unit(B, D, seed=1)},
    ),
    "regression_clip": (
        lambda a: ck.regression_clip_loss(a["pred"], a["target"], 2.0),
        {"pred": _unit(B, D), "target": _unit(B, D, seed=1)},
    ),
    "clip_extra_negatives": (
        lambda a: ck.clip_loss_extra_negatives(a["q"], a["k"], a["k_extra"]),
        {"q": _unit(B, D), "k": _unit(B, D, seed=1), "k_extra": _unit(3, D, seed=2)},
    ),
    "anchor_hinge": (
        lambda a: ck.anchor_hinge(
            a["anchor"], a["hard_negative"], a["batch"], torch.ones(B, dtype=torch.bool)
        ),
        {"anchor": _unit(B, D), "hard_negative": _unit(B, D, seed=1), "batch": _unit(B, D, seed=2)},
    ),
    "multi_negative_info_nce": (
        lambda a: ck.multi_negative_info_nce(a["a"], a["p"], a["negatives"]),
        {"a": _unit(B, D), "p": _unit(B, D, seed=1), "negatives": _unit(B, 3, D, seed=2)},
    ),
    "hyperbolic_info_nce": (
        lambda a: ck.hyperbolic_info_nce(a["u"], a["w"], PoincareBall()),
        {"u": 0.5 * _unit(B, D), "w": 0.5 * _unit(B, D, seed=1)},
    ),
    "decoupled_hyperbolic_supcon": (
        lambda a: ck.decoupled_hyperbolic_supcon(a["x_ball"], _labels(), PoincareBall()),
        {"x_ball": 0.5 * _unit(B, D)},
    ),
    "group_rank_n_contrast": (
        lambda a: ck.group_rank_n_contrast(
            a["feat_x"],
            a["feat_y"],
            torch.tensor([0, 0, 1, 1, 2, 2]),
            torch.tensor([0, 1, 2, 0, 1, 2]),
            a["group_dist"],
        ),
        {"feat_x": _unit(B, D), "feat_y": _unit(B, D, seed=1), "group_dist": 1.0 - torch.eye(3)},
    ),
    "token_info_nce": (
        lambda a: ck.token_info_nce(a["a_tokens"], a["b_tokens"], 10.0),
        {"a_tokens": _unit(2, 3, D), "b_tokens": _unit(2, 3, D, seed=1)},
    ),
    "multi_positive_info_nce": (
        lambda a: ck.multi_positive_info_nce(a["anchor"], a["candidates"], 10.0),
        {"anchor": _unit(B, D), "candidates": _unit(B, 3, D, seed=1)},
    ),
    "pixel_supcon": (
        lambda a: ck.pixel_supcon(a["features"], torch.tensor([[[0, 0, 1], [1, 2, 2], [0, 1, 2]]] * 2)),
        {"features": _maps(0)},
    ),
    "prototype_info_nce": (
        lambda a: ck.prototype_info_nce(
            a["feat_s"],
            torch.tensor([[[0, 0, 1], [1, 2, 2], [0, 1, 2]]] * 2),
            a["feat_t"],
            torch.tensor([[[0, 1, 1], [2, 2, 0], [0, 1, 2]]] * 2),
            3,
        ),
        {"feat_s": _maps(0), "feat_t": _maps(1)},
    ),
    "dense_info_nce": (lambda a: ck.dense_info_nce(a["f1"], a["f2"]), {"f1": _maps(0), "f2": _maps(1)}),
    "icl": (lambda a: ck.icl_loss(a["z"], a["z_prime"]), {"z": _unit(B, D), "z_prime": _unit(B, D, seed=1)}),
    "tracklet_supcon": (lambda a: ck.tracklet_supcon(a["z"], _labels()), {"z": _unit(B, D)}),
    "cross_domain_supcon": (
        lambda a: ck.cross_domain_supcon(
            a["z"], _labels() % 2, torch.arange(B), torch.tensor([0, 1, 2, 0, 1, 2])
        ),
        {"z": _unit(B, D)},
    ),
    "degradation_supcon": (
        lambda a: ck.degradation_supcon([a["z_layers"]], _labels()),
        {"z_layers": _unit(B, D)},
    ),
}


def test_the_sweep_covers_every_registered_loss():
    assert set(EXAMPLES) == set(LOSSES)


CASES = [(name, arg) for name, (_, args) in sorted(EXAMPLES.items()) for arg in args]


@pytest.mark.parametrize(("name", "arg"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_non_finite_input_is_named(name, arg, bad):
    call, args = EXAMPLES[name]
    assert torch.isfinite(call(args)).all()  # the example itself is valid
    poisoned = dict(args)
    value = args[arg].clone()
    value.view(-1)[1] = bad
    poisoned[arg] = value
    with pytest.raises(InputError, match=f"'{arg}(\\[\\d+\\])?'.*(NaN|inf)"):
        call(poisoned)
