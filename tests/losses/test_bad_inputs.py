"""Every bad input raises one clear InputError that names the argument, for every loss."""

from __future__ import annotations

import re

import pytest
import torch

import contrastkit as ck
from contrastkit import InputError, NoPositivePairsError

B, D = 4, 3


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# name -> (call with two (B, D)-like tensors, argument names of those tensors)
PAIR_LOSSES = {
    "info_nce": (lambda a, b: ck.info_nce(a, b, 10.0), ("q", "k")),
    "clip_loss": (lambda a, b: ck.clip_loss(a, b, 10.0), ("x", "y")),
    "siglip_loss": (lambda a, b: ck.siglip_loss(a, b, 10.0, -10.0), ("x", "y")),
    "nt_xent": (lambda a, b: ck.nt_xent(a, b), ("z1", "z2")),
    "dcl": (lambda a, b: ck.dcl(a, b), ("z1", "z2")),
    "hard_negative_info_nce": (lambda a, b: ck.hard_negative_info_nce(a, b, 2.0), ("q", "k")),
    "mnrl": (lambda a, b: ck.mnrl(a, b), ("anchors", "positives")),
    "cosine_alignment": (lambda a, b: ck.cosine_alignment(a, b), ("x", "y")),
}


@pytest.fixture(params=sorted(PAIR_LOSSES))
def pair_loss(request):
    return PAIR_LOSSES[request.param]


def test_mismatched_rows_name_the_second_argument(pair_loss):
    call, (_, second) = pair_loss
    if call is PAIR_LOSSES["info_nce"][0]:  # M != B keys is fine; fewer keys than queries is not
        with pytest.raises(InputError, match="keys"):
            call(_x(B, D), _x(B - 1, D))
        return
    with pytest.raises(InputError, match=f"'{second}'.*{B} rows"):
        call(_x(B, D), _x(B - 1, D))


def test_mismatched_dims(pair_loss):
    call, (_, second) = pair_loss
    with pytest.raises(InputError, match=f"'{second}'.*embedding size {D}"):
        call(_x(B, D), _x(B, D + 1))


@pytest.mark.parametrize("which", [0, 1])
def test_wrong_rank(pair_loss, which):
    call, names = pair_loss
    args = [_x(B, D), _x(B, D)]
    args[which] = _x(B, D, 2, 2)
    with pytest.raises(InputError, match=f"'{names[which]}' must have shape"):
        call(*args)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", [0, 1])
def test_non_finite(pair_loss, bad, which):
    call, names = pair_loss
    args = [_x(B, D), _x(B, D)]
    args[which][1, 2] = bad
    with pytest.raises(InputError, match=f"'{names[which]}' contains 1 NaN/inf"):
        call(*args)


def test_empty_batch(pair_loss):
    call, names = pair_loss
    with pytest.raises(InputError, match=f"'{names[0]}' is empty"):
        call(_x(0, D), _x(0, D))


def test_integer_embeddings(pair_loss):
    call, names = pair_loss
    with pytest.raises(InputError, match=f"'{names[0]}' must be a floating-point tensor"):
        call(torch.ones(B, D, dtype=torch.long), _x(B, D))


