"""GatedCLIP's fusion head: per-modality MLP heads, a per-example modality gate, a classifier.

Reference: GatedCLIP, arXiv 2602.20818 (METHODS.md 3.4); the auxiliary term is METHODS 1.11.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_int,
    check_labels,
    check_range,
    check_same_device,
    check_scalar,
)
from contrastkit.functional import compute_dtype
from contrastkit.losses.alignment import cosine_alignment


class FusionOutput(NamedTuple):
    """What a fusion head returns for a batch of B (image, text) feature pairs.

    logits: (B, n_classes); gate: (B,) the weight g of the image head (1 - g weighs the text
    head); h_image, h_text: (B, proj[-1]) the per-modality head outputs.
    """

    logits: torch.Tensor
    gate: torch.Tensor
    h_image: torch.Tensor
    h_text: torch.Tensor


def modality_head(in_dim: int, widths: Sequence[int], dropout: float) -> nn.Sequential:
    """One modality's MLP head: h = Drop(ReLU(W_k ... Drop(ReLU(W_1 v)))), (B, in_dim) -> (B, widths[-1])."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    return nn.Sequential(*layers)


def _check_fusion_inputs(
    fn: str, image: object, text: object, in_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check paired (B, in_dim) image and text features: finite, non-empty, same rows and device."""
    check_same_device(fn, image=image, text=text)
    image = check_embeddings(fn, "image", image, shape="(B, in_dim)", dim=in_dim, like="in_dim")
    text = check_embeddings(fn, "text", text, shape="(B, in_dim)", dim=in_dim, like="in_dim")
    if text.shape[0] != image.shape[0]:
        raise InputError(
            f"{fn}: 'image' and 'text' must hold the same B rows (row i of each is one example); got "
            f"{tuple(image.shape)} and {tuple(text.shape)}."
        )
    return image, text


class GatedFusionHead(nn.Module):
    """GatedCLIP's trainable head on frozen (B, in_dim) image and text features.

        h_I = Drop_p(ReLU(W_2 Drop_p(ReLU(W_1 v_I)))),  h_T likewise (own weights), 512 -> 256 -> 128
        g   = sigmoid(W_g ReLU(W_c [h_I; h_T]))           (2*128 -> 64 -> 1, one gate per example)
        h_f = g h_I + (1 - g) h_T
        y^  = W_cls Drop_{p_cls}(ReLU(W_h h_f))             (128 -> 64 -> n_classes)

    With ``fixed_gate=c`` the gate is the constant c (the "fixed 0.5" ablation) and the gate
    layers do not exist. Trainable parameters with the defaults: 2 x 164,224 (heads) + 16,513
    (gate) + 8,386 (classifier) = 353,347 (the paper's "about 350K"); 336,834 with a fixed gate.
    Train it with ``gated_fusion_loss``.

    Args:
        in_dim: width of both modalities' features.
        proj: widths of each modality head's layers (the last is the fused width).
        gate_hidden, cls_hidden: hidden widths of the gate and of the classifier.
        n_classes: classifier outputs (>= 2).
        p_proj, p_cls: dropout of the modality heads and of the classifier, in [0, 1).
        fixed_gate: None (learned gate) or a constant g in [0, 1].

    Shapes: forward(image (B, in_dim), text (B, in_dim)) -> FusionOutput(logits (B, n_classes),
    gate (B,), h_image (B, proj[-1]), h_text (B, proj[-1])). Inputs are cast to the parameters'
    dtype.

    Reference: GatedCLIP, arXiv 2602.20818.
    """

    def __init__(
        self,
        in_dim: int = 512,
        proj: Sequence[int] = (256, 128),
        gate_hidden: int = 64,
        cls_hidden: int = 64,
        n_classes: int = 2,
        p_proj: float = 0.2,
        p_cls: float = 0.3,
        fixed_gate: float | None = None,
    ) -> None:
        super().__init__()
        fn = "GatedFusionHead"
        self.in_dim = check_int(fn, "in_dim", in_dim, 1)
        if isinstance(proj, (str, bytes)) or not isinstance(proj, Sequence) or len(proj) == 0:
            raise InputError(
                f"{fn}: argument 'proj' must be a non-empty tuple of layer widths; got {proj!r}."
            )
        widths = tuple(check_int(fn, "proj", w, 1) for w in proj)
        check_int(fn, "gate_hidden", gate_hidden, 1)
        check_int(fn, "cls_hidden", cls_hidden, 1)
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise InputError(
                f"{fn}: argument 'n_classes' must be an int >= 2 (2 for a binary task); got {n_classes!r}."
            )
        p_proj = check_range(fn, "p_proj", p_proj, 0.0, 1.0, high_open=True)
        p_cls = check_range(fn, "p_cls", p_cls, 0.0, 1.0, high_open=True)
        self.fixed_gate = None if fixed_gate is None else check_range(fn, "fixed_gate", fixed_gate, 0.0, 1.0)
        fused = widths[-1]
        self.image_head = modality_head(in_dim, widths, p_proj)
        self.text_head = modality_head(in_dim, widths, p_proj)
        self.gate = (
            nn.Sequential(nn.Linear(2 * fused, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, 1))
            if self.fixed_gate is None
            else None
        )
        self.classifier = nn.Sequential(
            nn.Linear(fused, cls_hidden), nn.ReLU(), nn.Dropout(p_cls), nn.Linear(cls_hidden, n_classes)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> FusionOutput:
        """(B, in_dim), (B, in_dim) -> FusionOutput(logits, gate, h_image, h_text)."""
        image, text = _check_fusion_inputs("GatedFusionHead.forward", image, text, self.in_dim)
        dtype = self.classifier[0].weight.dtype
        h_image = self.image_head(image.to(dtype))
        h_text = self.text_head(text.to(dtype))
        if self.gate is None:
            gate = h_image.new_full((h_image.shape[0],), self.fixed_gate)
        else:
            gate = torch.sigmoid(self.gate(torch.cat([h_image, h_text], dim=1))).squeeze(1)
        fused = gate[:, None] * h_image + (1 - gate[:, None]) * h_text
        return FusionOutput(self.classifier(fused), gate, h_image, h_text)

    def extra_repr(self) -> str:
        gate = "learned" if self.fixed_gate is None else f"fixed {self.fixed_gate}"
        return f"in_dim={self.in_dim}, gate={gate}"


def gated_fusion_loss(output: FusionOutput, labels: torch.Tensor, align_weight: float = 0.01) -> torch.Tensor:
    """GatedCLIP's training loss: L = CE(logits, labels) + lambda (1/B) sum_i (1 - cos(h_I,i, h_T,i)).

    The second term is ``cosine_alignment`` (METHODS 1.11, positives only), not InfoNCE. A row
    whose h_I or h_T is all zero (ReLU and dropout can make one) has no defined cosine: it counts
    as cos = 0 (term 1, no gradient), the value ``torch.nn.functional.cosine_similarity`` gives.

    Args:
        output: a ``FusionOutput`` (logits (B, C), h_image and h_text (B, d)).
        labels: (B,) integer class ids in [0, C).
        align_weight: lambda >= 0 (0.01 in the paper).

    Returns a 0-d tensor (float32 for half-precision logits). Reference: arXiv 2602.20818.
    """
    fn = "gated_fusion_loss"
    if not isinstance(output, FusionOutput):
        raise InputError(
            f"{fn}: argument 'output' must be the FusionOutput a fusion head returns; "
            f"got {type(output).__name__}."
        )
    logits = check_embeddings(fn, "output.logits", output.logits, shape="(B, n_classes)")
    n, n_classes = logits.shape
    labels = check_labels(fn, "labels", labels, n)
    check_same_device(fn, logits=logits, labels=labels)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise InputError(
            f"{fn}: argument 'labels' must hold class ids in [0, {n_classes}) (the logits' width); got "
            f"ids in [{low}, {high}]."
        )
    weight = check_scalar(fn, "align_weight", align_weight, minimum=0.0)
    ce = F.cross_entropy(logits.to(compute_dtype(logits)), labels)
    if isinstance(weight, float) and weight == 0.0:
        return ce
    return ce + weight * _alignment_term(output.h_image, output.h_text)


def _alignment_term(h_image: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i (1 - cos(h_I,i, h_T,i)), with cos = 0 where either row is all zero."""
    defined = (h_image.detach().abs().amax(dim=1) > 0) & (h_text.detach().abs().amax(dim=1) > 0)
    n, kept = h_image.shape[0], int(defined.sum())
    if kept == 0:
        return torch.ones((), dtype=compute_dtype(h_image, h_text), device=h_image.device)
    return (kept * cosine_alignment(h_image[defined], h_text[defined]) + (n - kept)) / n
