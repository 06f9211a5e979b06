"""Backdoor evaluation: attack success rate beside clean zero-shot accuracy, and its persistence.

METHODS 3.6: CA = clean zero-shot top-1; ASR = the share of triggered non-target images classified
as the target; persistence = ASR(k) / ASR(0) after k clean fine-tuning steps, with the normalised
area under that curve.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from contrastkit.errors import InputError, check_labels, check_range
from contrastkit.eval.zeroshot import class_embeddings, zero_shot_accuracy
from contrastkit.security.triggers import Trigger, check_unit_images

#: Clean fine-tuning steps k at which persistence is measured by default (METHODS 3.6).
PERSISTENCE_STEPS: tuple[int, ...] = (0, 100, 500, 1000, 5000)


@dataclass(frozen=True)
class AttackResult:
    """``asr``: share of triggered non-target images classified as the target; ``clean_accuracy``:
    clean zero-shot top-1 over all images; the counts they are computed over."""

    asr: float
    clean_accuracy: float
    n_triggered: int
    n_clean: int


def _on(batch: Any, device: torch.device) -> Any:
    """A tokenizer's output (a tensor or a dict of tensors) on ``device``."""
    if isinstance(batch, dict):
        return {key: value.to(device) for key, value in batch.items()}
    return batch.to(device)


