"""Dense (per-location) contrast and DeCon's weighted encoder + decoder objective (METHODS 3.15)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_flag,
    check_generator,
    check_range,
    check_same_device,
    check_scalar,
    check_temperature,
)
from contrastkit.functional import REDUCTIONS, compute_dtype, reduce_anchor_losses
from contrastkit.losses.infonce import info_nce

DENSE_NEGATIVES = ("batch", "image")
MAPS = "(B, C, H, W)"

DenseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dense_info_nce(
    f1: torch.Tensor,
    f2: torch.Tensor,
    temperature: float = 0.1,
    *,
    negatives: str = "batch",
    normalize: bool = True,
    max_locations: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE between the locations of two spatially aligned views' feature maps.

    Location u = (b, h, w) of view 1 has one positive, the same location of view 2; with
    z = f / ||f|| over the channels (``normalize=True``) and tau the temperature,

        L_u = -log( exp(<z1_u, z2_u>/tau) / sum_{v in N(u)} exp(<z1_u, z2_v>/tau) )

    where N(u) holds u itself and the negatives: ``negatives="batch"`` (default) every other
    location of every image of the batch (view 2), ``"image"`` the other locations of u's own
    image only. One direction (view 1 queries view 2); average it with (f2, f1) for the
    symmetric form. The views must be aligned: undo geometric augmentations on the maps first.

    Args:
        f1, f2: (B, C, H, W) feature maps of two augmented views (projected, e.g. by a 1x1 conv).
        temperature: tau > 0 (a fixed float; scale = 1/tau).
        negatives: ``"batch"`` or ``"image"`` (see above).
        normalize: L2-normalise every location's C-vector (an all-zero vector stays zero and scores 0).
        max_locations: bounded memory: sample this many locations per image (the same ones in both
            views, without replacement, from ``generator``); ``None`` keeps all H*W.
        generator: torch.Generator for the location sample.
        chunk_size: passed to ``info_nce`` (``None`` tiles automatically for large (B*N)^2 logits).
        reduction: ``"mean"`` over all sampled locations, ``"sum"``, or ``"none"`` -> (B, N).

    Returns:
        The loss (0-d, or (B, N) for ``"none"``) in float32 (float64 for float64 input).

    Example:
        >>> f1, f2 = torch.randn(2, 4, 16, 8, 8).unbind(0)
        >>> loss = dense_info_nce(f1, f2, 0.1, max_locations=32, generator=torch.Generator().manual_seed(0))

    Reference: dense InfoNCE as in DenseCL (Wang et al., arXiv 2011.09157) with known location
    correspondence (VADeR, arXiv 2011.05499); used as DeCon's level loss (arXiv 2503.17526).
    """
    fn = "dense_info_nce"
    check_same_device(fn, f1=f1, f2=f2)
    f1 = check_embeddings(fn, "f1", f1, shape=MAPS, ndims=(4,))
    f2 = check_embeddings(fn, "f2", f2, shape=MAPS, ndims=(4,))
    if f1.shape != f2.shape:
        raise InputError(
            f"{fn}: 'f1' and 'f2' must have the same shape (aligned views); got {tuple(f1.shape)} and "
            f"{tuple(f2.shape)}. Resize or crop the maps to one grid first."
        )
    scale = 1.0 / check_temperature(fn, "temperature", temperature)
    check_choice(fn, "negatives", negatives, DENSE_NEGATIVES)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    check_flag(fn, "normalize", normalize)
    check_generator(fn, generator)
    batch, channels = f1.shape[:2]
    q, k = _locations(fn, f1, f2, max_locations, generator)
    n = q.shape[1]
    available = n if negatives == "image" else batch * n
    if available < 2:
        raise InputError(
            f"{fn}: each location needs at least one negative, but negatives={negatives!r} leaves "
            f"{available} candidate(s) ({batch} image(s) x {n} location(s)). Use larger maps, more "
            f"images or a larger 'max_locations'."
        )
    if normalize:
        dtype = compute_dtype(f1, f2)
        q, k = F.normalize(q.to(dtype), dim=-1), F.normalize(k.to(dtype), dim=-1)
    if negatives == "batch":
        flat_q, flat_k = q.reshape(-1, channels), k.reshape(-1, channels)
        loss = info_nce(flat_q, flat_k, scale, reduction="none", chunk_size=chunk_size).view(batch, n)
    else:
        loss = torch.stack(
            [info_nce(q[b], k[b], scale, reduction="none", chunk_size=chunk_size) for b in range(batch)]
        )
    if reduction == "none":
        return loss
    every = torch.ones(loss.numel(), dtype=torch.bool, device=loss.device)
    return reduce_anchor_losses(fn, loss.reshape(-1), every, reduction)


