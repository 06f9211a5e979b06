"""Backdoor defenses for CLIP training as exact losses (METHODS 3.6).

- CleanCLIP: CLIP plus in-modal contrast of each modality with its augmented view.
- RoCLIP: a FIFO bank of caption embeddings; each caption is swapped for the bank entry
  nearest to its image before CLIP.
- SafeCLIP: unimodal nearest-neighbour contrast during warm-up; then a 2-component GMM on
  cos(x_i, y_i) splits safe pairs (CLIP) from risky ones (unimodal contrast).
- Similarity unlearning: the top pairs by cos(x_i, y_i) leave CLIP and have their cosine pushed
  towards a desired value c*.

Embeddings are used as given (normalise them first), except in the unlearning penalty, which is
defined on cosines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_embeddings,
    check_finite,
    check_mask,
    check_nonzero_rows,
    check_range,
    check_same_device,
    check_scale,
    check_tensor,
)
from contrastkit.functional import compute_dtype
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.infonce import info_nce
from contrastkit.security.detectors import gmm_safe_split

ROCLIP_BANK_SIZE = 44_032
"""RoCLIP's caption pool size."""


def _check_paired_embeddings(
    fn: str, x: object, y: object, min_rows: int, names: tuple[str, str] = ("x", "y")
) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_embeddings(fn, names[0], x)
    y = check_embeddings(fn, names[1], y, rows=x.shape[0], dim=x.shape[1], like=names[0])
    if x.shape[0] < min_rows:
        raise InputError(f"{fn}: needs a batch of at least {min_rows} pairs; got {x.shape[0]}.")
    return x, y


def cleanclip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    x_aug: torch.Tensor,
    y_aug: torch.Tensor,
    scale: float | torch.Tensor,
    in_modal_weight: float = 1.0,
) -> torch.Tensor:
    """CleanCLIP: multimodal CLIP plus in-modal contrast with augmented views.

        L = L_CLIP(x, y) + w * 1/2 [ CE(s x x_aug^T, arange) + CE(s y y_aug^T, arange) ]

    Each modality is contrasted with its own augmented view in one direction (rows x_i against
    the augmented views), with the CLIP scale s.

    Args:
        x, y: (B, D) image and text embeddings, row i paired.
        x_aug, y_aug: (B, D) embeddings of augmented views of the same images / captions.
        scale: multiplicative logit scale s >= 0 (shared by all three terms).
        in_modal_weight: w >= 0 (1 in the paper).

    Returns:
        The scalar loss (float32; float64 for float64 input).

    Reference: Bansal et al. 2023, "CleanCLIP", arXiv 2303.03323.
    """
    fn = "cleanclip_loss"
    check_same_device(fn, x=x, y=y, x_aug=x_aug, y_aug=y_aug, scale=scale)
    x, y = _check_paired_embeddings(fn, x, y, 2)
    x_aug = check_embeddings(fn, "x_aug", x_aug, rows=x.shape[0], dim=x.shape[1], like="x")
    y_aug = check_embeddings(fn, "y_aug", y_aug, rows=x.shape[0], dim=x.shape[1], like="x")
    scale = check_scale(fn, "scale", scale)
    in_modal_weight = check_range(fn, "in_modal_weight", in_modal_weight, 0.0, math.inf)
    in_modal = 0.5 * (info_nce(x, x_aug, scale) + info_nce(y, y_aug, scale))
    return clip_loss(x, y, scale) + in_modal_weight * in_modal


class TextMemoryBank(nn.Module):
    """RoCLIP's caption pool: a FIFO queue of the last ``size`` caption embeddings.

    ``update(text)`` writes the rows (detached, float32) at the write pointer, wrapping around,
    so the bank always holds the newest min(seen, size) rows; a batch larger than the bank keeps
    its last ``size`` rows. The state is three buffers (``embeddings``, ``pointer``, ``count``),
    saved with ``state_dict``.

    Args:
        dim: embedding size D.
        size: number of entries K (RoCLIP: 44,032).
    """

    def __init__(self, dim: int, size: int = ROCLIP_BANK_SIZE) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"TextMemoryBank: argument '{name}' must be an int >= 1; got {value!r}.")
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, text: torch.Tensor) -> None:
        """Enqueue (B, D) caption embeddings, overwriting the oldest entries once full."""
        text = check_embeddings("TextMemoryBank.update", "text", text, dim=self.embeddings.shape[1])
        rows = text.detach()[-self.size :].to(self.embeddings)
        n = rows.shape[0]
        slots = (self.pointer + torch.arange(n, device=rows.device)) % self.size
        self.embeddings[slots] = rows
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def stored(self) -> torch.Tensor:
        """The filled entries, (min(seen, K), D)."""
        return self.embeddings[: int(self.count)]


