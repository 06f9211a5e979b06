"""ContrastiveModel: one tower and one projection head per modality, a clamped scale, a bias."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import InputError, check_flag, check_int, check_temperature
from contrastkit.losses.scale import LogitScale, mark_no_weight_decay
from contrastkit.models._inputs import check_number
from contrastkit.models.heads import ProjectionHead

RESERVED_KEYS = ("label", "group", "index")
TOKENS_SUFFIX = ".tokens"


def tokens_key(modality: str) -> str:
    """The key of a modality's token embeddings in ``ContrastiveModel.forward(..., tokens=True)``
    (modality names never hold a '.', so it cannot clash with one)."""
    return modality + TOKENS_SUFFIX


def _check_token_towers(fn: str, towers: Mapping[str, nn.Module]) -> None:
    for name, tower in towers.items():
        dim = getattr(tower, "token_dim", None)
        if not callable(getattr(tower, "forward_with_tokens", None)) or not isinstance(dim, int):
            raise InputError(
                f"{fn}: token_heads=True needs towers that expose their tokens (a 'forward_with_tokens' "
                f"method and an int 'token_dim', as SeriesPatchTransformer); tower {name!r} "
                f"({type(tower).__name__}) has none. Use type series_patch or set token_heads false."
            )


def _check_towers(fn: str, towers: object) -> dict[str, nn.Module]:
    if not isinstance(towers, Mapping) or not towers:
        raise InputError(
            f"{fn}: 'towers' must be a non-empty dict modality -> nn.Module, e.g. "
            f"{{'image': ImageCNN(), 'text': TextTransformer(vocab_size)}}; got {towers!r}."
        )
    for name, tower in towers.items():
        if not isinstance(name, str) or not name or "." in name or name in RESERVED_KEYS:
            raise InputError(
                f"{fn}: modality name {name!r} is invalid: use a non-empty str without '.', not one of "
                f"the batch keys {RESERVED_KEYS}."
            )
        if not isinstance(tower, nn.Module):
            raise InputError(f"{fn}: tower {name!r} must be an nn.Module; got {type(tower).__name__}.")
        dim = getattr(tower, "output_dim", None)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InputError(
                f"{fn}: tower {name!r} ({type(tower).__name__}) must have an int attribute 'output_dim' "
                f">= 1 (the size of its (B, output_dim) output); got {dim!r}."
            )
    return dict(towers)


def _head_options(fn: str, projection: object, modalities: list[str]) -> dict[str, dict[str, Any]]:
    """Per-modality ProjectionHead options from a kind (str) or a dict modality -> kind or options."""
    if isinstance(projection, str):
        return {m: {"kind": projection} for m in modalities}
    if not isinstance(projection, Mapping):
        raise InputError(
            f"{fn}: 'projection' must be a head kind ('linear', 'mlp', 'none') or a dict modality -> kind "
            f"or head options; got {type(projection).__name__}."
        )
    unknown = sorted(set(projection) - set(modalities))
    if unknown:
        raise InputError(
            f"{fn}: 'projection' names unknown modalities {unknown}; the model has {modalities}."
        )
    options = {}
    for m in modalities:
        value = projection.get(m, "linear")
        if isinstance(value, str):
            options[m] = {"kind": value}
        elif isinstance(value, Mapping) and not ({"in_dim", "out_dim"} & set(value)):
            options[m] = dict(value)
        else:
            raise InputError(
                f"{fn}: projection for {m!r} must be a kind or a dict of ProjectionHead options (kind, "
                f"hidden, dropout); got {value!r}."
            )
    return options


def decay_param_groups(
    module: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = (), prefix: str = ""
) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``: decay on weight matrices, none on the rest.

    No decay for parameters with fewer than 2 dims (norm gains, biases, scalars), names ending in
    ".bias" and the names in ``no_decay_names``. Frozen parameters are left out, empty groups
    dropped; each group carries a "name" (``prefix + "decay"`` / ``prefix + "no_decay"``).
    """
    wd = check_number("param_groups", "weight_decay", weight_decay, minimum=0.0)
    skip_names = set(no_decay_names)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or name.endswith(".bias") or name in skip_names
        (no_decay if skip else decay).append(p)
    groups = [
        {"name": f"{prefix}decay", "params": decay, "weight_decay": wd},
        {"name": f"{prefix}no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class ContrastiveModel(nn.Module):
    """N towers mapped into one embedding space, with the logit scale (and bias) of the loss.

    For each modality m: z_m = head_m(tower_m(batch[m])), L2-normalised by default.

    Args:
        towers: modality name -> tower (an nn.Module with ``output_dim``, forward -> (B, output_dim)).
        embed_dim: size D of the shared embedding space.
        projection: head kind for every modality ("linear", "mlp", "none"), or a dict modality ->
            kind or ProjectionHead options ({"kind": "mlp", "hidden": 512, "dropout": 0.1});
            modalities it leaves out get "linear".
        init_temperature: initial temperature tau; the scale starts at 1/tau (CLIP: 0.07).
        max_scale: the scale is clamped in place to [1, max_scale] at every use (CLIP: 100).
        learn_scale: whether the scale is trained (else a fixed buffer).
        init_bias: initial logit bias for sigmoid losses (SigLIP: -10), a learned parameter;
            None for no bias.
        frozen: modalities whose tower is locked (LiT): no gradient, kept in eval mode even under
            ``.train()``. Their projection head stays trainable; pass projection={m: "none"} (with
            embed_dim equal to the tower's output_dim) to lock the whole branch.
        token_heads: also map every tower's per-step tokens (``forward_with_tokens``) into the
            embedding space, each modality with its own linear token head (MoBind's token loss).

    Shapes: ``encode(m, batch_m)`` -> (B, embed_dim); ``forward(batch)`` -> {m: (B, embed_dim)};
    ``forward(batch, tokens=True)`` adds {m + ".tokens": (B, N, embed_dim)}.

    Example:
        >>> model = ContrastiveModel({"image": ImageCNN(width=8), "text": TextTransformer(1000, dim=64)})
        >>> z = model(batch)  # {"image": (B, 256), "text": (B, 256)}
        >>> loss = clip_loss(z["image"], z["text"], model.scale())
    """

    def __init__(
        self,
        towers: Mapping[str, nn.Module],
        embed_dim: int = 256,
        projection: str | Mapping[str, Any] = "linear",
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
        learn_scale: bool = True,
        init_bias: float | None = None,
        frozen: Iterable[str] = (),
        token_heads: bool = False,
    ) -> None:
        super().__init__()
        fn = "ContrastiveModel"
        towers = _check_towers(fn, towers)
        if check_flag(fn, "token_heads", token_heads):
            _check_token_towers(fn, towers)
        self.embed_dim = check_int(fn, "embed_dim", embed_dim, 1)
        tau = check_temperature(fn, "init_temperature", init_temperature)
        max_scale = check_number(fn, "max_scale", max_scale, minimum=1.0)
        if not 1.0 <= 1.0 / tau <= max_scale:
            raise InputError(
                f"{fn}: 'init_temperature' must lie in [1/max_scale, 1] = [{1 / max_scale:.4g}, 1] (the "
                f"scale 1/tau is clamped to [1, max_scale]); got {tau}."
            )
        check_flag(fn, "learn_scale", learn_scale)
        if isinstance(frozen, str) or not isinstance(frozen, Iterable):
            raise InputError(f"{fn}: 'frozen' must be a list of modality names; got {frozen!r}.")
        self.frozen = tuple(frozen)
        unknown = [m for m in self.frozen if m not in towers]
        if unknown:
            raise InputError(
                f"{fn}: 'frozen' names unknown modalities {unknown}; the model has {list(towers)}."
            )

        options = _head_options(fn, projection, list(towers))
        self.towers = nn.ModuleDict(towers)
        self.heads = nn.ModuleDict(
            {m: ProjectionHead(t.output_dim, embed_dim, **options[m]) for m, t in towers.items()}
        )
        self.token_heads = (
            nn.ModuleDict({m: ProjectionHead(t.token_dim, embed_dim) for m, t in towers.items()})
            if token_heads
            else None
        )
        self.logit_scale = LogitScale(1.0 / tau, max_scale=max_scale, learnable=learn_scale)
        self.logit_bias: nn.Parameter | None = None
        if init_bias is not None:
            value = check_number(fn, "init_bias", init_bias)
            self.logit_bias = mark_no_weight_decay(nn.Parameter(torch.tensor(value)))
        for m in self.frozen:
            self.towers[m].requires_grad_(False)
        # by name: a plain attribute on a Parameter does not survive copy.deepcopy (EMA teachers)
        self.no_weight_decay_names = {
            name for name, p in self.named_parameters() if getattr(p, "no_weight_decay", False)
        }
        self.train()

    @property
    def modalities(self) -> tuple[str, ...]:
        """The model's modality names, in the order the towers were given."""
        return tuple(self.towers.keys())

    def train(self, mode: bool = True) -> ContrastiveModel:
        """Set train/eval mode; frozen towers stay in eval mode either way."""
        super().train(mode)
        for m in self.frozen:
            self.towers[m].eval()
        return self

    def encode(self, modality: str, batch: Any, normalize: bool = True) -> torch.Tensor:
        """Embed one modality's batch: (B, embed_dim), unit rows when ``normalize``."""
        fn = "ContrastiveModel.encode"
        self._check_modality(fn, modality)
        check_flag(fn, "normalize", normalize)
        tower = self.towers[modality]
        z = self.heads[modality](self._check_features(fn, modality, tower(batch)))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_with_tokens(
        self, modality: str, batch: Any, normalize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One tower pass -> (B, embed_dim) embedding and (B, N, embed_dim) token embeddings
        (each token through the modality's token head; unit rows when ``normalize``)."""
        fn = "ContrastiveModel.encode_with_tokens"
        self._check_modality(fn, modality)
        check_flag(fn, "normalize", normalize)
        if self.token_heads is None:
            raise InputError(f"{fn}: the model was built without token heads; pass token_heads=True.")
        tower = self.towers[modality]
        features, tokens = tower.forward_with_tokens(batch)
        z = self.heads[modality](self._check_features(fn, modality, features))
        if (
            not isinstance(tokens, torch.Tensor)
            or not tokens.is_floating_point()
            or tokens.dim() != 3
            or tokens.shape[0] != z.shape[0]
            or tokens.shape[2] != tower.token_dim
        ):
            got = (
                f"shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            )
            raise InputError(
                f"{fn}: tower {modality!r} ({type(tower).__name__}) must return float (B, N, "
                f"{tower.token_dim}) tokens (its token_dim) from forward_with_tokens; got {got}."
            )
        t = self.token_heads[modality](tokens)
        return (F.normalize(z, dim=-1), F.normalize(t, dim=-1)) if normalize else (z, t)

    def _check_modality(self, fn: str, modality: str) -> None:
        if modality not in self.towers:
            raise InputError(f"{fn}: unknown modality {modality!r}; the model has {list(self.modalities)}.")

    def _check_features(self, fn: str, modality: str, features: Any) -> torch.Tensor:
        tower = self.towers[modality]
        if (
            not isinstance(features, torch.Tensor)
            or not features.is_floating_point()
            or features.dim() != 2
            or features.shape[1] != tower.output_dim
        ):
            got = (
                f"shape {tuple(features.shape)}, dtype {features.dtype}"
                if isinstance(features, torch.Tensor)
                else type(features).__name__
            )
            raise InputError(
                f"{fn}: tower {modality!r} ({type(tower).__name__}) must return a float (B, "
                f"{tower.output_dim}) tensor (its output_dim); got {got}."
            )
        return features

    def forward(
        self,
        batch: Mapping[str, Any],
        normalize: bool = True,
        aliases: Mapping[str, str] | None = None,
        tokens: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Embed every modality of the model present in ``batch`` -> {modality: (B, embed_dim)}.

        Other keys ("label", "group", "index", modalities of other models) are ignored; the
        embedded modalities must share the batch size B (their rows are paired). ``aliases`` maps
        further batch keys to the tower that embeds them (``{"text2": "text"}``: a second caption
        per image, in the same forward pass). ``tokens=True`` (a model with token heads) adds each
        modality's token embeddings (B, N, embed_dim) under ``tokens_key(modality)``.
        """
        fn = "ContrastiveModel.forward"
        if not isinstance(batch, Mapping):
            raise InputError(f"{fn}: 'batch' must be a dict modality -> inputs; got {type(batch).__name__}.")
        towers = {m: m for m in self.modalities if m in batch}
        if not towers:
            raise InputError(
                f"{fn}: the batch holds none of the model's modalities {list(self.modalities)}; its keys "
                f"are {sorted(map(str, batch))}."
            )
        for key, tower in (aliases or {}).items():
            if key not in batch or tower not in self.towers:
                raise InputError(
                    f"{fn}: alias {key!r} -> {tower!r} needs {key!r} in the batch and a {tower!r} tower; "
                    f"the batch has {sorted(map(str, batch))}, the model {list(self.modalities)}."
                )
            towers[key] = tower
        if check_flag(fn, "tokens", tokens):
            out = {}
            for key, tower in towers.items():
                out[key], out[tokens_key(key)] = self.encode_with_tokens(tower, batch[key], normalize)
        else:
            out = {key: self.encode(tower, batch[key], normalize=normalize) for key, tower in towers.items()}
        sizes = {m: z.shape[0] for m, z in out.items()}
        if len(set(sizes.values())) > 1:
            raise InputError(f"{fn}: the modalities of one batch must have the same size B; got {sizes}.")
        return out

    def scale(self) -> torch.Tensor:
        """The clamped logit scale exp(t), a 0-d tensor that carries the gradient."""
        return self.logit_scale()

    def bias(self) -> torch.Tensor | None:
        """The logit bias (0-d parameter) or None when the model was built without one."""
        return self.logit_bias

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on weight matrices, none on the rest.

        No decay for: parameters with fewer than 2 dims (norm gains, biases, the scale and bias),
        names ending in ".bias", and parameters marked ``no_weight_decay`` (positional embeddings,
        class tokens). Frozen parameters (requires_grad False) are left out. Empty groups are
        dropped; each group carries a "name" ("decay" / "no_decay").
        """
        return decay_param_groups(self, weight_decay, self.no_weight_decay_names)

    def extra_repr(self) -> str:
        bias = "none" if self.logit_bias is None else f"{float(self.logit_bias.detach()):.4g}"
        frozen = f", frozen={list(self.frozen)}" if self.frozen else ""
        tokens = ", token_heads=True" if self.token_heads is not None else ""
        return f"modalities={list(self.modalities)}, embed_dim={self.embed_dim}, bias={bias}{frozen}{tokens}"
