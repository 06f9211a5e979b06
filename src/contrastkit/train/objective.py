"""How a batch of embeddings becomes a loss: any registered loss, with the model's scale and bias.

Two shapes of training are supported:

- **paired**: a model with two modalities (image-text, series-text, ...) and a pair loss over
  (first modality, second modality);
- **views**: a one-modality model fed ``data.views >= 2`` augmented views per item, with a pair
  loss over (view 1, view 2) (SimCLR: ``nt_xent``) or ``supcon`` over all views with labels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from contrastkit.distributed import agreement, is_active
from contrastkit.losses import get_loss
from contrastkit.losses.tokens import token_info_nce
from contrastkit.models import ContrastiveModel
from contrastkit.models.contrastive import tokens_key
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.defense import defense_objective
from contrastkit.train.pipeline import SECOND_CAPTION
from contrastkit.train.retrieval import RETRIEVAL, retrieval_objective

# loss name -> how the model's learnable values enter it
SCALED = {"clip", "info_nce", "mnrl", "hard_negative_info_nce"}
SCALED_WITH_BIAS = {"siglip"}
UNSCALED_PAIR = {"nt_xent", "dcl", "cosine_alignment"}
LABELLED = {"supcon"}
TEACHER = {"sigrot", "sigrot_hybrid"}  # with frozen teacher embeddings indexed by record
TRAINABLE = SCALED | SCALED_WITH_BIAS | UNSCALED_PAIR | LABELLED | TEACHER | set(RETRIEVAL)
# losses with their own distributed forms (``distributed=``); the others are given gathered inputs
DISTRIBUTED = {"clip", "siglip", "info_nce", "mnrl", "nt_xent", "supcon"}


def _check_options(fn: Callable[..., Any], name: str, options: Mapping[str, Any], fixed: set[str]) -> None:
    params = inspect.signature(fn).parameters
    allowed = sorted(p for p in params if p not in fixed and params[p].default is not inspect.Parameter.empty)
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"loss.options.{key}: not an option of {name}; valid options: {', '.join(allowed)}."
            )


def build_objective(
    config: Config, model: ContrastiveModel
) -> Callable[[dict[str, torch.Tensor], dict], torch.Tensor]:
    """``objective(embeddings, batch) -> loss`` for the configured loss and model.

    ``embeddings`` maps each modality to (B, D), or (B * V, D) for V views stacked item-major.
    The objective's ``normalize`` attribute says whether the trainer L2-normalises them.
    """
    name, options = config.loss.name, dict(config.loss.options)
    if name not in TRAINABLE:
        raise ConfigError(
            f"loss.name: {name!r} is not a training objective of the trainer; choose one of "
            f"{', '.join(sorted(TRAINABLE))}."
        )
    if config.loss.token_weight and ("mined" in config.data.train or name in TEACHER | LABELLED):
        raise ConfigError(
            f"loss.token_weight: the token loss is added to a pair loss over two token towers; {name}"
            f"{' on mined rows' if 'mined' in config.data.train else ''} has no such pair."
        )
    if config.loss.defense is not None:
        return defense_objective(config, model)
    if "mined" in config.data.train:
        return retrieval_objective(config, model, _check_options)
    if name == "margin_mse" or config.loss.guide is not None:
        raise ConfigError(
            "loss: margin_mse and loss.guide train a retriever on mined rows; set data.train: {mined: path}."
        )
    fn = get_loss(name)
    modalities = model.modalities
    views = config.data.views
    if len(modalities) == 1 and views < 2 and name not in LABELLED:
        raise ConfigError(
            f"data.views: a one-modality model ({modalities[0]}) needs data.views >= 2 to form pairs "
            f"for {name}."
        )
    if views > 1 and (modalities != ("image",) or not config.data.augment):
        raise ConfigError(
            f"data.views: {views} views need an image-only model and data.augment: true (views are "
            f"independent augmentations of one image); got towers {list(modalities)}, augment "
            f"{config.data.augment}."
        )
    if len(modalities) > 2:
        raise ConfigError(f"model.towers: the trainer pairs two modalities; got {list(modalities)}.")
    if name in SCALED_WITH_BIAS and model.bias() is None:
        raise ConfigError("model.init_bias: siglip needs a learnable bias; set model.init_bias (e.g. -10).")
    fixed = {"scale", "bias", "labels", "sample_ids", "distributed", "teacher_image", "teacher_text"}
    _check_options(fn, name, options, fixed)
    if name in TEACHER:
        return _teacher_objective(fn, name, options, config, model)
    mode = config.loss.distributed
    if mode == "ring" and name != "siglip":
        raise ConfigError(f"loss.distributed: 'ring' is siglip's exchange; {name} takes local or gather.")
    if name in DISTRIBUTED:
        options["distributed"] = mode
    elif is_active():
        fn = _on_gathered_inputs(fn, name)

    def pair(embeddings: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(modalities) == 2:
            return embeddings[modalities[0]], embeddings[modalities[1]]
        z = embeddings[modalities[0]]
        z = z.reshape(-1, views, z.shape[-1])
        return z[:, 0], z[:, 1]

    def objective(embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        if name in LABELLED:
            if "label" not in batch:
                raise ConfigError(f"loss.name: {name} needs labels; the training data has none.")
            z = embeddings[modalities[0]]
            z = z.reshape(-1, views, z.shape[-1]) if views > 1 else z
            return fn(z, batch["label"].to(z.device), **options)
        x, y = pair(embeddings)
        if name in SCALED_WITH_BIAS:
            return fn(x, y, model.scale(), model.bias(), **options)
        if name == "mnrl":
            return fn(x, y, scale=model.scale(), **options)
        if name in SCALED:
            return fn(x, y, model.scale(), **options)
        return fn(x, y, **options)

    second = config.data.second_caption
    if second is not None:
        if set(modalities) != {"image", "text"} or name not in {"clip", "siglip"}:
            raise ConfigError(
                f"data.second_caption: {second!r} adds a second image-caption loss; it needs an image-text "
                f"model and loss clip or siglip; got towers {list(modalities)} and loss {name}."
            )
        objective = _with_second_caption(objective)
    uses_tokens = bool(config.loss.token_weight)
    if uses_tokens:
        objective = _with_tokens(objective, config.loss.token_weight, model)
    objective.uses_scale = uses_tokens or name in SCALED | SCALED_WITH_BIAS  # type: ignore[attr-defined]
    objective.uses_tokens = uses_tokens  # type: ignore[attr-defined]
    objective.normalize = True  # type: ignore[attr-defined]
    return objective


def _with_tokens(
    objective: Callable[..., torch.Tensor], weight: float, model: ContrastiveModel
) -> Callable[..., torch.Tensor]:
    """MoBind's hierarchical objective: L = L_global + w * token_info_nce(T_a, T_b, s), with s the
    model's scale and T_m the unit token embeddings the trainer adds under ``tokens_key(m)``.

    The token loss contrasts steps within each sample, so GradCache's cached (B, N, D) tokens are
    exact, and under torchrun each rank adds its rows' share W * S_r / (B N) of the global mean
    (exact after DDP's averaging, uneven slices included)."""
    modalities = model.modalities
    if len(modalities) != 2 or model.token_heads is None:
        raise ConfigError(
            f"loss.token_weight: the token loss pairs the tokens of two modalities of a model with "
            f"token heads; got towers {list(modalities)}, token_heads {model.token_heads is not None}."
        )
    first, second = (tokens_key(m) for m in modalities)

    def token_loss(a_tokens: torch.Tensor, b_tokens: torch.Tensor) -> torch.Tensor:
        if not is_active():
            return token_info_nce(a_tokens, b_tokens, model.scale())
        with agreement("loss.token_weight", "local") as agreed:
            agreed.batch = a_tokens
            per_row = token_info_nce(a_tokens, b_tokens, model.scale(), reduction="none")  # (2, B, N)
        layout = agreed.layout
        return 0.5 * layout.share("loss.token_weight", per_row.sum(), layout.count(per_row[0].numel()))

    def with_tokens(embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        return objective(embeddings, batch) + weight * token_loss(embeddings[first], embeddings[second])

    return with_tokens


def _with_second_caption(objective: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """L(image, caption) + L(image, second caption): Long-CLIP's and DeBias-CLIP's objective
    (with ``loss.options.label_smoothing: 0.1`` as in the papers)."""

    def both(embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        second = {**embeddings, "text": embeddings[SECOND_CAPTION]}
        return objective(embeddings, batch) + objective(second, batch)

    return both


def _teacher_objective(fn, name: str, options: dict[str, Any], config: Config, model: ContrastiveModel):
    """SIGROT (alone or 0.1 x CLIP/SigLIP + SIGROT) on an image-text model, the teacher's rows
    picked by the batch's record indices. Under torchrun every rank computes the whole loss on the
    gathered batch (the transport plan couples all of it)."""
    if set(model.modalities) != {"image", "text"}:
        raise ConfigError(
            f"loss.name: {name} aligns images and texts; the model has {list(model.modalities)}."
        )
    banks = load_teacher(config.loss.teacher, name)
    if name == "sigrot_hybrid" and options.get("base", "clip") == "siglip" and model.bias() is None:
        raise ConfigError(
            "model.init_bias: sigrot_hybrid with base siglip needs a learnable bias (e.g. -10)."
        )

    def objective(embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        x, y, index = embeddings["image"], embeddings["text"], batch["index"]
        if is_active():
            with agreement(name, "gather") as agreed:
                agreed.batch = x
            x, y = agreed.layout.gather(x), agreed.layout.gather(y)
            index = agreed.layout.gather_values(index.to(x.device), local_first=False)
        teacher = [bank.to(x.device)[index.to(bank.device)] for bank in banks]
        if name == "sigrot":
            return fn(x, y, *teacher, **options)
        bias = model.bias() if options.get("base", "clip") == "siglip" else None
        return fn(x, y, model.scale(), *teacher, bias=bias, **options)

    objective.uses_scale = name == "sigrot_hybrid"  # type: ignore[attr-defined]
    objective.normalize = True  # type: ignore[attr-defined]
    return objective


def load_teacher(spec: dict[str, str] | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, text) teacher banks of ``loss.teacher``: float32 (records, E) each, no gradient."""
    if spec is None:
        raise ConfigError(
            f"loss.teacher: {name} needs frozen teacher embeddings {{image: a.npy, text: b.npy}}, row i for "
            f"training record i."
        )
    banks = []
    for key in ("image", "text"):
        try:
            array = np.load(spec[key], allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"loss.teacher.{key}: cannot read {spec[key]} as a .npy array ({err})."
            ) from None
        if array.ndim != 2 or not np.isfinite(array).all():
            raise ConfigError(
                f"loss.teacher.{key}: {spec[key]} must be a finite (records, E) array; got {array.shape}."
            )
        banks.append(torch.from_numpy(np.asarray(array, dtype=np.float32)))
    if banks[0].shape != banks[1].shape:
        raise ConfigError(
            f"loss.teacher: the image and text banks must have the same shape; got {tuple(banks[0].shape)} "
            f"and {tuple(banks[1].shape)}."
        )
    return banks[0], banks[1]


def _on_gathered_inputs(fn: Callable[..., torch.Tensor], name: str) -> Callable[..., torch.Tensor]:
    """A pair loss without a distributed form, on every rank's rows gathered with gradient: each
    rank computes the whole loss, and DDP's average of the gathered gradients is exact."""

    def gathered(x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with agreement(name, "gather") as agreed:
            agreed.batch = x
        return fn(agreed.layout.gather(x), agreed.layout.gather(y), *args, **kwargs)

    return gathered


def flatten_views(batch: dict[str, Any], modalities: tuple[str, ...]) -> dict[str, Any]:
    """(B, V, ...) view stacks -> (B * V, ...) item-major, for the towers."""
    out = dict(batch)
    for modality in modalities:
        value = batch.get(modality)
        if isinstance(value, torch.Tensor) and modality == "image" and value.dim() == 5:
            out[modality] = value.flatten(0, 1)
    return out
