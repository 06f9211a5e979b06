"""A training step in two parts, the second one conditional (SPP-SCL, arXiv 2602.20767)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from contrastkit.errors import ContrastkitError, InputError, check_scalar
from contrastkit.losses.crossmodal import SemiPushPullTest, semi_push_pull_test

Outputs = Mapping[str, torch.Tensor]
Batch = Mapping[str, Any]


@dataclass(frozen=True)
class TwoStepStats:
    """What one call did: the losses (step2_loss None when step 2 did not run) and the test."""

    step1_loss: float
    step2_loss: float | None
    fired: bool
    test: SemiPushPullTest | None


class TwoStepConditionalStep:
    """Step 1 always, step 2 only when a batch test on re-forwarded embeddings says so.

    One call on a batch:
        1. outputs = model(batch); L1 = step1_loss(outputs, batch); backward; optimizer step.
        2. outputs' = model(batch) (the re-forward I', T'); fire = condition(outputs'[a].detach(),
           outputs'[b].detach(), batch[label_key], alpha=alpha), a, b = ``modalities``.
        3. if fire: L2 = step2_loss(outputs', batch) on those same outputs (METHODS 3.5: step 2
           contrasts I', T'; no third forward, so a dropout mask is not redrawn); backward; a
           second optimizer step. When it does not fire, the graph of outputs' is dropped.

    Interface:
        model: a callable batch -> mapping of outputs; it must hold the two ``modalities`` as
            (B, D) embeddings, plus whatever the losses read (e.g. class logits). It is used in
            the mode it is in (``model.train()`` is the caller's choice).
        batch: a mapping with the (B,) integer labels under ``label_key``.
        step1_loss, step2_loss: callables (outputs, batch) -> scalar tensor.
        condition: callable (a, b, labels, alpha=...) -> bool or a ``SemiPushPullTest``
            (truthy / ``.fires`` = run step 2). Default: SPP-SCL's ``semi_push_pull_test``.

    Args:
        optimizer: steps the parameters of both losses (zeroed before each backward).
        alpha: passed to ``condition`` (SPP-SCL: 2/3).
        grad_clip: if set, clip the global gradient norm of the optimizer's parameters to it
            before each optimizer step.

    Counters: ``steps`` (calls), ``fired`` (calls that ran step 2), ``firing_rate``.

    Reference: SPP-SCL, arXiv 2602.20767 (step 1 = CE + intra-modal SupCon, step 2 =
    cross-modal SupCon, condition ``semi_push_pull_test``).
    """

    def __init__(
        self,
        model: Callable[[Batch], Outputs],
        optimizer: torch.optim.Optimizer,
        step1_loss: Callable[[Outputs, Batch], torch.Tensor],
        step2_loss: Callable[[Outputs, Batch], torch.Tensor],
        condition: Callable[..., bool | SemiPushPullTest] = semi_push_pull_test,
        *,
        alpha: float = 2 / 3,
        modalities: tuple[str, str] = ("image", "text"),
        label_key: str = "labels",
        grad_clip: float | None = None,
    ) -> None:
        fn = "TwoStepConditionalStep"
        for name, value in (("model", model), ("step1_loss", step1_loss), ("step2_loss", step2_loss)):
            if not callable(value):
                raise InputError(f"{fn}: argument '{name}' must be callable; got {type(value).__name__}.")
        if not callable(condition):
            raise InputError(
                f"{fn}: argument 'condition' must be callable (a, b, labels, alpha=...) -> bool; "
                f"got {type(condition).__name__}."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InputError(
                f"{fn}: argument 'optimizer' must be a torch.optim.Optimizer; got {type(optimizer).__name__}."
            )
        if (
            not isinstance(modalities, tuple | list)
            or len(modalities) != 2
            or not all(isinstance(m, str) for m in modalities)
        ):
            raise InputError(
                f"{fn}: argument 'modalities' must be two output keys, e.g. ('image', 'text'); "
                f"got {modalities!r}."
            )
        if grad_clip is not None:
            grad_clip = float(check_scalar(fn, "grad_clip", grad_clip, minimum=0.0))
            if grad_clip == 0:
                raise InputError(f"{fn}: argument 'grad_clip' must be > 0 (or None for no clipping); got 0.")
        self.model = model
        self.optimizer = optimizer
        self.step1_loss = step1_loss
        self.step2_loss = step2_loss
        self.condition = condition
        self.alpha = alpha
        self.modalities = tuple(modalities)
        self.label_key = label_key
        self.grad_clip = grad_clip
        self.steps = 0
        self.fired = 0

    @property
    def firing_rate(self) -> float:
        """fired / steps (NaN before the first call)."""
        return self.fired / self.steps if self.steps else math.nan

    def __call__(self, batch: Batch) -> TwoStepStats:
        if self.label_key not in batch:
            raise InputError(
                f"TwoStepConditionalStep: the batch has no '{self.label_key}' (keys {list(batch)}); "
                f"put the (B,) labels there or set 'label_key'."
            )
        loss1 = self._optimize("step1_loss", self.step1_loss, self._outputs(batch), batch)
        outputs = self._outputs(batch)  # I', T': the test reads them, and step 2 trains on them
        a, b = (outputs[m].detach() for m in self.modalities)
        result = self.condition(a, b, batch[self.label_key], alpha=self.alpha)
        test = result if isinstance(result, SemiPushPullTest) else None
        fired = result.fires if test is not None else bool(result)
        loss2 = self._optimize("step2_loss", self.step2_loss, outputs, batch) if fired else None
        self.steps += 1
        self.fired += int(fired)
        return TwoStepStats(step1_loss=loss1, step2_loss=loss2, fired=fired, test=test)

    def _outputs(self, batch: Batch) -> Outputs:
        outputs = self.model(batch)
        missing = [m for m in self.modalities if m not in outputs]
        if missing:
            raise InputError(
                f"TwoStepConditionalStep: the model's outputs lack {missing} (it returned keys "
                f"{list(outputs)}); return them or set 'modalities'."
            )
        return outputs

    def _optimize(
        self, name: str, loss_fn: Callable[[Outputs, Batch], torch.Tensor], outputs: Outputs, batch: Batch
    ) -> float:
        """Loss on the given outputs, backward, (clip), optimizer step; the loss value."""
        loss = loss_fn(outputs, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ContrastkitError(
                f"TwoStepConditionalStep: {name} is {value} at call {self.steps}; the optimizer step "
                f"was not taken. Lower the learning rate or check the inputs."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        return value
