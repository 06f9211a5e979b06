"""Severity pseudo-labels: GradCON normality scores of an autoencoder, binned into SupCon labels.

An autoencoder trained on healthy images with GradCON's gradient-alignment regulariser keeps a
running mean g_l of its decoder weight gradients (``GradientReference``). An image then scores

    s(x) = -MSE(x_hat, x) + beta (1/L) sum_l cos(grad_{W_l} L_rec(x), g_l)

(higher = more normal), and ``bin_scores`` turns the scores of an unlabeled set into K bins that
serve as ``contrastkit.losses.supcon`` labels. Label sources are combined by summing their SupCon
losses on the same embeddings, e.g. ``supcon(z, bins) + supcon(z, patient)``.

References: Kwon et al. 2020, "Backpropagated Gradient Representations for Anomaly Detection"
(GradCON, arXiv 2007.09507); Kokilepersaud et al. 2022, "Gradient-based severity labels for
biomarker classification in OCT" (ICIP 2022; METHODS 3.21, arXiv 2602.19907).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_finite,
    check_int,
    check_range,
    check_scalar,
)
from contrastkit.functional import compute_dtype

#: Parameters whose name starts with this prefix (and ends in "weight") are the default layers.
DECODER_PREFIX = "decoder."
_EPS = 1e-12


def decoder_weight_names(autoencoder: nn.Module, prefix: str = DECODER_PREFIX) -> tuple[str, ...]:
    """Names of the trainable weights (not biases, not norms' 1-D scales) under ``prefix``.

    The GradCON default: every conv / linear weight of the decoder, i.e. parameters named
    ``decoder.<...>.weight`` with at least 2 dimensions.
    """
    names = tuple(
        name
        for name, p in autoencoder.named_parameters()
        if name.startswith(prefix) and name.endswith("weight") and p.dim() >= 2 and p.requires_grad
    )
    if not names:
        raise InputError(
            f"GradCON layers: the autoencoder has no trainable weight named '{prefix}<...>.weight'; "
            f"name its decoder submodule 'decoder' or pass 'layers' (a list of parameter names)."
        )
    return names


def _resolve_layers(fn: str, autoencoder: nn.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    if not isinstance(autoencoder, nn.Module):
        raise InputError(
            f"{fn}: argument 'autoencoder' must be a torch.nn.Module; got {type(autoencoder).__name__}."
        )
    if layers is None:
        return decoder_weight_names(autoencoder)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise InputError(
            f"{fn}: argument 'layers' must be a non-empty list of parameter names; got {layers!r}."
        )
    params = dict(autoencoder.named_parameters())
    missing = [name for name in layers if name not in params]
    if missing:
        raise InputError(
            f"{fn}: argument 'layers' names {missing} which are not parameters of the autoencoder; "
            f"pick from its named_parameters() (e.g. {list(params)[:4]})."
        )
    return tuple(layers)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos of the flattened trailing dims: <a, b> / max(|a| |b|, 1e-12) (0 for a zero gradient),
    in fp32 (fp64 for fp64 inputs) also for half-precision gradients."""
    dtype = compute_dtype(a, b)
    a, b = a.flatten(start_dim=a.dim() - b.dim()).to(dtype), b.flatten().to(dtype)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm()).clamp_min(_EPS)


