"""Backdoor defenses as training objectives: ``loss.defense: {name: ..., options}`` on top of clip.

    loss:
      name: clip
      defense: {name: cleanclip, in_modal_weight: 1.0, word_dropout: 0.1, word_swap: 0.1}

- ``cleanclip``: ``cleanclip_loss`` on the batch and its augmented views: ``image_aug`` (the
  training image augmentation, ``ImageTransform(train=True)``) and ``text_aug`` (``caption_eda``),
  embedded by the image and text towers in the same forward.
- ``roclip``: a caption bank (``bank_size`` entries, the state); on the last ``swap_length`` steps
  of every ``swap_every`` steps each caption embedding is replaced by the bank entry nearest its
  image, then CLIP; every step enqueues the batch's captions after the loss. Swap steps train the
  image tower only (bank rows are constants). The default (every 2nd step) keeps the release's
  share of swapped updates; its schedule, every 2nd epoch swapped whole after a plain first epoch,
  is ``swap_every`` = 2 epochs of steps with ``swap_length`` = 1 epoch of steps.
- ``safeclip``: ``warmup_steps`` of unimodal NN contrast, then per batch a GMM split of
  cos(x_i, y_i) capped by ``safe_fraction_schedule`` (``start_fraction`` -> ``end_fraction``
  over the rest of ``train.steps``): CLIP on safe pairs, unimodal contrast on risky ones. The
  GMM is fitted on each batch (the paper fits it on the whole data set between epochs).
- ``unlearn``: ``unlearn_clip_loss``: the top ``fraction`` of pairs by cosine leave CLIP and
  have their cosine pushed to ``target`` with ``weight``.

State (the step count; RoCLIP's bank) lives in ``DefenseObjective`` buffers and is saved in every
checkpoint as ``defense.*`` safetensors tensors, so a resumed run continues exactly. Under
torchrun every rank computes the defense on the batch gathered with gradient (like the losses
without a distributed form), so the split, the flags and the bank are global and identical on
every rank; nothing is rank-local. Under GradCache the objective runs once per step on the whole
batch's cached embeddings, which is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from contrastkit.data import ImageTransform, TextTransform
from contrastkit.data.caption_eda import caption_eda
from contrastkit.distributed import agreement, is_active
from contrastkit.losses.clip import clip_loss
from contrastkit.models import ContrastiveModel
from contrastkit.security.defenses import (
    ROCLIP_BANK_SIZE,
    TextMemoryBank,
    cleanclip_loss,
    matched_cosines,
    roclip_swap,
    safe_fraction_schedule,
    safeclip_loss,
    safeclip_split,
    unlearn_clip_loss,
)
from contrastkit.train.config import Config, ConfigError, LossConfig

AUGMENTED_VIEWS = {"image_aug": "image", "text_aug": "text"}
"""CleanCLIP's batch keys of the augmented views -> the tower that embeds each."""
STATE_PREFIX = "defense."


def _number(low: float, high: float = math.inf, *, high_open: bool = False) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number; got {value!r}.")
        if value < low or (value >= high if high_open else value > high):
            bracket = ")" if high_open else "]"
            raise ConfigError(f"{key}: must lie in [{low}, {high}{bracket}; got {value!r}.")
        return float(value)

    return check


def _integer(low: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}: expected an integer >= {low}; got {value!r}.")
        return value

    return check


# defense -> option -> (default, check)
DEFENSES: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any]]]] = {
    "cleanclip": {
        "in_modal_weight": (1.0, _number(0.0)),
        "word_dropout": (0.1, _number(0.0, 1.0, high_open=True)),
        "word_swap": (0.1, _number(0.0, 1.0)),
    },
    "roclip": {
        "bank_size": (ROCLIP_BANK_SIZE, _integer(1)),
        "swap_every": (2, _integer(1)),
        "swap_length": (1, _integer(1)),
    },
    "safeclip": {
        "warmup_steps": (100, _integer(0)),
        "start_fraction": (0.1, _number(0.0, 1.0)),
        "end_fraction": (1.0, _number(0.0, 1.0)),
    },
    "unlearn": {
        "fraction": (0.02, _number(0.0, 1.0, high_open=True)),
        "target": (-1.0, _number(-1.0, 1.0)),
        "weight": (1.0, _number(0.0)),
    },
}


