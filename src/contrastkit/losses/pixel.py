"""Dense contrast for segmentation (GLCL): pixel SupCon with a memory bank, prototype InfoNCE.

Local term: SupCon over class-balanced samples of labelled pixels. Global term: symmetric
InfoNCE between the class prototypes of a source and a target domain. Both follow METHODS 3.20
(GLCL, arXiv 2602.19891), whose published description leaves the details open [R].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_embeddings,
    check_generator,
    check_int,
    check_nonzero_rows,
    check_same_device,
    check_temperature,
    check_tensor,
)
from contrastkit.functional import compute_dtype, reduce_anchor_losses
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.supervised import supcon


def _check_label_map(fn: str, name: str, labels: object, shape: tuple[int, ...]) -> torch.Tensor:
    """Integer class ids of an exact shape (a label map (B, H, W) or a vector (n,))."""
    labels = check_tensor(fn, name, labels, floating=False)
    if labels.dtype == torch.bool or labels.is_complex() or labels.is_floating_point():
        raise InputError(f"{fn}: argument '{name}' must hold integer class ids; got dtype {labels.dtype}.")
    if tuple(labels.shape) != tuple(shape):
        raise InputError(
            f"{fn}: argument '{name}' must have shape {tuple(shape)} to match the features; "
            f"got {tuple(labels.shape)}."
        )
    return labels


def _check_dense(fn: str, name: str, features: object, labels_name: str, labels: object):
    """Features (B, C, H, W) and their label map (B, H, W)."""
    features = check_embeddings(fn, name, features, shape="(B, C, H, W)", ndims=(4,))
    b, _, h, w = features.shape
    return features, _check_label_map(fn, labels_name, labels, (b, h, w))


class PixelMemory:
    """Per-class FIFO queues of detached unit pixel embeddings, extra candidates for ``pixel_supcon``.

    Each class keeps its ``size_per_class`` most recent entries; ``pixel_supcon`` scores its
    anchors against the entries present when it is called, then enqueues its own sampled pixels.

    Args:
        size_per_class: capacity of each class's queue (>= 1).
        dim: embedding size C of the entries.

    Reference: Wang et al. 2021, "Exploring Cross-Image Pixel Contrast for Semantic
    Segmentation", arXiv 2101.11939 (pixel queues).
    """

    def __init__(self, size_per_class: int, dim: int) -> None:
        fn = "PixelMemory"
        self.size_per_class = check_int(fn, "size_per_class", size_per_class, 1)
        self.dim = check_int(fn, "dim", dim, 1)
        self._queues: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return sum(q.shape[0] for q in self._queues.values())

    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append detached copies of embeddings (n, dim) under their class ids labels (n,),
        dropping each class's oldest entries beyond ``size_per_class``."""
        fn = "PixelMemory.enqueue"
        check_same_device(fn, embeddings=embeddings, labels=labels)
        embeddings = check_embeddings(fn, "embeddings", embeddings, shape="(n, dim)", dim=self.dim)
        labels = _check_label_map(fn, "labels", labels, (embeddings.shape[0],))
        embeddings = embeddings.detach()
        for c in labels.unique().tolist():
            new = embeddings[labels == c]
            old = self._queues.get(c)
            queue = new if old is None else torch.cat([old.to(new), new])
            self._queues[c] = queue[-self.size_per_class :].clone()

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All entries (M, dim) and their class ids (M,), classes in ascending order, oldest
        first within a class; (0, dim) and (0,) when empty."""
        if not self._queues:
            return torch.empty(0, self.dim), torch.empty(0, dtype=torch.long)
        classes = sorted(self._queues)
        embeddings = torch.cat([self._queues[c] for c in classes])
        labels = torch.cat(
            [torch.full((self._queues[c].shape[0],), c, device=embeddings.device) for c in classes]
        )
        return embeddings, labels


def sample_pixels_per_class(
    labels: torch.Tensor,
    per_class: int = 256,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class-balanced pixel sample: flat indices into ``labels.reshape(-1)``.

    For every class c != ignore_index present, all of its pixels if it has <= ``per_class``,
    else ``per_class`` of them drawn uniformly without replacement with ``generator``.

    Args:
        labels: (B, H, W) (any shape) integer class ids, ``ignore_index`` for unlabelled pixels.
        per_class: the most anchors kept per class (>= 1).
        ignore_index: the id of pixels never sampled.
        generator: the random source (None: the global one); its device draws the permutations.

    Returns:
        (n,) long indices, grouped by ascending class, on the device of ``labels``.
    """
    fn = "sample_pixels_per_class"
    labels = check_tensor(fn, "labels", labels, floating=False)
    labels = _check_label_map(fn, "labels", labels, tuple(labels.shape))  # integer ids, any shape
    per_class = check_int(fn, "per_class", per_class, 1)
    ignore_index = check_int(fn, "ignore_index", ignore_index)
    check_generator(fn, generator)
    flat = labels.reshape(-1)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    chosen = []
    for c in flat[flat != ignore_index].unique().tolist():
        pixels = (flat == c).nonzero()[:, 0]
        if pixels.shape[0] > per_class:
            order = torch.randperm(pixels.shape[0], generator=generator, device=draw_device)
            pixels = pixels[order[:per_class].to(pixels.device)]
        chosen.append(pixels)
    if not chosen:
        return flat.new_empty(0, dtype=torch.long)
    return torch.cat(chosen)