def roclip_swap(
    image_emb: torch.Tensor, text_emb: torch.Tensor, bank: TextMemoryBank | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoCLIP's caption swap: each caption embedding -> the bank entry nearest its image.

        j*(i) = argmax_j <image_i, bank_j>,   text'_i = bank_{j*(i)}

    The swapped rows are bank constants (no gradient); train CLIP on (image_emb, text'). The
    nearest neighbour is by dot product of the embeddings as given (cosine for unit rows).

    Args:
        image_emb: (B, D) image embeddings (the queries).
        text_emb: (B, D) the caption embeddings being replaced (fix shape and dtype of the output).
        bank: a ``TextMemoryBank`` or a (K, D) tensor of caption embeddings.

    Returns:
        (swapped (B, D) in text_emb's dtype, index (B,) of the chosen bank rows).

    Reference: Yang et al. 2023, "Robust Contrastive Language-Image Pretraining against Data
    Poisoning and Backdoor Attacks" (RoCLIP), arXiv 2303.06854.
    """
    fn = "roclip_swap"
    entries = bank.stored() if isinstance(bank, TextMemoryBank) else bank
    check_same_device(fn, image_emb=image_emb, text_emb=text_emb, bank=entries)
    image_emb, text_emb = _check_paired_embeddings(fn, image_emb, text_emb, 1, ("image_emb", "text_emb"))
    if isinstance(entries, torch.Tensor) and entries.dim() == 2 and entries.shape[0] == 0:
        raise InputError(f"{fn}: argument 'bank' is empty; update it with caption embeddings first.")
    entries = check_embeddings(fn, "bank", entries, shape="(K, D)", dim=image_emb.shape[1], like="image_emb")
    dtype = compute_dtype(image_emb, entries)
    with torch.no_grad():
        index = (image_emb.detach().to(dtype) @ entries.to(dtype).T).argmax(dim=1)
    return entries.detach()[index].to(text_emb.dtype), index


def nn_positive_contrast(
    z: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    anchors: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Unimodal contrast with each row's nearest neighbour as its positive (SafeCLIP's unimodal CL).

        n(a) = argmax_{j != a} <z_a, z_j>   (chosen without gradient)
        L_a  = LSE_{j != a} s <z_a, z_j> - s <z_a, z_n(a)>

    over the anchors a (all rows by default); the positive and the negatives are the other rows
    of the batch, with gradient.

    Args:
        z: (B, D) embeddings of one modality, B >= 3 (a neighbour and a negative).
        scale: multiplicative logit scale s >= 0.
        anchors: (B,) bool, the rows that are anchors (e.g. SafeCLIP's risky pairs); every row
            stays a candidate.
        reduction: ``"mean"`` over anchors, ``"sum"``, or ``"none"`` -> (A,) per anchor.

    Raises:
        NoPositivePairsError: no row is an anchor.

    Reference: Yang et al. 2024, "Better Safe than Sorry: Pre-training CLIP against Targeted
    Data Poisoning and Backdoor Attacks" (SafeCLIP), arXiv 2310.05862; NNCLR, arXiv 2104.14548.
    """
    fn = "nn_positive_contrast"
    check_same_device(fn, z=z, scale=scale, anchors=anchors)
    z = check_embeddings(fn, "z", z)
    scale = check_scale(fn, "scale", scale)
    batch = z.shape[0]
    if batch < 3:
        raise InputError(f"{fn}: needs at least 3 rows (a neighbour and a negative); got {batch}.")
    anchors = torch.ones(batch, dtype=torch.bool, device=z.device) if anchors is None else anchors
    anchors = check_mask(fn, "anchors", anchors, (batch,))
    if not bool(anchors.any()):
        raise NoPositivePairsError(f"{fn}: argument 'anchors' selects no row; the loss is undefined.")
    self_pair = torch.eye(batch, dtype=torch.bool, device=z.device)
    with torch.no_grad():
        similarity = z.detach().to(compute_dtype(z)) @ z.detach().to(compute_dtype(z)).T
        neighbour = similarity.masked_fill(self_pair, -math.inf).argmax(dim=1)
    positive = F.one_hot(neighbour, batch).bool()
    return info_nce(
        z[anchors],
        z,
        scale,
        positive_mask=positive[anchors],
        ignore_mask=self_pair[anchors],
        reduction=reduction,
    )


def safeclip_loss(
    x: torch.Tensor, y: torch.Tensor, safe: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """SafeCLIP's objective: CLIP on the safe pairs, unimodal NN contrast on the risky ones.

        L = (|S|/B) L_CLIP(x_S, y_S) + (|R|/B) 1/2 [ NN(x; anchors R) + NN(y; anchors R) ]

    with NN = ``nn_positive_contrast`` (neighbours and negatives from the whole batch). The
    share weights are ours (the paper does not state how the two parts are combined). A lone
    safe pair has no CLIP negative and is treated as risky. All-risky (``safe`` all False) is
    SafeCLIP's warm-up.

    Args:
        x, y: (B, D) image and text embeddings, B >= 3.
        safe: (B,) bool, True for pairs trained with CLIP.
        scale: multiplicative logit scale s >= 0.

    Reference: Yang et al. 2024 (SafeCLIP), arXiv 2310.05862.
    """
    fn = "safeclip_loss"
    check_same_device(fn, x=x, y=y, safe=safe, scale=scale)
    x, y = _check_paired_embeddings(fn, x, y, 3)
    safe = check_mask(fn, "safe", safe, (x.shape[0],))
    scale = check_scale(fn, "scale", scale)
    batch, n_safe = x.shape[0], int(safe.sum())
    if n_safe < 2:
        safe = torch.zeros_like(safe)
        n_safe = 0
    loss = None
    if n_safe:
        loss = (n_safe / batch) * clip_loss(x[safe], y[safe], scale)
    if n_safe < batch:
        risky = ~safe
        unimodal = 0.5 * (
            nn_positive_contrast(x, scale, anchors=risky) + nn_positive_contrast(y, scale, anchors=risky)
        )
        term = ((batch - n_safe) / batch) * unimodal
        loss = term if loss is None else loss + term
    return loss


def safe_fraction_schedule(
    step: int, total_steps: int, warmup_steps: int, start: float = 0.1, end: float = 1.0
) -> float:
    """The largest share of a batch SafeCLIP may train as safe at ``step`` (ours; the paper grows
    the safe set but leaves the schedule open).

        f(t) = 0                                               t < warmup_steps
        f(t) = start + (end - start) min(1, (t - warmup) / max(1, total - warmup))   after

    Args:
        step: the optimiser step t >= 0 (0-based).
        total_steps: the run's length.
        warmup_steps: unimodal-only steps.
        start, end: the share right after warm-up and at the end, 0 <= start <= end <= 1.
    """
    fn = "safe_fraction_schedule"
    for name, value in (("step", step), ("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{fn}: argument '{name}' must be an int >= 0; got {value!r}.")
    start = check_range(fn, "start", start, 0.0, 1.0)
    end = check_range(fn, "end", end, start, 1.0)
    if step < warmup_steps:
        return 0.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return start + (end - start) * progress


def safeclip_split(similarities: torch.Tensor, fraction: float) -> torch.Tensor:
    """SafeCLIP's safe set: the GMM-safe pairs (``gmm_safe_split``: posterior > 0.5 for the
    high-mean component), capped at the floor(fraction * N) with the highest posterior.

    Args:
        similarities: (N,) matched-pair cosines cos(x_i, y_i).
        fraction: the cap in [0, 1] (``safe_fraction_schedule``).

    Returns:
        (N,) bool, True for safe pairs.
    """
    fn = "safeclip_split"
    fraction = check_range(fn, "fraction", fraction, 0.0, 1.0)
    similarities = check_tensor(fn, "similarities", similarities)
    if similarities.dim() != 1:
        raise InputError(
            f"{fn}: argument 'similarities' must be a (N,) tensor of matched-pair cosines; got shape "
            f"{tuple(similarities.shape)}."
        )
    check_finite(fn, "similarities", similarities)  # also during warm-up (cap 0): never silent
    cap = math.floor(fraction * similarities.shape[0])
    safe = torch.zeros(similarities.shape, dtype=torch.bool, device=similarities.device)
    if cap == 0:
        return safe
    split = gmm_safe_split(similarities.detach())
    posterior = split.posterior.to(similarities.device)
    gmm_safe = split.safe.to(similarities.device)
    ranked = torch.where(gmm_safe, posterior.double(), -math.inf).argsort(descending=True)
    keep = ranked[: min(cap, int(gmm_safe.sum()))]
    safe[keep] = True
    return safe


def matched_cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(x_i, y_i), (B,), in the loss compute dtype (fp32 for half inputs)."""
    dtype = compute_dtype(x, y)
    return (F.normalize(x.to(dtype), dim=1, eps=1e-12) * F.normalize(y.to(dtype), dim=1, eps=1e-12)).sum(1)


def flag_top_pairs(x: torch.Tensor, y: torch.Tensor, fraction: float = 0.02) -> torch.Tensor:
    """The unlearning flags: the top ceil(fraction * B) pairs by cos(x_i, y_i) (detected, not oracle).

    At least one pair is flagged, and at least two stay unflagged for CLIP.

    Returns:
        (B,) bool.
    """
    fn = "flag_top_pairs"
    check_same_device(fn, x=x, y=y)
    x, y = _check_paired_embeddings(fn, x, y, 3)
    fraction = check_range(fn, "fraction", fraction, 0.0, 1.0, high_open=True)
    if fraction == 0:
        raise InputError(f"{fn}: argument 'fraction' must be > 0 (the share of pairs flagged); got 0.")
    batch = x.shape[0]
    k = math.ceil(fraction * batch)
    if batch - k < 2:
        raise InputError(
            f"{fn}: flagging {k} of {batch} pairs leaves fewer than 2 for CLIP; lower 'fraction' or "
            f"use a larger batch."
        )
    with torch.no_grad():
        top = matched_cosines(x.detach(), y.detach()).topk(k).indices
    flags = torch.zeros(batch, dtype=torch.bool, device=x.device)
    flags[top] = True
    return flags


def unlearn_penalty(
    x: torch.Tensor,
    y: torch.Tensor,
    flags: torch.Tensor,
    target: float = -1.0,
    weight: float = 1.0,
) -> torch.Tensor:
    """Similarity unlearning: push the flagged pairs' cosine towards the desired value c*.

        P = weight * mean_{i flagged} (cos(x_i, y_i) - c*)^2

    c* is the cosine we want (-1: opposite). The release writes (cos + target)^2 with target -1,
    which pulls the similarity up; METHODS 3.6 corrects it to this form.

    Args:
        x, y: (B, D) embeddings (any norm; the cosine normalises them).
        flags: (B,) bool, the pairs to unlearn (``flag_top_pairs``).
        target: c* in [-1, 1].
        weight: >= 0.

    Raises:
        NoPositivePairsError: no pair is flagged.

    Reference: METHODS 3.6 (after the BadCLIP++ evaluation, arXiv 2602.17168).
    """
    fn = "unlearn_penalty"
    check_same_device(fn, x=x, y=y, flags=flags)
    x, y = _check_paired_embeddings(fn, x, y, 1)
    flags = check_mask(fn, "flags", flags, (x.shape[0],))
    target = check_range(fn, "target", target, -1.0, 1.0)
    weight = check_range(fn, "weight", weight, 0.0, math.inf)
    check_nonzero_rows(fn, "x", x)
    check_nonzero_rows(fn, "y", y)
    if not bool(flags.any()):
        raise NoPositivePairsError(f"{fn}: argument 'flags' flags no pair; the penalty is undefined.")
    return weight * (matched_cosines(x[flags], y[flags]) - target).pow(2).mean()


def unlearn_clip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    *,
    fraction: float = 0.02,
    target: float = -1.0,
    weight: float = 1.0,
) -> torch.Tensor:
    """CLIP without the flagged pairs plus the unlearning penalty on them.

        F = flag_top_pairs(x, y, fraction)
        L = L_CLIP(x_{not F}, y_{not F}) + unlearn_penalty(x, y, F, target, weight)

    Flagged pairs leave the CLIP batch entirely (neither positives nor negatives).

    Reference: METHODS 3.6.
    """
    flags = flag_top_pairs(x, y, fraction)
    check_scale("unlearn_clip_loss", "scale", scale)
    keep = ~flags
    return clip_loss(x[keep], y[keep], scale) + unlearn_penalty(x, y, flags, target, weight)
