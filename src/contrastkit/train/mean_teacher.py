"""Mean teacher for domain adaptation: an EMA copy of the student and its confident pseudo-labels.

Used by GLCL (METHODS 3.20, arXiv 2602.19891); the mean teacher is Tarvainen & Valpola 2017,
arXiv 1703.01780.
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from contrastkit.errors import InputError, check_embeddings, check_range


class MeanTeacher:
    """An exponential-moving-average copy of a student network.

    After each optimizer step, ``update()`` sets, for every parameter,

        theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student

    and copies every buffer (BatchNorm running statistics, counters) from the student. The
    teacher starts as a deep copy of the student, stays in eval mode, has
    ``requires_grad=False`` everywhere and is called under ``torch.no_grad()``.

    Args:
        student: the trained ``nn.Module``.
        decay: EMA decay in [0, 1] (0 copies the student, 1 freezes the teacher).

    Example:
        >>> student = nn.Conv2d(3, 2, 1)
        >>> teacher = MeanTeacher(student, decay=0.99)
        >>> probs = teacher(torch.randn(1, 3, 4, 4)).softmax(dim=1)  # after each step: update()

    Reference: Tarvainen & Valpola 2017, "Mean teachers are better role models",
    arXiv 1703.01780.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99) -> None:
        fn = "MeanTeacher"
        if not isinstance(student, nn.Module):
            raise InputError(
                f"{fn}: argument 'student' must be a torch.nn.Module; got {type(student).__name__}."
            )
        self.decay = check_range(fn, "decay", decay, 0.0, 1.0)
        self.student = student
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        """Move the teacher's parameters one EMA step towards the student's; copy the buffers."""
        pairs = zip(self.teacher.parameters(), self.student.parameters(), strict=True)
        for teacher_param, student_param in pairs:
            teacher_param.mul_(self.decay).add_(student_param.detach(), alpha=1.0 - self.decay)
        for teacher_buffer, student_buffer in zip(
            self.teacher.buffers(), self.student.buffers(), strict=True
        ):
            teacher_buffer.copy_(student_buffer)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        """The teacher's output, in eval mode and without a graph."""
        return self.teacher.eval()(*args, **kwargs)


def pseudo_labels(
    probabilities: torch.Tensor, threshold: float = 0.9, ignore_index: int = 255
) -> torch.Tensor:
    """Confidence-filtered hard labels from class probabilities.

        y_i = argmax_k p_ik  if max_k p_ik >= threshold,  else ignore_index

    Args:
        probabilities: (B, K, H, W) (any trailing dims after K) class probabilities (a softmax
            over dim 1, e.g. of the teacher's logits).
        threshold: confidence in [0, 1]; 0.9 in GLCL.
        ignore_index: the id of rejected pixels; must not be a class id in [0, K).

    Returns:
        (B, H, W) long labels.
    """
    fn = "pseudo_labels"
    probabilities = check_embeddings(
        fn, "probabilities", probabilities, shape="(B, K, H, W)", ndims=range(2, 9)
    )
    threshold = check_range(fn, "threshold", threshold, 0.0, 1.0)
    classes = probabilities.shape[1]
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise InputError(f"{fn}: argument 'ignore_index' must be an int; got {ignore_index!r}.")
    if 0 <= ignore_index < classes:
        raise InputError(
            f"{fn}: argument 'ignore_index'={ignore_index} is a class id of the {classes} classes; "
            f"choose one outside [0, {classes}) (e.g. 255)."
        )
    p = probabilities.detach()
    if bool((p < 0).any()) or bool(((p.sum(dim=1, dtype=torch.float32) - 1).abs() > 1e-2).any()):
        raise InputError(
            f"{fn}: argument 'probabilities' must be non-negative and sum to 1 over dim 1 (K); "
            f"apply softmax(dim=1) to the logits first."
        )
    confidence, labels = p.max(dim=1)
    return labels.masked_fill(confidence < threshold, ignore_index)