def defense_options(spec: Any) -> tuple[str, dict[str, Any]]:
    """``loss.defense`` -> (name, every option with its default filled in); errors name the key."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or spec["name"] not in DEFENSES:
        got = spec.get("name") if isinstance(spec, Mapping) else spec
        raise ConfigError(
            f"loss.defense.name: expected one of {', '.join(DEFENSES)} (e.g. loss.defense: {{name: "
            f"cleanclip}}); got {got!r}."
        )
    name, schema = spec["name"], DEFENSES[spec["name"]]
    options = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in schema:
            raise ConfigError(
                f"loss.defense.{key}: not an option of {name}; valid options: {', '.join(schema)}."
            )
        options[key] = schema[key][1](f"loss.defense.{key}", value)
    resolved = {key: options.get(key, default) for key, (default, _) in schema.items()}
    if name == "safeclip" and resolved["start_fraction"] > resolved["end_fraction"]:
        raise ConfigError(
            f"loss.defense.start_fraction: {resolved['start_fraction']} exceeds end_fraction "
            f"{resolved['end_fraction']}; the safe share grows."
        )
    if name == "roclip" and resolved["swap_length"] > resolved["swap_every"]:
        raise ConfigError(
            f"loss.defense.swap_length: {resolved['swap_length']} exceeds swap_every "
            f"{resolved['swap_every']}; the swapped steps are the last swap_length of every swap_every."
        )
    return name, resolved


def check_defense(loss: LossConfig) -> None:
    """``loss.defense`` is valid and sits on loss ``clip`` without ``loss.options``."""
    defense_options(loss.defense)
    if loss.name != "clip":
        raise ConfigError(
            f"loss.defense: the defenses are CLIP objectives; set loss.name: clip (got {loss.name!r})."
        )
    if loss.options:
        raise ConfigError(
            f"loss.options: {sorted(loss.options)} are clip's options; with loss.defense the defense's "
            f"objective is trained, so give its options under loss.defense."
        )


def augmented_views(config: Config) -> dict[str, tuple[str, Callable[..., Any]]]:
    """CleanCLIP's derived batch entries ``{key: (modality, transform)}``; {} for other runs."""
    if config.loss.defense is None:
        return {}
    name, options = defense_options(config.loss.defense)
    if name != "cleanclip":
        return {}
    clean = TextTransform(config.data.caption_sentences)

    def text_view(item: Any, generator: torch.Generator | None = None) -> str:
        return caption_eda(clean(item), generator, options["word_dropout"], options["word_swap"])

    image_view = ImageTransform(config.data.image_size, train=True)
    return {"image_aug": ("image", image_view), "text_aug": ("text", text_view)}


