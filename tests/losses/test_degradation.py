"""degradation_supcon against a float64 loop reference of METHODS 3.23 (multi-layer SupCon)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_matches_reference, loop_dot, loop_lse, loop_reduce, unit_rows
from contrastkit.errors import InputError, NoPositivePairsError
from contrastkit.losses.degradation import degradation_supcon

COMP = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
IMAGE = torch.tensor([0, 1, 0, 1, 2, 2, 0, 3])  # rows 0 and 6: image 0 twice under composition 0


def ref_layer_anchors(z: torch.Tensor, comp: torch.Tensor, image: torch.Tensor | None, tau: float):
    """Per-anchor SupCon L_out of one layer, written from the definition with Python loops.

    P(a): other rows of a's composition from another image; ignored: rows of a's composition
    and a's image (a itself included); A(a): every row not ignored. None without a positive or
    a negative.
    """
    n = z.shape[0]
    out = []
    for a in range(n):
        same_image = [image is not None and bool(image[j] == image[a]) for j in range(n)]
        cands, poss, n_neg = [], [], 0
        for j in range(n):
            same_comp = bool(comp[j] == comp[a])
            if j == a or (same_comp and same_image[j]):
                continue
            logit = loop_dot(z[a], z[j]) / tau
            cands.append(logit)
            if same_comp:
                poss.append(logit)
            else:
                n_neg += 1
        if not poss or n_neg == 0:
            out.append(None)
            continue
        lse = loop_lse(cands)
        out.append(-sum(p - lse for p in poss) / len(poss))
    return out


def ref_degradation(layers, comp, tau=0.1, weights=None, image=None, reduction="mean"):
    weights = [w / sum(weights) for w in weights] if weights else [1.0 / len(layers)] * len(layers)
    return sum(
        w * loop_reduce(ref_layer_anchors(z, comp, image, tau), reduction)
        for w, z in zip(weights, layers, strict=True)
    )


def _layers(seed: int = 0, dims=(4, 6, 3), dtype=torch.float64):
    return [unit_rows(8, d, seed=seed + i, dtype=dtype) for i, d in enumerate(dims)]


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_loop_reference_uniform_weights(tau: float) -> None:
    layers = _layers()
    assert_matches_reference(
        lambda *z: degradation_supcon(list(z), COMP, tau),
        lambda *z: ref_degradation(list(z), COMP, tau),
        *layers,
    )


def test_matches_loop_reference_with_image_ids_and_weights() -> None:
    layers = _layers(seed=3)
    weights = [0.2, 1.5, 0.0]
    assert_matches_reference(
        lambda *z: degradation_supcon(list(z), COMP, 0.2, weights, image_id=IMAGE),
        lambda *z: ref_degradation(list(z), COMP, 0.2, weights, image=IMAGE),
        *layers,
    )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_match_loop_reference(reduction: str) -> None:
    layers = _layers(seed=5, dims=(5, 5))
    got = degradation_supcon(layers, COMP, 0.1, image_id=IMAGE, reduction=reduction)
    want = ref_degradation(layers, COMP, 0.1, image=IMAGE, reduction=reduction)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-6, equal_nan=True)


def test_same_image_same_composition_is_ignored_and_other_composition_is_negative() -> None:
    # Row 0 and row 6 are image 0 under composition 0; with image ids row 6 is not row 0's
    # positive (only row 1 is), and row 2 (image 0 under composition 1) is in its denominator.
    layers = _layers(seed=7, dims=(4,))
    with_ids = degradation_supcon(layers, COMP, 0.1, image_id=IMAGE, reduction="none")
    without = degradation_supcon(layers, COMP, 0.1, reduction="none")
    z = layers[0].detach()
    logits = z @ z.T / 0.1
    lse = torch.logsumexp(logits[0, [1, 2, 3, 4, 5, 7]], 0)
    torch.testing.assert_close(with_ids[0].detach(), lse - logits[0, 1], atol=1e-12, rtol=0)
    assert not torch.isclose(with_ids[0], without[0])


def test_one_layer_is_supcon_and_weights_are_normalised() -> None:
    from contrastkit.losses.supervised import supcon

    layers = _layers(seed=9, dims=(4, 4))
    one = degradation_supcon(layers[:1], COMP, 0.1)
    torch.testing.assert_close(one, supcon(layers[0], COMP, 0.1))
    uniform = degradation_supcon(layers, COMP, 0.1)
    torch.testing.assert_close(degradation_supcon(layers, COMP, 0.1, [3.0, 3.0]), uniform)
    first_only = degradation_supcon(layers, COMP, 0.1, [2.0, 0.0])
    torch.testing.assert_close(first_only, supcon(layers[0], COMP, 0.1))


def test_gradcheck() -> None:
    layers = [unit_rows(6, 3, seed=s) for s in (11, 12)]
    comp, image = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    assert torch.autograd.gradcheck(
        lambda a, b: degradation_supcon([a, b], comp, 0.3, [0.7, 0.3], image_id=image), tuple(layers)
    )


def test_float32_agrees_with_float64_and_bf16_is_finite() -> None:
    layers = _layers(seed=13)
    want = degradation_supcon(layers, COMP, 0.1, image_id=IMAGE)
    got = degradation_supcon([z.detach().float() for z in layers], COMP, 0.1, image_id=IMAGE)
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=0)
    half = [z.detach().bfloat16().requires_grad_() for z in layers]
    loss = degradation_supcon(half, COMP, 0.1, image_id=IMAGE)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(z.grad.float()).all() for z in half)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument() -> None:
    layers = _layers(seed=17)
    with pytest.raises(InputError, match="z_layers.*list/tuple"):
        degradation_supcon(layers[0], COMP)
    with pytest.raises(InputError, match="z_layers.*list/tuple"):
        degradation_supcon([], COMP)
    with pytest.raises(InputError, match=r"z_layers\[1\].*8 rows"):
        degradation_supcon([layers[0], layers[1][:5]], COMP)
    with pytest.raises(InputError, match=r"z_layers\[0\].*shape \(N, D_l\)"):
        degradation_supcon([layers[0][None]], COMP)
    bad = layers[2].detach().clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputError, match=r"z_layers\[2\].*NaN"):
        degradation_supcon([layers[0], layers[1], bad], COMP)
    with pytest.raises(InputError, match="empty"):
        degradation_supcon([layers[0][:0]], COMP[:0])
    with pytest.raises(InputError, match="composition_id"):
        degradation_supcon(layers, COMP[:7])
    with pytest.raises(InputError, match="image_id"):
        degradation_supcon(layers, COMP, image_id=IMAGE.float())
    with pytest.raises(InputError, match="temperature"):
        degradation_supcon(layers, COMP, temperature=0.0)
    with pytest.raises(InputError, match="degradation_supcon: argument 'reduction'"):
        degradation_supcon(layers, COMP, reduction="max")


def test_bad_layer_weights() -> None:
    layers = _layers(seed=19)
    with pytest.raises(InputError, match="one weight per layer"):
        degradation_supcon(layers, COMP, layer_weights=[0.5, 0.5])
    with pytest.raises(InputError, match=r"layer_weights\[1\].*>= 0"):
        degradation_supcon(layers, COMP, layer_weights=[0.5, -0.1, 0.6])
    with pytest.raises(InputError, match=r"layer_weights\[0\]"):
        degradation_supcon(layers, COMP, layer_weights=[float("nan"), 0.1, 0.6])
    with pytest.raises(InputError, match="not be all 0"):
        degradation_supcon(layers, COMP, layer_weights=[0.0, 0.0, 0.0])


def test_no_positive_raises() -> None:
    layers = _layers(seed=23, dims=(4,))
    with pytest.raises(NoPositivePairsError, match="degradation_supcon"):
        degradation_supcon(layers, torch.arange(8))  # every composition on one row
    with pytest.raises(NoPositivePairsError, match="degradation_supcon"):
        degradation_supcon(layers, COMP, image_id=torch.zeros(8, dtype=torch.long))  # one image
    with pytest.raises(NoPositivePairsError, match="degradation_supcon"):
        degradation_supcon(layers, torch.zeros(8, dtype=torch.long))  # one composition: no negative