def _encode_images(model: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[0, 1] images -> (N, D) unit float32 embeddings on CPU, through the model's image tower."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        pixels = images[start : start + batch_size].to(device, torch.float32)
        # the input normalisation of contrastkit.data.ImageTransform: (x - 0.5) / 0.5
        chunks.append(model.encode("image", (pixels - 0.5) / 0.5).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def attack_success_rate(
    model: Any,
    tokenizer: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    target_class: int,
    trigger: Trigger,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """ASR and clean accuracy (CA) of an image-text model by zero-shot classification.

        CA  = mean_n [argmax_c cos(f(x_n), w_c) = y_n]                      over all n
        ASR = mean_n [argmax_c cos(f(T(x_n)), w_c) = target]               over n with y_n != target

    with w_c the prompt-ensembled class embeddings (``contrastkit.eval.class_embeddings``) and the
    pessimistic tie rule of ``zero_shot_accuracy`` (a tie counts as a miss). Reference: the BadCLIP++
    protocol (arXiv 2602.17168), METHODS 3.6.

    Args:
        model: a ``ContrastiveModel`` with "image" and "text" towers (anything with
            ``encode(modality, batch)`` and ``parameters()``); run in eval mode, then restored.
        tokenizer: list[str] -> the text tower's batch (the run's tokenizer, as ``contrastkit eval``
            builds it with ``build_run_model``).
        images: (N, 3, H, W) float pixels in [0, 1] at the model's input size (un-normalised; the
            function applies the (x - 0.5) / 0.5 of ``ImageTransform``).
        labels: (N,) int class ids in [0, C).
        target_class: the attack's target class id.
        trigger: a ``Trigger`` (e.g. ``functools.partial(badnet_patch, size=16)``).
        class_names: C class names, in label order.
        templates: zero-shot prompts with one ``{}``.
        batch_size: images encoded at once.
        generator: passed to the trigger (random patch positions).

    Returns:
        ``AttackResult(asr, clean_accuracy, n_triggered, n_clean)``.
    """
    fn = "attack_success_rate"
    images = check_unit_images(fn, images)
    n = images.shape[0]
    labels = check_labels(fn, "labels", labels, n).long().cpu()
    if not callable(trigger):
        raise InputError(
            f"{fn}: argument 'trigger' must be callable (a Trigger); got {type(trigger).__name__}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"{fn}: argument 'batch_size' must be an int >= 1; got {batch_size!r}.")
    if not callable(getattr(model, "encode", None)):
        raise InputError(
            f"{fn}: argument 'model' must be a ContrastiveModel (with encode(modality, batch)); "
            f"got {type(model).__name__}."
        )
    classes = len(class_names) if isinstance(class_names, Sequence) else 0
    if isinstance(target_class, bool) or not isinstance(target_class, numbers.Integral):
        raise InputError(f"{fn}: argument 'target_class' must be an int class id; got {target_class!r}.")
    if not 0 <= target_class < classes:
        raise InputError(
            f"{fn}: argument 'target_class' must be in [0, {classes}) (one of 'class_names'); "
            f"got {target_class}."
        )
    others = labels != target_class
    if not bool(others.any()):
        raise InputError(
            f"{fn}: every image is of the target class {target_class}; ASR is measured on non-target "
            f"images, so pass images of other classes too."
        )
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        class_emb = class_embeddings(
            lambda texts: model.encode("text", _on(tokenizer(texts), device)).float().cpu(),
            class_names,
            templates,
        )
        clean = zero_shot_accuracy(_encode_images(model, images, batch_size), class_emb, labels, topk=(1,))
        triggered = trigger(images[others], generator=generator)
        triggered = check_unit_images(f"{fn} (the trigger's output)", triggered)
        as_target = torch.full((triggered.shape[0],), target_class, dtype=torch.int64)
        hit = zero_shot_accuracy(
            _encode_images(model, triggered, batch_size), class_emb, as_target, topk=(1,)
        )
    finally:
        model.train(was_training)
    return AttackResult(hit["top1"], clean["top1"], int(others.sum()), n)


@dataclass(frozen=True)
class PersistenceCurve:
    """``steps`` k (ascending, from 0), ``ratio`` ASR(k) / ASR(0) at each, and ``auc``: the
    trapezoid area under ratio over k / k_max (1 = the backdoor fully persists; above 1 when
    fine-tuning raises ASR)."""

    steps: tuple[int, ...]
    ratio: tuple[float, ...]
    auc: float


def persistence_curve(asr_by_step: dict[int, float]) -> PersistenceCurve:
    """Backdoor persistence under clean fine-tuning (METHODS 3.6, definition [R]).

        r(k) = ASR(k) / ASR(0);   AUC = sum_j (u_{j+1} - u_j) (r_j + r_{j+1}) / 2,  u_j = k_j / k_max

    Args:
        asr_by_step: {k: ASR after k clean fine-tuning steps}, ASR in [0, 1]; must hold k = 0 with
            ASR(0) > 0 and at least one k > 0 (default grid: ``PERSISTENCE_STEPS``).

    Returns:
        ``PersistenceCurve(steps, ratio, auc)``; the ratio may exceed 1 if fine-tuning raises ASR.
    """
    fn = "persistence_curve"
    if not isinstance(asr_by_step, dict) or len(asr_by_step) < 2:
        raise InputError(
            f"{fn}: argument 'asr_by_step' must be a dict {{steps: ASR}} with k = 0 and at least one "
            f"k > 0, e.g. {{0: 0.98, 100: 0.9, 500: 0.7}}; got {asr_by_step!r}."
        )
    for k in asr_by_step:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise InputError(f"{fn}: the steps (keys of 'asr_by_step') must be ints >= 0; got {k!r}.")
    if 0 not in asr_by_step:
        raise InputError(f"{fn}: argument 'asr_by_step' needs the ASR before fine-tuning (key 0).")
    steps = tuple(sorted(int(k) for k in asr_by_step))
    asr = [check_range(fn, f"asr_by_step[{k}]", asr_by_step[k], 0.0, 1.0) for k in steps]
    if asr[0] == 0:
        raise InputError(f"{fn}: ASR(0) is 0, so there is no backdoor whose persistence could be measured.")
    ratio = tuple(a / asr[0] for a in asr)
    u = [k / steps[-1] for k in steps]
    auc = sum((u[j + 1] - u[j]) * (ratio[j] + ratio[j + 1]) / 2 for j in range(len(steps) - 1))
    return PersistenceCurve(steps, ratio, auc)