def test_not_a_tensor(pair_loss):
    call, names = pair_loss
    with pytest.raises(InputError, match=f"'{names[0]}' must be a torch.Tensor"):
        call([[1.0] * D] * B, _x(B, D))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ck.info_nce(_x(B, D), _x(B, D), -1.0), "scale"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), torch.tensor(-0.5)), "scale"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), float("nan")), "scale"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), torch.ones(2)), "scale"),
        (lambda: ck.siglip_loss(_x(B, D), _x(B, D), -2.0, 0.0), "scale"),
        (lambda: ck.siglip_loss(_x(B, D), _x(B, D), 2.0, float("inf")), "bias"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), scale=-20.0), "scale"),
        (lambda: ck.hard_negative_info_nce(_x(B, D), _x(B, D), -1.0), "scale"),
        (lambda: ck.nt_xent(_x(B, D), _x(B, D), temperature=-0.5), "temperature"),
        (lambda: ck.nt_xent(_x(B, D), _x(B, D), temperature=0.0), "temperature"),
        (lambda: ck.dcl(_x(B, D), _x(B, D), temperature=-0.1), "temperature"),
        (lambda: ck.dcl(_x(B, D), _x(B, D), weighted=True, sigma=0.0), "sigma"),
        (lambda: ck.supcon(_x(B, D), torch.zeros(B, dtype=torch.long), -0.1), "temperature"),
        (
            lambda: ck.supcon(_x(B, D), torch.zeros(B, dtype=torch.long), base_temperature=-1.0),
            "base_temperature",
        ),
        (lambda: ck.rank_n_contrast(_x(B, D), _x(B), temperature=-2.0), "temperature"),
        (lambda: ck.hard_negative_info_nce(_x(B, D), _x(B, D), 2.0, tau_plus=1.0), "tau_plus"),
        (lambda: ck.hard_negative_info_nce(_x(B, D), _x(B, D), 2.0, beta=-1.0), "beta"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), 1.0, label_smoothing=1.5), "label_smoothing"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), margin=-0.1), "margin"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), margin_strategy="percent"), "margin_strategy"),
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, reduction="avg"), "reduction"),
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, multi_positive="max"), "multi_positive"),
    ],
)
def test_bad_scalar_arguments(call, name):
    with pytest.raises(InputError, match=f"'{name}'"):
        call()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, positive_mask=torch.ones(B, B)), "positive_mask"),
        (
            lambda: ck.info_nce(
                _x(B, D), _x(B, D), 1.0, positive_mask=torch.ones(B, B + 1, dtype=torch.bool)
            ),
            "positive_mask",
        ),
        (
            lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, ignore_mask=torch.ones(B - 1, B, dtype=torch.bool)),
            "ignore_mask",
        ),
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, extra_negatives=_x(B + 1, 2, D)), "extra_negatives"),
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 1.0, extra_negatives=_x(2, D + 1)), "extra_negatives"),
        (
            lambda: ck.clip_loss(_x(B, D), _x(B, D), 1.0, sample_ids=torch.zeros(B + 1, dtype=torch.long)),
            "sample_ids",
        ),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), 1.0, sample_ids=torch.zeros(B)), "sample_ids"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), 1.0, ignore_mask=torch.eye(B)), "ignore_mask"),
        (
            lambda: ck.siglip_loss(
                _x(B, D), _x(B, D), 1.0, 0.0, sample_ids=torch.zeros(B - 1, dtype=torch.long)
            ),
            "sample_ids",
        ),
        (lambda: ck.supcon(_x(B, D), torch.zeros(B + 1, dtype=torch.long)), "labels"),
        (lambda: ck.supcon(_x(B, D), torch.zeros(B)), "labels"),
        (
            lambda: ck.supcon(_x(B, D), None, positive_mask=torch.eye(B + 1, dtype=torch.bool)),
            "positive_mask",
        ),
        (
            lambda: ck.supcon(_x(B, D), torch.zeros(B, dtype=torch.long), ignore_mask=torch.eye(B)),
            "ignore_mask",
        ),
        (lambda: ck.supcon(_x(B, 2, 2, D), torch.zeros(B, dtype=torch.long)), "z"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), _x(B + 1, 2, D)), "negatives"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), _x(B, 2, D + 1)), "negatives"),
        (lambda: ck.rank_n_contrast(_x(B, D), _x(B + 1)), "y"),
        (lambda: ck.rank_n_contrast(_x(B, D), torch.ones(B, dtype=torch.bool)), "y"),
        (lambda: ck.margin_mse(_x(B), _x(B, 2), _x(B), _x(B, 3)), "t_neg"),
        (lambda: ck.margin_mse(_x(B), _x(B + 1), _x(B), _x(B + 1)), "s_neg"),
        (lambda: ck.margin_mse(_x(B, 1), _x(B), _x(B, 1), _x(B)), "s_pos"),
        (lambda: ck.margin_mse(_x(B), _x(B), _x(B) * float("nan"), _x(B)), "t_pos"),
    ],
)
def test_bad_masks_labels_and_shapes(call, name):
    with pytest.raises(InputError, match=f"'{name}'"):
        call()


def test_no_positive_pairs_raise_instead_of_returning_zero():
    distinct = torch.arange(B)
    with pytest.raises(
        NoPositivePairsError, match="no anchor in this batch has both a positive and a negative"
    ):
        ck.supcon(_x(B, D), distinct)
    with pytest.raises(NoPositivePairsError):
        ck.info_nce(_x(B, D), _x(B, D), 1.0, positive_mask=torch.zeros(B, B, dtype=torch.bool))
    with pytest.raises(NoPositivePairsError):  # the only positives are ignored
        eye = torch.eye(B, dtype=torch.bool)
        ck.info_nce(_x(B, D), _x(B, D), 1.0, positive_mask=eye, ignore_mask=eye)


def test_supcon_needs_exactly_one_of_labels_and_mask():
    with pytest.raises(InputError, match="exactly one of 'labels'"):
        ck.supcon(_x(B, D), None)
    with pytest.raises(InputError, match="exactly one of 'labels'"):
        ck.supcon(_x(B, D), torch.zeros(B, dtype=torch.long), positive_mask=torch.eye(B, dtype=torch.bool))


def test_too_small_batches_for_negatives():
    with pytest.raises(InputError, match="at least 2"):
        ck.hard_negative_info_nce(_x(1, D), _x(1, D), 1.0)
    with pytest.raises(InputError, match="at least 2"):
        ck.rank_n_contrast(_x(1, D), _x(1))