def _locations(fn, f1, f2, max_locations, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) maps -> (B, N, C) location vectors, N = H*W or a sample of max_locations."""
    q, k = f1.flatten(2).transpose(1, 2), f2.flatten(2).transpose(1, 2)
    if max_locations is None:
        return q, k
    if isinstance(max_locations, bool) or not isinstance(max_locations, int) or max_locations < 1:
        raise InputError(
            f"{fn}: argument 'max_locations' must be an int >= 1 or None; got {max_locations!r}."
        )
    batch, n = q.shape[:2]
    if max_locations >= n:
        return q, k
    device = generator.device if generator is not None else q.device
    keep = torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)[:, :max_locations]
    index = keep.to(q.device)[..., None].expand(-1, -1, q.shape[2])
    return q.gather(1, index), k.gather(1, index)


def channel_dropout(
    features: torch.Tensor, p: float, *, training: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero whole channels of a feature map, each (sample, channel) with probability p.

    Like ``nn.Dropout2d``: the kept channels are scaled by 1/(1 - p), so the expected input of
    the next layer is the same in training and in evaluation (where this is the identity).

    Args:
        features: (B, C, *spatial) with at least one spatial dim.
        p: drop probability in [0, 1).
        training: False returns ``features`` unchanged.
        generator: torch.Generator for the channel mask (global RNG when None).
    """
    fn = "channel_dropout"
    p = check_range(fn, "p", p, 0.0, 1.0, high_open=True)
    if not isinstance(features, torch.Tensor) or features.dim() < 3:
        got = (
            f"shape {tuple(features.shape)}"
            if isinstance(features, torch.Tensor)
            else type(features).__name__
        )
        raise InputError(f"{fn}: argument 'features' must be a (B, C, *spatial) tensor; got {got}.")
    check_generator(fn, generator)
    if not training or p == 0.0:
        return features
    device = generator.device if generator is not None else features.device
    keep = torch.rand(features.shape[:2], generator=generator, device=device) >= p
    mask = keep.to(features.device, features.dtype) / (1.0 - p)
    return features * mask.view(*features.shape[:2], *([1] * (features.dim() - 2)))


