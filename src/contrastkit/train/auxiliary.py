"""Auxiliary losses that share the encoders with the contrastive objective.

BindCLIP trains its pocket encoder with a pose-denoising loss beside the contrastive one; other
methods add a reconstruction or a classification head. The trainer takes them as

    Trainer(config, run_dir, aux_losses={"denoise": (0.5, DenoiseHead())})

name -> (weight w, loss): the step minimises  L = L_contrastive + sum_name w_name * L_name.

A loss is called as ``loss(embeddings, batch) -> 0-d tensor`` with the same embeddings the
contrastive loss sees (modality -> (B, D), L2-normalised, with gradient to the towers; float32
when the towers ran under bf16/fp16 autocast) and the batch (modality inputs, ``"index"`` (B,)
record indices, ``"label"`` when the data has labels).
When the loss is an ``nn.Module`` its parameters are trained with the model (same optimizer,
weight-decay rule and learning rate), saved in every checkpoint and restored on resume; under
torchrun their gradients are averaged over ranks like the logit scale's. Each term's unweighted
value is logged as an ``aux_<name>`` column of log.csv.

Under torchrun each rank's loss sees that rank's rows only and the ranks' gradients are averaged,
so a loss that is a mean over rows equals the single-process one when the slices are equal (the
trainer's global batch split evenly); with uneven slices rows are weighted 1/(W B_r) instead of
1/B. Under GradCache (``train.micro_batch_size``) the loss sees the whole batch's cached
embeddings, which is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from contrastkit.models.contrastive import decay_param_groups
from contrastkit.train.config import ConfigError

AuxLoss = Callable[[dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]
TENSOR_PREFIX = "aux."


class AuxiliaryLosses:
    """The weighted auxiliary terms of a run and the trainable modules among them.

    Args:
        losses: name -> (weight >= 0, loss); names are identifiers (they become log columns).
        device: where the modules' parameters live.
    """

    def __init__(self, losses: Mapping[str, tuple[float, AuxLoss]] | None, device: torch.device) -> None:
        losses = dict(losses or {})
        self.weights: dict[str, float] = {}
        self.losses: dict[str, AuxLoss] = {}
        for name, entry in losses.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(
                    f"aux_losses: the name {name!r} must be an identifier (it names a log column)."
                )
            if not isinstance(entry, tuple) or len(entry) != 2 or not callable(entry[1]):
                raise ConfigError(
                    f"aux_losses[{name!r}]: expected (weight, loss) with loss(embeddings, batch) -> 0-d "
                    f"tensor; got {entry!r}."
                )
            weight, loss = entry
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not (math.isfinite(weight) and weight >= 0)
            ):
                raise ConfigError(
                    f"aux_losses[{name!r}]: the weight must be a finite number >= 0; got {weight!r}."
                )
            self.weights[name], self.losses[name] = float(weight), loss
        self.modules = nn.ModuleDict({n: f for n, f in self.losses.items() if isinstance(f, nn.Module)})
        self.modules.to(device)
        self.last: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return list(self.losses)

    def __bool__(self) -> bool:
        return bool(self.losses)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.modules.parameters() if p.requires_grad]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups of the trainable modules (the model's weight-decay rule), named ``aux_*``."""
        return decay_param_groups(self.modules, weight_decay, prefix="aux_")

    def __call__(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor | None:
        """sum_name w_name * L_name (None without auxiliary losses); keeps each L_name in ``last``.

        Half-precision embeddings (from bf16/fp16 autocast, which the losses run outside of) are
        passed up-cast to float32, as the library's own losses compute, so that a float32 module
        can take them; the gradient still reaches the encoders."""
        total, self.last = None, {}
        if not self.losses:
            return None
        embeddings = {k: _float32_if_half(v) for k, v in embeddings.items()}
        for name, loss in self.losses.items():
            value = loss(embeddings, batch)
            if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ConfigError(
                    f"aux_losses[{name!r}]: the loss must return a 0-d float tensor (reduce it, e.g. "
                    f".mean()); got {shape}."
                )
            self.last[name] = float(value.detach())
            term = self.weights[name] * value
            total = term if total is None else total + term
        return total

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The modules' weights as ``aux.<name>.<parameter>`` tensors for a checkpoint."""
        return {TENSOR_PREFIX + k: v for k, v in self.modules.state_dict().items()}

    def check_names(self, saved_names: list[str], where: Any) -> None:
        """A resumed run must have the auxiliary losses its checkpoint was trained with."""
        if saved_names != self.names:
            raise ConfigError(
                f"aux_losses: the checkpoint {where} was trained with auxiliary losses {saved_names}; "
                f"resume it with the same ones, not {self.names}."
            )

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], where: Any) -> None:
        """Restore the weights written by ``state_tensors``."""
        mine = {k[len(TENSOR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
        missing, unexpected = self.modules.load_state_dict(mine, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"aux_losses: the checkpoint {where} does not fit the auxiliary modules: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}."
            )


def _float32_if_half(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    return value
