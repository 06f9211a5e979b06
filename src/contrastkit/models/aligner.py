"""Post-hoc alignment of frozen encoders: trainable projection heads and one scale per modality pair."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import InputError, check_flag, check_temperature
from contrastkit.losses.multimodal import Pair, multimodal_info_nce, resolve_pairs
from contrastkit.losses.scale import LogitScale
from contrastkit.models._inputs import check_number
from contrastkit.models.contrastive import _check_towers
from contrastkit.models.heads import ProjectionHead


def _head(fn: str, in_dim: int, head_dims: object) -> ProjectionHead:
    if isinstance(head_dims, int) and not isinstance(head_dims, bool):
        return ProjectionHead(in_dim, head_dims, kind="linear")
    if (
        isinstance(head_dims, Sequence)
        and len(head_dims) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in head_dims)
    ):
        hidden, out = head_dims
        return ProjectionHead(in_dim, out, kind="mlp", hidden=hidden)
    raise InputError(
        f"{fn}: argument 'head_dims' must be an int D (a linear head to D) or a pair (hidden, D) (an MLP "
        f"head); got {head_dims!r}."
    )


class MultiModalProjectionAligner(nn.Module):
    """Frozen encoders, one trainable projection head each, one learnable clamped scale per pair.

        z_m = normalize(h_m(f_m(x_m))),   L = sum_{(a, b) in pairs} clip_loss(z_a, z_b, s_ab)

    The encoders f_m are locked (no gradient, eval mode even under ``.train()``, run under
    ``torch.no_grad``); only the heads h_m and the scales s_ab = exp(t_ab) (clamped in place to
    [1, max_scale] at each use, as ``LogitScale``) are trained. ``project`` applies the heads to
    features computed once beforehand, so a study can skip the encoders while training.

    Args:
        encoders: modality -> nn.Module with an int ``output_dim``, forward -> (B, output_dim).
        head_dims: D (a linear head to D for every modality) or (hidden, D) (an MLP head).
        pairs: the (a, b) pairs of the loss; None takes every pair (three for three modalities).
        init_temperature: initial temperature of every pair (scale 1/tau; CLIP 0.07).
        max_scale: upper clamp of the scales (100).

    Example:
        >>> aligner = MultiModalProjectionAligner({"ts": SeriesCNN(1), "image": ImageCNN()}, (256, 128))
        >>> z = aligner({"ts": series, "image": images}); loss = aligner.loss(z)
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        head_dims: int | tuple[int, int],
        pairs: Sequence[Pair] | None = None,
        *,
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
    ) -> None:
        super().__init__()
        fn = "MultiModalProjectionAligner"
        encoders = _check_towers(fn, encoders)
        if len(encoders) < 2:
            raise InputError(
                f"{fn}: argument 'encoders' needs at least two modalities; got {list(encoders)}."
            )
        for name in encoders:
            if "|" in name:
                raise InputError(f"{fn}: modality name {name!r} must not contain '|'.")
        tau = check_temperature(fn, "init_temperature", init_temperature)
        max_scale = check_number(fn, "max_scale", max_scale, minimum=1.0)
        if not 1.0 <= 1.0 / tau <= max_scale:
            raise InputError(
                f"{fn}: 'init_temperature' must lie in [1/max_scale, 1] = [{1 / max_scale:.4g}, 1]; "
                f"got {tau}."
            )
        self.pairs: list[Pair] = resolve_pairs(fn, list(encoders), pairs)
        self.encoders = nn.ModuleDict(encoders).requires_grad_(False)
        self.heads = nn.ModuleDict({m: _head(fn, e.output_dim, head_dims) for m, e in encoders.items()})
        self.scales = nn.ModuleDict(
            {f"{a}|{b}": LogitScale(1.0 / tau, max_scale=max_scale) for a, b in self.pairs}
        )
        self.train()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def train(self, mode: bool = True) -> MultiModalProjectionAligner:
        """Set the heads' mode; the frozen encoders stay in eval mode."""
        super().train(mode)
        self.encoders.eval()
        return self

    def _check_modality(self, fn: str, modality: object) -> str:
        if modality not in self.encoders:
            raise InputError(f"{fn}: unknown modality {modality!r}; the aligner has {list(self.modalities)}.")
        return modality  # type: ignore[return-value]

    @torch.no_grad()
    def features(self, modality: str, batch: Any) -> torch.Tensor:
        """Frozen encoder features f_m(x): (B, output_dim), no gradient."""
        return self.encoders[self._check_modality("MultiModalProjectionAligner.features", modality)](batch)

    def project(
        self, features: Mapping[str, torch.Tensor], normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """Heads on precomputed features: {m: (B, D)} (unit rows when ``normalize``)."""
        fn = "MultiModalProjectionAligner.project"
        if not isinstance(features, Mapping) or not features:
            raise InputError(f"{fn}: argument 'features' must be a non-empty dict modality -> (B, F) tensor.")
        check_flag(fn, "normalize", normalize)
        out = {}
        for m, f in features.items():
            head = self.heads[self._check_modality(fn, m)]
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[1] != head.in_dim:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise InputError(f"{fn}: features[{m!r}] must be a (B, {head.in_dim}) tensor; got {got}.")
            z = head(f)
            out[m] = F.normalize(z, dim=-1) if normalize else z
        return out

    def forward(self, batch: Mapping[str, Any], normalize: bool = True) -> dict[str, torch.Tensor]:
        """Encode (frozen) and project every modality of the aligner present in ``batch``."""
        fn = "MultiModalProjectionAligner.forward"
        if not isinstance(batch, Mapping):
            raise InputError(f"{fn}: 'batch' must be a dict modality -> inputs; got {type(batch).__name__}.")
        present = [m for m in self.modalities if m in batch]
        if not present:
            raise InputError(f"{fn}: the batch holds none of the modalities {list(self.modalities)}.")
        return self.project({m: self.features(m, batch[m]) for m in present}, normalize=normalize)

    def pair_scales(self) -> dict[Pair, torch.Tensor]:
        """{(a, b): s_ab}, each clamped in place and differentiable (a 0-d tensor)."""
        return {(a, b): self.scales[f"{a}|{b}"]() for a, b in self.pairs}

    def loss(self, embeddings: Mapping[str, torch.Tensor], *, label_smoothing: float = 0.0) -> torch.Tensor:
        """``multimodal_info_nce`` of {m: (B, D)} over the aligner's pairs with its own scales."""
        return multimodal_info_nce(
            embeddings, self.pair_scales(), self.pairs, label_smoothing=label_smoothing
        )