class WeightedMultiLevelContrast(nn.Module):
    """DeCon's non-competing encoder + decoder objective (METHODS 3.15, arXiv 2503.17526).

        L = alpha * L_enc + (1 - alpha) * sum_l w_l * L_dec,l,     sum_l w_l = 1

    L_enc is a dense contrastive loss on the two views' encoder maps, L_dec,l the same kind of
    loss on decoder level l (each level with its own projection head, in the model). Multi-level
    (ML) passes every decoder level, single-level (SL) the last one only.

    Args:
        level_losses: one loss ``loss(map_view1, map_view2) -> 0-d tensor`` used at every level
            (e.g. ``dense_info_nce`` or a ``functools.partial`` of it), or a sequence of 1 + L
            losses: the encoder's first, then decoder levels 1..L.
        alpha: encoder share in [0, 1] (1 = encoder-only pre-training, 0 = decoder only).
        level_weights: L non-negative decoder-level weights, normalised here to sum 1 (so that
            (1 - alpha) stays the decoder's whole share whatever L); ``None`` = uniform 1/L.
        channel_dropout_p: p of ``drop_channels`` in [0, 1) (0.2 as the paper).
        generator: default torch.Generator of ``drop_channels``.

    The model applies ``drop_channels`` to the encoder maps it feeds the decoder (bottleneck and
    skips), in training only; the encoder loss sees the maps undropped. Terms whose weight is 0
    are not evaluated (alpha = 1 needs no decoder maps, alpha = 0 no encoder maps).

    Example:
        >>> criterion = WeightedMultiLevelContrast(dense_info_nce, alpha=0.5)
        >>> e1, e2, d1, d2 = torch.randn(4, 2, 8, 4, 4).unbind(0)
        >>> loss = criterion((e1, e2), [(d1, d2)])
    """

    def __init__(
        self,
        level_losses: DenseLoss | Sequence[DenseLoss],
        alpha: float = 0.5,
        level_weights: Sequence[float] | None = None,
        channel_dropout_p: float = 0.2,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        fn = "WeightedMultiLevelContrast"
        if callable(level_losses):
            self.level_losses: DenseLoss | list[DenseLoss] = level_losses
        else:
            losses = list(level_losses) if isinstance(level_losses, Sequence) else []
            if len(losses) < 2 or not all(callable(f) for f in losses):
                raise InputError(
                    f"{fn}: argument 'level_losses' must be a callable loss(f1, f2) or a sequence of 1 + L "
                    f">= 2 callables (encoder first, then decoder levels); got {level_losses!r}."
                )
            self.level_losses = losses
            # losses with parameters (projection heads, prototypes) follow .to() and .parameters()
            self.level_modules = nn.ModuleList(f for f in losses if isinstance(f, nn.Module))
        self.alpha = check_range(fn, "alpha", alpha, 0.0, 1.0)
        self.level_weights = None if level_weights is None else _normalised_weights(fn, level_weights)
        self.channel_dropout_p = check_range(
            fn, "channel_dropout_p", channel_dropout_p, 0.0, 1.0, high_open=True
        )
        self.generator = generator

    def drop_channels(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``channel_dropout`` with this module's p, active only in training mode."""
        return channel_dropout(
            features,
            self.channel_dropout_p,
            training=self.training,
            generator=self.generator if generator is None else generator,
        )

    def forward(
        self,
        encoder: tuple[torch.Tensor, torch.Tensor] | None,
        decoder: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> torch.Tensor:
        """encoder: the two views' encoder maps (f1, f2); decoder: one (f1, f2) pair per level.
        Returns the 0-d weighted loss."""
        fn = "WeightedMultiLevelContrast"
        n_levels = len(decoder)
        if self.alpha > 0 and encoder is None:
            raise InputError(f"{fn}: alpha={self.alpha} > 0 needs the encoder maps; got encoder=None.")
        if self.alpha < 1 and n_levels == 0:
            raise InputError(
                f"{fn}: alpha={self.alpha} < 1 needs at least one decoder level in 'decoder'; got none. "
                f"Pass alpha=1.0 for encoder-only contrast."
            )
        weights = self.level_weights
        if weights is not None and len(weights) != n_levels:
            raise InputError(
                f"{fn}: 'level_weights' has {len(weights)} entries but 'decoder' has {n_levels} level(s)."
            )
        if isinstance(self.level_losses, list) and len(self.level_losses) != 1 + n_levels:
            raise InputError(
                f"{fn}: 'level_losses' has {len(self.level_losses)} losses but 1 + {n_levels} levels came "
                f"(the encoder and {n_levels} decoder level(s))."
            )
        if weights is None:
            weights = [1.0 / n_levels] * n_levels if n_levels else []
        total = 0.0
        if self.alpha > 0:
            total = self.alpha * self._level_loss(fn, 0, encoder)
        for level, (pair, weight) in enumerate(zip(decoder, weights, strict=True), start=1):
            if self.alpha < 1 and weight > 0:
                total = total + (1 - self.alpha) * weight * self._level_loss(fn, level, pair)
        return total

    def _level_loss(self, fn: str, level: int, pair) -> torch.Tensor:
        where = "the encoder" if level == 0 else f"decoder level {level}"
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise InputError(f"{fn}: {where} must be given as a pair (f1, f2) of view maps; got {pair!r}.")
        loss_fn = self.level_losses if callable(self.level_losses) else self.level_losses[level]
        loss = loss_fn(*pair)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise InputError(
                f"{fn}: the loss of {where} must return a 0-d tensor (reduction='mean'); got "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}."
            )
        return loss


def _normalised_weights(fn: str, weights: Sequence[float]) -> list[float]:
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise InputError(
            f"{fn}: argument 'level_weights' must be a non-empty list of floats; got {weights!r}."
        )
    values = [float(check_scalar(fn, "level_weights", w, minimum=0.0)) for w in weights]
    if sum(values) <= 0:
        raise InputError(f"{fn}: argument 'level_weights' must have a positive sum; got {list(weights)}.")
    return [v / sum(values) for v in values]