def pixel_supcon(
    features: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    per_class: int = 256,
    temperature: float = 0.1,
    memory: PixelMemory | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pixel-level SupCon (GLCL's local term) over class-balanced pixel samples.

    The anchors are the pixels drawn by ``sample_pixels_per_class``, z_a = f_a / ||f_a||
    (normalised here, over the channels). With M the memory entries present at the call,

        L_a = -(1/|P(a)|) sum_{p in P(a)} [ l_ap - LSE_{j in A(a)} l_aj ],  l_aj = <z_a, z_j>/tau,

    A(a) = the other sampled pixels and M, P(a) = the members of A(a) of a's class; L is the mean
    over the anchors that have a positive and a negative. This is ``supcon`` over the sampled
    pixels and M with only the sampled pixels as anchors (M holds no gradient). Afterwards the
    sampled unit pixels are enqueued (detached) into ``memory``.

    Args:
        features: (B, C, H, W) projected pixel features (any scale: they are L2-normalised).
        labels: (B, H, W) integer class ids; ``ignore_index`` marks unlabelled pixels (e.g.
            target pixels whose teacher confidence is below the threshold).
        ignore_index: the id of ignored pixels.
        per_class: the most anchors per class (all of a class if fewer); 256 in METHODS 3.20.
        temperature: tau > 0.
        memory: optional ``PixelMemory`` of width C, read then updated in place.
        generator: the random source of the sampling (None: the global one).

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Raises:
        InputError: bad shapes or dtypes, NaN/inf, an all-zero sampled pixel, bad options.
        NoPositivePairsError: every pixel ignored, one class only (memory included), or no
            sampled class with two members.

    Example:
        >>> feats, labels = torch.randn(2, 16, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> loss = pixel_supcon(feats, labels, per_class=32, generator=torch.Generator().manual_seed(0))

    Reference: GLCL, arXiv 2602.19891 (local term); Khosla et al. 2020, arXiv 2004.11362.
    """
    fn = "pixel_supcon"
    check_same_device(fn, features=features, labels=labels)
    features, labels = _check_dense(fn, "features", features, "labels", labels)
    temperature = check_temperature(fn, "temperature", temperature)
    per_class = check_int(fn, "per_class", per_class, 1)
    ignore_index = check_int(fn, "ignore_index", ignore_index)
    channels = features.shape[1]
    if memory is not None and not isinstance(memory, PixelMemory):
        raise InputError(
            f"{fn}: argument 'memory' must be a PixelMemory or None; got {type(memory).__name__}."
        )
    if memory is not None and memory.dim != channels:
        raise InputError(
            f"{fn}: argument 'memory' has dim {memory.dim}, but 'features' has {channels} channels. "
            f"Build it as PixelMemory(size_per_class, dim={channels})."
        )
    index = sample_pixels_per_class(labels, per_class, ignore_index, generator)
    if index.numel() == 0:
        raise NoPositivePairsError(
            f"{fn}: every pixel of 'labels' is ignore_index={ignore_index}, so there is no anchor. "
            f"Skip the term for this batch (or lower the pseudo-label threshold)."
        )
    per_image = labels[0].numel()
    sampled = features.flatten(2)[index // per_image, :, index % per_image]  # (n, C)
    check_nonzero_rows(fn, "features", sampled)
    z = F.normalize(sampled.to(compute_dtype(features)), dim=1)
    sampled_labels = labels.reshape(-1)[index]
    bank, bank_labels = memory.entries() if memory is not None else (z[:0], sampled_labels[:0])
    candidates = torch.cat([z, bank.to(z)])
    candidate_labels = torch.cat([sampled_labels, bank_labels.to(sampled_labels)])
    _check_contrast(fn, sampled_labels, candidate_labels)
    per_anchor = supcon(candidates, candidate_labels, temperature, reduction="none")[: z.shape[0]]
    valid = ~per_anchor.isnan()
    loss = reduce_anchor_losses(fn, per_anchor[valid], valid)
    if memory is not None:
        memory.enqueue(z, sampled_labels)
    return loss


def _check_contrast(fn: str, anchor_labels: torch.Tensor, candidate_labels: torch.Tensor) -> None:
    """Raise unless some anchor has a positive (a second member of its class) and a negative."""
    classes, counts = candidate_labels.unique(return_counts=True)
    if classes.numel() < 2:
        raise NoPositivePairsError(
            f"{fn}: only class {int(classes[0])} is labelled in this batch (memory included), so "
            f"no pixel has a negative. Skip the term for this batch or add labelled pixels of "
            f"another class."
        )
    shared = torch.isin(classes[counts > 1], anchor_labels)
    if not bool(shared.any()):
        raise NoPositivePairsError(
            f"{fn}: every sampled class has a single pixel (memory included), so no anchor has a "
            f"positive. Raise 'per_class' or pass a 'memory'."
        )


def _class_sums(
    fn: str, name: str, features: torch.Tensor, labels: torch.Tensor, n_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (K, C) of features (B, C, H, W) (in their dtype) and pixel counts
    (K,); a class without pixels gets a zero row. The sum has the masked mean's direction, so
    normalising either gives the same prototype."""
    flat_labels = labels.reshape(-1)
    kept = flat_labels != ignore_index
    bad = kept & ((flat_labels < 0) | (flat_labels >= n_classes))
    if bool(bad.any()):
        value = int(flat_labels[bad][0])
        raise InputError(
            f"{fn}: argument '{name}' holds class id {value}, outside [0, n_classes={n_classes}) and "
            f"not ignore_index={ignore_index}."
        )
    pixels = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])[kept]
    classes = flat_labels[kept].long()
    sums = pixels.new_zeros(n_classes, pixels.shape[1]).index_add(0, classes, pixels)
    return sums, torch.bincount(classes, minlength=n_classes)


def prototype_info_nce(
    feat_s: torch.Tensor,
    labels_s: torch.Tensor,
    feat_t: torch.Tensor,
    labels_t: torch.Tensor,
    n_classes: int,
    temperature: float = 0.1,
    *,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Symmetric InfoNCE between source and target class prototypes (GLCL's global term).

    For each domain d and class k, the masked mean m_k^d = (1/|S_k^d|) sum_{i in S_k^d} f_i over
    the pixels S_k^d labelled k, normalised: p_k^d = m_k^d / ||m_k^d||. Over the K' classes
    present in both domains, l_kj = <p_k^s, p_j^t>/tau and

        L = 1/2 [ CE(l, diag) + CE(l^T, diag) ]      (``clip_loss`` with scale 1/tau).

    Classes absent from either domain are skipped.

    Args:
        feat_s: (B_s, C, H_s, W_s) source features; feat_t: (B_t, C, H_t, W_t) target features.
        labels_s: (B_s, H_s, W_s), labels_t: (B_t, H_t, W_t) integer ids in [0, n_classes) or
            ``ignore_index`` (e.g. target teacher pseudo-labels).
        n_classes: K >= 2.
        temperature: tau > 0.
        ignore_index: the id of ignored pixels.

    Returns:
        The scalar loss, float32 (float64 if either feature map is float64).

    Raises:
        InputError: bad shapes, dtypes or ids, NaN/inf, a zero prototype.
        NoPositivePairsError: fewer than 2 classes present in both domains (with one the loss is
            identically 0).

    Reference: GLCL, arXiv 2602.19891 (global term); METHODS 3.20.
    """
    fn = "prototype_info_nce"
    check_same_device(fn, feat_s=feat_s, labels_s=labels_s, feat_t=feat_t, labels_t=labels_t)
    feat_s, labels_s = _check_dense(fn, "feat_s", feat_s, "labels_s", labels_s)
    feat_t, labels_t = _check_dense(fn, "feat_t", feat_t, "labels_t", labels_t)
    if feat_t.shape[1] != feat_s.shape[1]:
        raise InputError(
            f"{fn}: 'feat_t' must have the {feat_s.shape[1]} channels of 'feat_s'; got shape "
            f"{tuple(feat_t.shape)}."
        )
    n_classes = check_int(fn, "n_classes", n_classes, 2)
    ignore_index = check_int(fn, "ignore_index", ignore_index)
    scale = 1.0 / check_temperature(fn, "temperature", temperature)
    dtype = compute_dtype(feat_s, feat_t)
    sums_s, counts_s = _class_sums(fn, "labels_s", feat_s.to(dtype), labels_s, n_classes, ignore_index)
    sums_t, counts_t = _class_sums(fn, "labels_t", feat_t.to(dtype), labels_t, n_classes, ignore_index)
    shared = (counts_s > 0) & (counts_t > 0)
    if int(shared.sum()) < 2:
        present = shared.nonzero()[:, 0].tolist()
        raise NoPositivePairsError(
            f"{fn}: classes present in both domains: {present}; at least 2 are needed (one alone "
            f"gives a loss of exactly 0). Skip the term for this batch."
        )
    for name, sums in (("feat_s", sums_s), ("feat_t", sums_t)):
        zero = shared & (sums.detach().abs().amax(dim=1) == 0)
        if bool(zero.any()):
            raise InputError(
                f"{fn}: the mean of '{name}' over class(es) {zero.nonzero()[:, 0].tolist()} is an "
                f"all-zero vector, which has no direction. Check the features (dead units)."
            )
    return clip_loss(F.normalize(sums_s[shared], dim=1), F.normalize(sums_t[shared], dim=1), scale)
