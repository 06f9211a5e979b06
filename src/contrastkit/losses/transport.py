"""Optimal-transport losses: the generalised KL and SIGROT (ViCLIP-OT), with its CLIP/SigLIP hybrids.

SIGROT (METHODS.md 3.2, arXiv 2602.22678) matches the unbalanced entropic transport plan between a
batch of images and captions to a many-to-many "graph prior" built from a frozen teacher, so that
near-duplicate captions and images of one scene are not pushed apart as negatives.
"""

from __future__ import annotations

import math
import numbers

import torch

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_finite,
    check_same_device,
    check_tensor,
)
from contrastkit.functional import compute_dtype, log_sinkhorn
from contrastkit.losses.clip import clip_loss
from contrastkit.losses.sigmoid import siglip_loss

DEFAULT_PRIOR_SCALE = 20.0
"""The teacher prior's logit multiplier: G = rowsoftmax(prior_scale * S) (= S / 0.05)."""


def generalized_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised (unnormalised) KL divergence between non-negative tensors of one shape.

        GKL(A || B) = sum_k [ A_k (log A_k - log B_k) - A_k + B_k ]

    with the conventions 0 log 0 = 0 and 0 log(0/0) = 0: an entry with A_k = 0 contributes B_k, an
    entry with A_k > 0 and B_k = 0 contributes +inf. It is >= 0, and 0 exactly when A = B; for
    A, B of equal total mass it is the ordinary KL. Argument order as in METHODS 3.2: the plan
    first, the prior second. The gradient w.r.t. A is log(A / B), undefined (-inf) where A = 0.

    Args:
        a: non-negative, finite tensor A (any shape).
        b: non-negative, finite tensor B of A's shape.

    Returns:
        The 0-d sum, float32 (float64 if either input is float64).

    Example:
        >>> generalized_kl(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
        tensor(0.)
    """
    fn = "generalized_kl"
    check_same_device(fn, a=a, b=b)
    a, b = check_tensor(fn, "a", a), check_tensor(fn, "b", b)
    if a.shape != b.shape:
        raise InputError(f"{fn}: 'a' and 'b' must have one shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    for name, t in (("a", a), ("b", b)):
        check_finite(fn, name, t)
        if bool((t < 0).any()):
            bad = int((t < 0).sum())
            raise InputError(f"{fn}: argument '{name}' must be non-negative; got {bad} negative entr(y/ies).")
    dtype = compute_dtype(a, b)
    a, b = a.to(dtype), b.to(dtype)
    return (torch.xlogy(a, a) - torch.xlogy(a, b) - a + b).sum()


def _gkl_from_logs(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """GKL(e^log_a || e^log_b) from logs (no log 0 when an entry underflows)."""
    a = log_a.exp()
    return (a * (log_a - log_b) - a + log_b.exp()).sum()


def _check_positive(fn: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InputError(f"{fn}: argument '{name}' must be a finite float > 0; got {value!r}.")
    return float(value)


def _prior_scale(fn: str, prior_tau: float | None, prior_scale: float | None) -> float:
    if prior_tau is not None and prior_scale is not None:
        raise InputError(
            f"{fn}: pass 'prior_tau' or 'prior_scale', not both (prior_scale = 1 / prior_tau); got "
            f"prior_tau={prior_tau!r}, prior_scale={prior_scale!r}."
        )
    if prior_tau is not None:
        return 1.0 / _check_positive(fn, "prior_tau", prior_tau)
    if prior_scale is not None:
        return _check_positive(fn, "prior_scale", prior_scale)
    return DEFAULT_PRIOR_SCALE


def sigrot_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    *,
    epsilon: float = 0.05,
    reg_m: float = 0.5,
    n_iters: int = 200,
    prior_tau: float | None = None,
    prior_scale: float | None = None,
) -> torch.Tensor:
    """SIGROT: the unbalanced OT plan of the batch against a frozen teacher's graph prior.

        C_ij = 1 - <x_i, y_j>
        P = unbalanced Sinkhorn(C; a = b = 1/N, eps, rho = reg_m, n_iters),  T = N P
        S = 1/4 (U + V)(U + V)^T          (U, V: teacher image / text embeddings of the batch)
        G_i2t = rowsoftmax(prior_scale S),  G_t2i = rowsoftmax(prior_scale S^T)
        L = 1/2 [ GKL(T || G_i2t) + GKL(T^T || G_t2i) ] / N

    The gradient flows through the unrolled Sinkhorn iterations into x and y; the teacher is a
    constant (U, V are detached).

    The prior's sharpness: METHODS writes S / 0.05 and notes that release versions disagree on
    the prior scale, with default 20. These are one knob: ``prior_scale`` multiplies S inside the
    row softmax, and ``prior_tau`` = 1 / prior_scale divides it. Give at most one; neither means
    prior_scale = 20 (prior_tau = 0.05). S is symmetric, so G_t2i = G_i2t here; both are kept
    to follow the published form.

    Args:
        x: (N, D) image embeddings, L2-normalised by the caller (the cost assumes unit rows).
        y: (N, D) caption embeddings, row i paired with x_i.
        teacher_image: (N, E) frozen teacher image embeddings U, row i for the sample of x_i.
            The caller looks them up by the batch's dataset index / sample id
            (``teacher_bank[batch_indices]``), so rows stay aligned with x and y. L2-normalise
            them (S is then in [-1, 1]).
        teacher_text: (N, E) frozen teacher caption embeddings V, aligned the same way (same E).
        epsilon: entropic regularisation of the transport (0.05).
        reg_m: marginal weight rho of the unbalanced transport (0.5).
        n_iters: Sinkhorn iterations, all differentiated through (200).
        prior_tau: prior temperature (S / prior_tau); exclusive with ``prior_scale``.
        prior_scale: prior logit multiplier (prior_scale * S); default 20.

    Returns:
        The scalar loss, float32 (float64 for float64 input).

    Reference: ViCLIP-OT, arXiv 2602.22678 (METHODS.md 3.2).
    """
    fn = "sigrot_loss"
    check_same_device(fn, x=x, y=y, teacher_image=teacher_image, teacher_text=teacher_text)
    x = check_embeddings(fn, "x", x)
    n = x.shape[0]
    y = check_embeddings(fn, "y", y, rows=n, dim=x.shape[1], like="x")
    u = check_embeddings(fn, "teacher_image", teacher_image, rows=n, like="x")
    v = check_embeddings(fn, "teacher_text", teacher_text, rows=n, dim=u.shape[1], like="teacher_image")
    scale = _prior_scale(fn, prior_tau, prior_scale)
    dtype = compute_dtype(x, y)
    x, y = x.to(dtype), y.to(dtype)
    cost = 1 - x @ y.T
    log_t = log_sinkhorn(cost, epsilon=epsilon, reg_m=reg_m, n_iters=n_iters) + math.log(n)
    w = (u.detach().to(dtype) + v.detach().to(dtype)) / 2
    s = w @ w.T
    log_g_i2t = torch.log_softmax(scale * s, dim=1)
    log_g_t2i = torch.log_softmax(scale * s.T, dim=1)
    return 0.5 * (_gkl_from_logs(log_t, log_g_i2t) + _gkl_from_logs(log_t.T, log_g_t2i)) / n


def sigrot_hybrid_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    *,
    base: str = "clip",
    base_weight: float = 0.1,
    bias: float | torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    epsilon: float = 0.05,
    reg_m: float = 0.5,
    n_iters: int = 200,
    prior_tau: float | None = None,
    prior_scale: float | None = None,
) -> torch.Tensor:
    """ViCLIP-OT / ViSigLIP-OT: ``base_weight`` * (CLIP or SigLIP loss) + SIGROT.

        L = base_weight * clip_loss(x, y, scale, sample_ids=...) + sigrot_loss(x, y, U, V)   (base="clip")
        L = base_weight * siglip_loss(x, y, scale, bias, sample_ids=...) + sigrot_loss(...)  (base="siglip")

    Args:
        x, y: (N, D) paired, L2-normalised embeddings.
        scale: the base loss's multiplicative logit scale (learnable; SIGROT does not use it).
        teacher_image, teacher_text: (N, E) frozen teacher embeddings aligned with the batch rows
            (see ``sigrot_loss``).
        base: "clip" (ViCLIP-OT) or "siglip" (ViSigLIP-OT).
        base_weight: weight of the base loss (0.1 in the paper), >= 0.
        bias: SigLIP's logit bias (required for base="siglip"; must be None for "clip").
        sample_ids: (N,) ids; equal ids are positives of the base loss (several captions of one
            image: the "soft multi-caption labels").
        label_smoothing: CLIP's label smoothing (base="clip" only).
        epsilon, reg_m, n_iters, prior_tau, prior_scale: passed to ``sigrot_loss``.

    Returns:
        The scalar loss.
    """
    fn = "sigrot_hybrid_loss"
    base = check_choice(fn, "base", base, ("clip", "siglip"))
    if (
        isinstance(base_weight, bool)
        or not isinstance(base_weight, numbers.Real)
        or not math.isfinite(base_weight)
        or base_weight < 0
    ):
        raise InputError(f"{fn}: argument 'base_weight' must be a finite float >= 0; got {base_weight!r}.")
    if base == "clip":
        if bias is not None:
            raise InputError(f"{fn}: 'bias' is SigLIP's; base='clip' takes none (it cancels in the softmax).")
        base_loss = clip_loss(x, y, scale, label_smoothing=label_smoothing, sample_ids=sample_ids)
    else:
        if bias is None:
            raise InputError(f"{fn}: base='siglip' needs 'bias' (a scalar logit bias, e.g. -10).")
        if label_smoothing:
            raise InputError(f"{fn}: 'label_smoothing' is CLIP's; base='siglip' has none.")
        base_loss = siglip_loss(x, y, scale, bias, sample_ids=sample_ids)
    ot = sigrot_loss(
        x,
        y,
        teacher_image,
        teacher_text,
        epsilon=epsilon,
        reg_m=reg_m,
        n_iters=n_iters,
        prior_tau=prior_tau,
        prior_scale=prior_scale,
    )
    return base_weight * base_loss + ot