class GradientReference:
    """The running reference g_l of the reconstruction-loss gradients of chosen layers.

    After each training step call ``update(result.grads)`` with the (batch) gradients that
    ``gradcon_training_loss`` returned. ``momentum=None`` keeps the plain running mean over all
    updates, g = ((k-1) g + grad) / k (as GradCON's release); a float m in (0, 1] keeps an
    exponential average g = (1-m) g + m grad.

    Args:
        autoencoder: the module whose parameters ``layers`` names.
        layers: parameter names; None = every decoder weight (``decoder_weight_names``).
        momentum: None or a float in (0, 1].

    Attributes: ``layers`` (names), ``mean`` (name -> tensor shaped like the parameter, fp32 or
    fp64), ``count`` (updates so far).
    """

    def __init__(
        self, autoencoder: nn.Module, layers: Sequence[str] | None = None, momentum: float | None = None
    ) -> None:
        fn = "GradientReference"
        self.layers = _resolve_layers(fn, autoencoder, layers)
        if momentum is not None:
            momentum = check_range(fn, "momentum", momentum, 0.0, 1.0)
            if momentum == 0.0:
                raise InputError(f"{fn}: argument 'momentum' must be in (0, 1] or None; got 0.0.")
        self.momentum = momentum
        params = dict(autoencoder.named_parameters())
        # kept in fp32 (fp64 for an fp64 model): a bf16 running mean would stall after ~256 updates
        self.mean = {
            name: torch.zeros(
                params[name].shape, dtype=compute_dtype(params[name]), device=params[name].device
            )
            for name in self.layers
        }
        self.count = 0

    def update(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Fold one step's gradients (name -> tensor shaped like the parameter) into the mean."""
        fn = "GradientReference.update"
        for name in self.layers:
            if name not in grads:
                raise InputError(
                    f"{fn}: argument 'grads' lacks layer '{name}'; pass the GradconLoss.grads dict."
                )
            g = grads[name]
            if not isinstance(g, torch.Tensor) or g.shape != self.mean[name].shape:
                raise InputError(
                    f"{fn}: grads['{name}'] must be a tensor of shape {tuple(self.mean[name].shape)}; "
                    f"got {getattr(g, 'shape', type(g).__name__)}."
                )
            check_embeddings(fn, f"grads['{name}']", g, shape="like the parameter", ndims=(g.dim(),))
        self.count += 1
        rate = 1.0 / self.count if self.momentum is None else self.momentum
        for name in self.layers:
            self.mean[name].lerp_(grads[name].detach().to(self.mean[name].dtype), rate)

    @property
    def ready(self) -> bool:
        """True once at least one update came in (before that g_l is undefined)."""
        return self.count > 0


class GradconLoss(NamedTuple):
    """The result of ``gradcon_training_loss``.

    loss: L_rec + weight * alignment (L_rec alone before the reference's first update).
    reconstruction: L_rec, the batch MSE.
    alignment: -(1/L) sum_l cos(grad_{W_l} L_rec, g_l), or None before the first update.
    grads: layer name -> detached grad_{W_l} L_rec, for ``GradientReference.update``.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    alignment: torch.Tensor | None
    grads: dict[str, torch.Tensor]


def _check_reconstruction(fn: str, autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    recon = autoencoder(x)
    if not isinstance(recon, torch.Tensor) or recon.shape != x.shape:
        raise InputError(
            f"{fn}: the autoencoder must return a reconstruction shaped like 'x' {tuple(x.shape)}; "
            f"got {getattr(recon, 'shape', type(recon).__name__)}."
        )
    return recon


def _layer_grads(
    fn: str, loss: torch.Tensor, weights: list[torch.Tensor], layers: Sequence[str], *, create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """d loss / d W_l for each layer; a layer the reconstruction does not use raises (its cosine
    would be undefined)."""
    grads = torch.autograd.grad(
        loss, weights, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    unused = [name for name, g in zip(layers, grads, strict=True) if g is None]
    if unused:
        raise InputError(
            f"{fn}: layers {unused} do not take part in the reconstruction, so they have no gradient; "
            f"pass 'layers' naming weights the forward pass uses."
        )
    return grads


def gradcon_training_loss(
    autoencoder: nn.Module, x: torch.Tensor, reference: GradientReference, weight: float = 0.03
) -> GradconLoss:
    """GradCON's training objective on a batch of healthy images (ICIP 2022 form).

        L = L_rec + weight * ( -(1/L) sum_l cos(grad_{W_l} L_rec, g_l) ),  L_rec = MSE(x_hat, x)

    The layer gradients are taken with ``create_graph=True``, so the alignment term trains the
    network (a second-order term); g_l is a constant. Call ``reference.update(out.grads)`` after
    the optimiser step. Before the first update g_l is undefined and L = L_rec.

    Args:
        autoencoder: maps x to a reconstruction of the same shape.
        x: (B, ...) float batch, B >= 1 (cast to the layers' dtype).
        reference: the running ``GradientReference`` of this autoencoder.
        weight: alignment weight >= 0 (0.03 in GradCON).

    Reference: Kwon et al. 2020, arXiv 2007.09507; METHODS 3.21 (arXiv 2602.19907).
    """
    fn = "gradcon_training_loss"
    x = check_embeddings(fn, "x", x, shape="(B, ...)", ndims=range(1, 8))
    weight = float(check_scalar(fn, "weight", weight, minimum=0.0))
    if not isinstance(reference, GradientReference):
        raise InputError(
            f"{fn}: argument 'reference' must be a GradientReference; got {type(reference).__name__}."
        )
    layers = _resolve_layers(fn, autoencoder, reference.layers)
    params = dict(autoencoder.named_parameters())
    weights = [params[name] for name in layers]
    x = x.to(weights[0].dtype)
    reconstruction = F.mse_loss(_check_reconstruction(fn, autoencoder, x), x)
    if not reference.ready:
        grads = _layer_grads(fn, reconstruction, weights, layers, create_graph=False)
        detached = {n: g.detach() for n, g in zip(reference.layers, grads, strict=True)}
        return GradconLoss(reconstruction, reconstruction, None, detached)
    grads = _layer_grads(fn, reconstruction, weights, layers, create_graph=True)
    cosines = [_cosine(g, reference.mean[n]) for n, g in zip(reference.layers, grads, strict=True)]
    alignment = -torch.stack(cosines).mean()
    detached = {n: g.detach() for n, g in zip(reference.layers, grads, strict=True)}
    return GradconLoss(reconstruction + weight * alignment, reconstruction, alignment, detached)


def gradcon_scores(
    autoencoder: nn.Module,
    x: torch.Tensor,
    reference_grads: GradientReference | Mapping[str, torch.Tensor],
    beta: float = 0.12,
    layers: Sequence[str] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-sample GradCON normality scores (higher = more normal).

        s(x) = -MSE(x_hat, x) + beta (1/L) sum_l cos(grad_{W_l} L_rec(x), g_l)

    with L_rec(x) = MSE(x_hat, x) of the sample alone, its gradient taken per sample
    (``torch.func.vmap`` over ``functional_call``) with every other parameter held fixed, and
    cos(a, b) = <a, b> / max(|a| |b|, 1e-12) over the flattened weight. The module is used as
    it is; batch norm or dropout in training mode raises (call ``eval()`` first).

    Args:
        autoencoder: maps (n, ...) to a reconstruction of the same shape.
        x: (N, ...) float images, N >= 1 (cast to the layers' dtype).
        reference_grads: a ``GradientReference`` (after at least one update) or a mapping
            parameter name -> g_l (a tensor shaped like the parameter, not all zero).
        beta: weight of the gradient term (0.12 in GradCON).
        layers: the parameter names to use; None = every layer of ``reference_grads``.
        batch_size: samples per vmap call (memory ~ batch_size x the layers' size).

    Returns:
        (N,) detached scores, float32 (float64 for a float64 autoencoder).

    Reference: Kwon et al. 2020, arXiv 2007.09507; METHODS 3.21 (arXiv 2602.19907).
    """
    fn = "gradcon_scores"
    x = check_embeddings(fn, "x", x, shape="(N, ...)", ndims=range(1, 8))
    beta = float(check_scalar(fn, "beta", beta, minimum=0.0))
    batch_size = check_int(fn, "batch_size", batch_size, 1)
    reference = _reference_means(fn, reference_grads)
    layers = _resolve_layers(fn, autoencoder, list(reference) if layers is None else layers)
    params = {name: p.detach() for name, p in autoencoder.named_parameters()}
    for name in layers:
        g = reference.get(name)
        if g is None:
            raise InputError(f"{fn}: argument 'reference_grads' has no gradient for layer '{name}'.")
        if not isinstance(g, torch.Tensor) or g.shape != params[name].shape:
            raise InputError(
                f"{fn}: reference_grads['{name}'] must have the parameter's shape "
                f"{tuple(params[name].shape)}; "
                f"got {getattr(g, 'shape', type(g).__name__)}."
            )
        check_finite(fn, f"reference_grads['{name}']", g)
        if not bool(g.detach().abs().amax() > 0):
            raise InputError(
                f"{fn}: reference_grads['{name}'] is all zero (no update yet?); its cosine is undefined. "
                f"Train with gradcon_training_loss and GradientReference.update first."
            )
    _check_eval_mode(fn, autoencoder)
    x = x.detach().to(params[layers[0]].dtype)
    with torch.no_grad():
        _check_reconstruction(fn, autoencoder, x[:1])
    chosen = {name: params[name] for name in layers}
    fixed = {name: p for name, p in params.items() if name not in chosen}
    buffers = dict(autoencoder.named_buffers())
    targets = [reference[name].detach() for name in layers]

    def sample_loss(weights: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        recon = functional_call(autoencoder, (weights, fixed, buffers), (sample[None],))
        return F.mse_loss(recon, sample[None])

    per_sample = vmap(grad_and_value(sample_loss), in_dims=(None, 0))
    scores = []
    with torch.no_grad():
        for block in x.split(batch_size):
            grads, mse = per_sample(chosen, block)
            cosines = torch.stack([_cosine(grads[n], t) for n, t in zip(layers, targets, strict=True)])
            scores.append(beta * cosines.mean(0) - mse.to(cosines.dtype))
    return torch.cat(scores)


def _check_eval_mode(fn: str, autoencoder: nn.Module) -> None:
    """Per-sample gradients need a deterministic, per-sample forward: no batch norm or dropout
    in training mode (batch statistics mix the samples, dropout draws differ per call)."""
    stateful = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    active = [name for name, m in autoencoder.named_modules() if m.training and isinstance(m, stateful)]
    if active:
        raise InputError(
            f"{fn}: the autoencoder has batch norm or dropout in training mode ({active[:3]}); "
            f"call autoencoder.eval() before scoring."
        )


def _reference_means(fn: str, reference_grads: object) -> Mapping[str, torch.Tensor]:
    if isinstance(reference_grads, GradientReference):
        if not reference_grads.ready:
            raise InputError(
                f"{fn}: argument 'reference_grads' has had no update; call GradientReference.update "
                f"after each training step before scoring."
            )
        return reference_grads.mean
    if isinstance(reference_grads, Mapping) and reference_grads:
        return reference_grads
    raise InputError(
        f"{fn}: argument 'reference_grads' must be a GradientReference or a non-empty mapping "
        f"parameter name -> tensor; got {type(reference_grads).__name__}."
    )


def bin_scores(scores: torch.Tensor, n_bins: int, mode: str = "quantile") -> torch.Tensor:
    """Bin ids 0..K-1 of 1-D scores, bin 0 holding the lowest scores (the most severe).

    - ``"quantile"``: equal count. With r the rank of s_i (a stable ascending sort, so equal
      scores keep their index order), bin_i = floor(r K / N); the bins' sizes differ by at most
      1, and equal scores may straddle a bin edge. Needs K <= N.
    - ``"uniform"``: equal width over [min s, max s]: bin_i = min(floor((s_i - min) / (max - min)
      * K), K - 1) in float64; all scores equal -> bin 0. Bins may be empty.

    The ids are ``supcon`` labels; combine with other label sources by summing SupCon losses.

    Args:
        scores: (N,) finite float scores (e.g. ``gradcon_scores``), N >= 1.
        n_bins: K >= 1.
        mode: ``"quantile"`` (default; METHODS 3.21 leaves the rule open) or ``"uniform"``.

    Returns:
        (N,) int64 bin ids on the scores' device.

    Reference: METHODS 3.21 (arXiv 2602.19907).
    """
    fn = "bin_scores"
    scores = check_embeddings(fn, "scores", scores, shape="(N,)", ndims=(1,))
    n_bins = check_int(fn, "n_bins", n_bins, 1)
    mode = check_choice(fn, "mode", mode, ("quantile", "uniform"))
    n = scores.shape[0]
    values = scores.detach().double()
    if mode == "quantile":
        if n_bins > n:
            raise InputError(
                f"{fn}: argument 'n_bins' must be <= the number of scores {n} in quantile mode "
                f"(equal-count bins); got {n_bins}. Use fewer bins or mode='uniform'."
            )
        order = torch.sort(values, stable=True).indices
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(n, device=values.device)
        return torch.div(ranks * n_bins, n, rounding_mode="floor")
    low, span = values.min(), values.max() - values.min()
    if span == 0:
        return torch.zeros(n, dtype=torch.long, device=values.device)
    return ((values - low) / span * n_bins).floor().long().clamp(max=n_bins - 1)