class DefenseObjective(nn.Module):
    """``objective(embeddings, batch) -> loss`` of a defense, with its state as buffers.

    Args:
        name: a key of ``DEFENSES``.
        options: its resolved options (``defense_options``).
        model: the image-text model (its learnable scale; its embedding size for the bank).
        total_steps: ``train.steps`` (SafeCLIP's schedule).
    """

    uses_scale = True
    uses_tokens = False
    normalize = True

    def __init__(self, name: str, options: dict[str, Any], model: ContrastiveModel, total_steps: int) -> None:
        super().__init__()
        self.name, self.options, self.total_steps = name, options, total_steps
        self.scale = model.scale
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        if name == "roclip":
            self.bank = TextMemoryBank(model.embed_dim, options["bank_size"])

    def forward(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        keys = ["image", "text", *(AUGMENTED_VIEWS if self.name == "cleanclip" else ())]
        x, y, *views = _gathered(f"loss.defense ({self.name})", [embeddings[k] for k in keys])
        loss = self._loss(x, y, views, int(self.steps_done))
        self.steps_done += 1
        return loss

    def _loss(self, x: torch.Tensor, y: torch.Tensor, views: list[torch.Tensor], step: int) -> torch.Tensor:
        options, scale = self.options, self.scale()
        if self.name == "cleanclip":
            return cleanclip_loss(x, y, *views, scale, options["in_modal_weight"])
        if self.name == "unlearn":
            return unlearn_clip_loss(
                x, y, scale, fraction=options["fraction"], target=options["target"], weight=options["weight"]
            )
        if self.name == "roclip":
            return self._roclip(x, y, scale, step)
        fraction = safe_fraction_schedule(
            step,
            self.total_steps,
            options["warmup_steps"],
            options["start_fraction"],
            options["end_fraction"],
        )
        safe = safeclip_split(matched_cosines(x.detach(), y.detach()), fraction)
        return safeclip_loss(x, y, safe, scale)

    def _roclip(self, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, step: int) -> torch.Tensor:
        every, length = self.options["swap_every"], self.options["swap_length"]
        swap = int(self.bank.count) > 0 and step % every >= every - length
        if swap:
            swapped, _ = roclip_swap(x, y, self.bank)
            # 0 * y keeps the text tower in the graph with a zero gradient (DDP and GradCache
            # expect every tower's gradient); the swapped captions are bank constants
            loss = clip_loss(x, swapped, scale) + 0.0 * y.sum()
        else:
            loss = clip_loss(x, y, scale)
        self.bank.update(y)
        return loss


def _gathered(what: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's rows (gathered with gradient) under torchrun; the tensors themselves otherwise."""
    if not is_active():
        return tensors
    with agreement(what, "gather") as agreed:
        agreed.batch = tensors[0]
    return [agreed.layout.gather(t) for t in tensors]


def defense_objective(config: Config, model: ContrastiveModel) -> DefenseObjective:
    """The ``DefenseObjective`` of ``config.loss.defense``, after the cross-section checks."""
    name, options = defense_options(config.loss.defense)
    if set(model.modalities) != {"image", "text"}:
        raise ConfigError(
            f"loss.defense: {name} defends image-text CLIP training; the model has towers "
            f"{list(model.modalities)}."
        )
    clashes = {
        "data.train": "mined" in config.data.train,
        "data.views": config.data.views != 1,
        "data.second_caption": config.data.second_caption is not None,
        "loss.token_weight": bool(config.loss.token_weight),
        "loss.teacher": config.loss.teacher is not None,
    }
    for key, clash in clashes.items():
        if clash:
            raise ConfigError(f"{key}: cannot be combined with loss.defense ({name}); drop one of them.")
    objective = DefenseObjective(name, options, model, config.train.steps)
    return objective.to(next(model.parameters()).device)


def defense_state_tensors(objective: Any) -> dict[str, torch.Tensor]:
    """A defense's state as ``defense.*`` checkpoint tensors ({} for other objectives)."""
    if not isinstance(objective, DefenseObjective):
        return {}
    return {STATE_PREFIX + k: v for k, v in objective.state_dict().items()}


def restore_defense_state(objective: Any, tensors: dict[str, torch.Tensor], where: Any) -> None:
    """Load what ``defense_state_tensors`` saved (nothing for other objectives)."""
    if not isinstance(objective, DefenseObjective):
        return
    mine = {k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    try:
        objective.load_state_dict(mine)
    except RuntimeError as err:
        raise ConfigError(
            f"loss.defense: the checkpoint {where} does not hold this defense's state "
            f"({objective.name}): {str(err).splitlines()[0]}"
        ) from None