def test_guide_must_match_negatives():
    with pytest.raises(InputError, match="guide negatives exactly when"):
        ck.mnrl(_x(B, D), _x(B, D), _x(B, 2, D), guide=(_x(B, 5), _x(B, 5), None))
    with pytest.raises(InputError, match="'guide' must be a tuple"):
        ck.mnrl(_x(B, D), _x(B, D), guide=_x(B, 5))
    with pytest.raises(InputError, match="'guide\\[1\\]'"):
        ck.mnrl(_x(B, D), _x(B, D), guide=(_x(B, 5), _x(B, 4), None))


def test_modules_name_their_bad_init():
    with pytest.raises(InputError, match="SigLIPLoss: argument 'init_scale'"):
        ck.SigLIPLoss(init_scale=200.0)
    with pytest.raises(InputError, match="SigLIPLoss: argument 'init_bias'"):
        ck.SigLIPLoss(init_bias=float("nan"))


def test_mixed_devices_are_named():
    meta = torch.empty(B, D, device="meta")
    with pytest.raises(InputError, match="one device"):
        ck.cosine_alignment(_x(B, D), meta)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ck.clip_loss(_x(1, D), _x(1, D), 1.0),
        lambda: ck.info_nce(_x(1, D), _x(1, D), 1.0),
        lambda: ck.mnrl(_x(1, D), _x(1, D)),
        lambda: ck.nt_xent(_x(1, D), _x(1, D)),
    ],
)
def test_a_single_pair_raises_instead_of_a_silent_zero(call):
    with pytest.raises(InputError, match="at least one negative"):
        call()


def test_single_query_with_extra_negatives_is_fine():
    assert ck.info_nce(_x(1, D), _x(1, D), 1.0, extra_negatives=_x(3, D)) > 0
    assert ck.mnrl(_x(1, D), _x(1, D), _x(1, 2, D)) > 0


def _meta(t: torch.Tensor) -> torch.Tensor:
    """A tensor on another device (the meta device stands in for a GPU here)."""
    return t.to("meta")


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), _meta(torch.tensor(2.0))), "scale"),
        (lambda: ck.clip_loss(_x(B, D), _x(B, D), 2.0, sample_ids=_meta(torch.arange(B))), "sample_ids"),
        (lambda: ck.siglip_loss(_x(B, D), _x(B, D), 2.0, _meta(torch.tensor(0.0))), "bias"),
        (lambda: ck.info_nce(_x(B, D), _x(B, D), 2.0, ignore_mask=_meta(torch.eye(B).bool())), "ignore_mask"),
        (lambda: ck.supcon(_x(B, D), _meta(torch.zeros(B, dtype=torch.long))), "labels"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), guide=(_meta(_x(B, 2)), _x(B, 2), None)), "guide[0]"),
        (lambda: ck.rank_n_contrast(_x(B, D), _meta(_x(B))), "y"),
        (lambda: ck.hard_negative_info_nce(_x(B, D), _x(B, D), _meta(torch.tensor(2.0))), "scale"),
    ],
)
def test_every_tensor_argument_is_device_checked(call, name):
    with pytest.raises(InputError, match=f"one device.*'{re.escape(name)}' on meta"):
        call()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ck.dcl(_x(B, D), _x(B, D), weighted="no"), "weighted"),
        (lambda: ck.dcl(_x(B, D), _x(B, D), detach_weight=1), "detach_weight"),
        (lambda: ck.hard_negative_info_nce(_x(B, D), _x(B, D), 2.0, symmetric="false"), "symmetric"),
        (lambda: ck.CLIPLoss(learn_scale="no"), "learn_scale"),
    ],
)
def test_switches_must_be_booleans(call, name):
    with pytest.raises(InputError, match=f"'{name}' must be True or False"):
        call()


def _with_zero_row(n: int = B) -> torch.Tensor:
    x = _x(n, D)
    x[2] = 0.0
    return x


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: ck.nt_xent(_x(B, D), _with_zero_row()), "z2"),
        (lambda: ck.dcl(_with_zero_row(), _x(B, D)), "z1"),
        (lambda: ck.cosine_alignment(_with_zero_row(), _x(B, D)), "x"),
        (lambda: ck.mnrl(_with_zero_row(), _x(B, D)), "anchors"),
        (lambda: ck.mnrl(_x(B, D), _x(B, D), _with_zero_row()), "negatives"),
    ],
)
def test_zero_rows_of_cosine_losses_raise(call, name):
    with pytest.raises(
        InputError, match=f"'{re.escape(name)}' has 1 all-zero row\\(s\\) \\(first: \\[2\\]\\)"
    ):
        call()


def test_numpy_scalars_are_numbers():
    np = pytest.importorskip("numpy")
    x, y = _x(B, D), _x(B, D)
    torch.testing.assert_close(ck.clip_loss(x, y, np.float32(2.0)), ck.clip_loss(x, y, 2.0))
    torch.testing.assert_close(ck.nt_xent(x, y, np.float32(0.5)), ck.nt_xent(x, y, 0.5))
    torch.testing.assert_close(
        ck.siglip_loss(x, y, np.int64(3), np.float32(-1.0)), ck.siglip_loss(x, y, 3.0, -1.0)
    )
