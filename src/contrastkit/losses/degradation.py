"""Multi-layer SupCon on degradation compositions (self-aware detection, METHODS 3.23)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_labels,
    check_same_device,
    check_scalar,
    check_temperature,
)
from contrastkit.functional import REDUCTIONS
from contrastkit.losses.supervised import supcon


def degradation_supcon(
    z_layers: Sequence[torch.Tensor],
    composition_id: torch.Tensor,
    temperature: float = 0.1,
    layer_weights: Sequence[float] | None = None,
    image_id: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """L = sum_l w_l * SupCon(z_l, composition_id): contrast on degradation compositions.

    Every on-the-fly degradation composition (types + severities; the clean image is one of
    them) has an id. At every pooled backbone layer l, rows with the same composition are
    positives and every other composition is a negative (SupCon L_out, tau_b = tau):

        L_l(a) = -(1/|P(a)|) sum_{p in P(a)} [ l_ap - LSE_{j != a, j not ignored} l_aj ],
        l_aj = <z_l[a], z_l[j]> / tau.

    With ``image_id``, P(a) = {p : c_p = c_a, img_p != img_a}: positives are *different*
    images with the same composition; the same image under another composition stays in the
    denominator as a hard negative, and the same image under the same composition (a second
    draw of one degradation) is ignored: neither positive nor negative.

    Args:
        z_layers: L >= 1 tensors (N, D_l), one per layer (D_l may differ), used as given
            (normalise each first).
        composition_id: (N,) integer composition ids.
        temperature: tau > 0 (0.1 in the paper's setting).
        layer_weights: L finite weights >= 0, not all 0, normalised to sum 1 (as DeCon's
            ``WeightedMultiLevelContrast``); None means uniform, w_l = 1/L. The loss scale so
            does not depend on L.
        image_id: (N,) integer source-image ids, or None (every row a different image).
        reduction: "mean" / "sum" over the valid anchors (the same at every layer), or "none"
            -> (N,) with NaN where an anchor has no positive or no negative.

    Raises NoPositivePairsError if no anchor has a positive and a negative.

    Reference: "Self-aware detection via degradation manifolds", arXiv 2602.18394 (the loss
    reconstructed from the abstract); SupCon: Khosla et al., arXiv 2004.11362.
    """
    fn = "degradation_supcon"
    if isinstance(z_layers, torch.Tensor) or not isinstance(z_layers, Sequence) or not z_layers:
        raise InputError(
            f"{fn}: argument 'z_layers' must be a non-empty list/tuple of (N, D_l) tensors, one per "
            f"layer; got {type(z_layers).__name__}. Wrap a single layer as [z]."
        )
    first = check_embeddings(fn, "z_layers[0]", z_layers[0], shape="(N, D_l)")
    n = first.shape[0]
    layers = [first] + [
        check_embeddings(fn, f"z_layers[{i}]", z, shape="(N, D_l)", rows=n, like="z_layers[0]")
        for i, z in enumerate(z_layers[1:], start=1)
    ]
    temperature = check_temperature(fn, "temperature", temperature)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    composition_id = check_labels(fn, "composition_id", composition_id, n)
    if image_id is not None:
        image_id = check_labels(fn, "image_id", image_id, n)
    devices = {f"z_layers[{i}]": z for i, z in enumerate(layers)}
    check_same_device(fn, **devices, composition_id=composition_id, image_id=image_id)
    weights = _layer_weights(fn, layer_weights, len(layers))

    if image_id is None:
        masks = {"labels": composition_id}
    else:
        same_composition = composition_id[:, None] == composition_id[None, :]
        same_image = image_id[:, None] == image_id[None, :]
        masks = {
            "labels": None,
            "positive_mask": same_composition & ~same_image,
            "ignore_mask": same_composition & same_image,
        }
    try:
        per_layer = [supcon(z, temperature=temperature, reduction=reduction, **masks) for z in layers]
    except NoPositivePairsError as err:
        raise NoPositivePairsError(
            f"{fn}: no anchor has a positive (another image with the same composition) and a "
            f"negative (another composition). Put each composition on >= 2 images and >= 2 "
            f"compositions in every batch."
        ) from err
    return sum(w * loss for w, loss in zip(weights, per_layer, strict=True))


def _layer_weights(fn: str, layer_weights: Sequence[float] | None, n_layers: int) -> list[float]:
    """The per-layer weights summing to 1: uniform, or the given ones (finite, >= 0, not all 0)."""
    if layer_weights is None:
        return [1.0 / n_layers] * n_layers
    if isinstance(layer_weights, torch.Tensor):
        layer_weights = layer_weights.tolist() if layer_weights.dim() == 1 else [layer_weights]
    if not isinstance(layer_weights, Sequence) or len(layer_weights) != n_layers:
        got = len(layer_weights) if isinstance(layer_weights, Sequence) else type(layer_weights).__name__
        raise InputError(
            f"{fn}: argument 'layer_weights' must hold one weight per layer ({n_layers}); got {got}."
        )
    weights = [
        float(check_scalar(fn, f"layer_weights[{i}]", w, minimum=0.0)) for i, w in enumerate(layer_weights)
    ]
    total = sum(weights)
    if total == 0:
        raise InputError(f"{fn}: argument 'layer_weights' must not be all 0 (the loss would be 0).")
    return [w / total for w in weights]
