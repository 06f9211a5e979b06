"""Contrastive losses on hyperbolic manifolds (``contrastkit.geometry``): logits are -distance / tau."""

from __future__ import annotations

import torch

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_flag,
    check_has_negatives,
    check_labels,
    check_nonzero_rows,
    check_same_device,
    check_scalar,
    check_temperature,
)
from contrastkit.functional import compute_dtype, multi_positive_cross_entropy, reduce_anchor_losses
from contrastkit.geometry import Manifold, PoincareBall
from contrastkit.losses.supervised import supcon


def _check_manifold(fn: str, manifold: object) -> Manifold:
    if not isinstance(manifold, Manifold):
        raise InputError(
            f"{fn}: argument 'manifold' must be a contrastkit.geometry manifold (PoincareBall, "
            f"Lorentz or Euclidean); got {type(manifold).__name__}."
        )
    return manifold


def hyperbolic_info_nce(
    u: torch.Tensor,
    w: torch.Tensor,
    manifold: Manifold,
    temperature: float = 0.1,
    symmetric: bool = True,
) -> torch.Tensor:
    """InfoNCE with negative geodesic distances as logits (L-HAKT's hyperbolic contrast).

        l_ij = -d_c(u_i, w_j) / tau
        L = 1/2 [ CE(l, arange(B)) + CE(l^T, arange(B)) ]     (symmetric=True; METHODS 1.2)
        L = CE(l, arange(B))                                   (symmetric=False: u -> w only)

    Args:
        u: (B, D) points on ``manifold`` ((B, D+1) for ``Lorentz``), row i paired with w_i.
        w: (B, D) points of the other source, same shape.
        manifold: a ``contrastkit.geometry`` manifold (``PoincareBall``, ``Lorentz``,
            ``Euclidean``); a learnable curvature gets its gradient through the distances.
        temperature: tau > 0.
        symmetric: average both directions (True) or score u against w only.

    Returns:
        The scalar loss, float32 (float64 for float64 input; half inputs are upcast).

    Example:
        >>> ball = PoincareBall(c=1.0, learnable=True)
        >>> u, w = ball.expmap0(torch.randn(8, 4)), ball.expmap0(torch.randn(8, 4))
        >>> loss = hyperbolic_info_nce(u, w, ball, temperature=0.1)

    Reference: L-HAKT, arXiv 2602.22879 (METHODS 3.11); distances as in arXiv 1805.09112.
    """
    fn = "hyperbolic_info_nce"
    manifold = _check_manifold(fn, manifold)
    check_same_device(fn, u=u, w=w)
    u = check_embeddings(fn, "u", u)
    w = check_embeddings(fn, "w", w, rows=u.shape[0], dim=u.shape[1], like="u")
    temperature = check_temperature(fn, "temperature", temperature)
    check_flag(fn, "symmetric", symmetric)
    manifold.check_point(fn, "u", u)
    manifold.check_point(fn, "w", w)
    batch = u.shape[0]
    check_has_negatives(fn, batch, f"the batch holds {batch} pair")
    dtype = compute_dtype(u, w)
    logits = -manifold.pairwise_dist(u.to(dtype), w.to(dtype)) / temperature
    positive = torch.eye(batch, dtype=torch.bool, device=logits.device)
    forward = reduce_anchor_losses(fn, *multi_positive_cross_entropy(logits, positive))
    if not symmetric:
        return forward
    return 0.5 * (forward + reduce_anchor_losses(fn, *multi_positive_cross_entropy(logits.T, positive)))


RADIAL_MODES = ("consistency", "margin")


def decoupled_hyperbolic_supcon(
    x_ball: torch.Tensor,
    labels: torch.Tensor,
    manifold: Manifold,
    tau_ang: float = 0.1,
    lambda_rad: float = 0.1,
    radial_mode: str = "consistency",
    intensity: torch.Tensor | None = None,
    margin: float = 0.1,
) -> torch.Tensor:
    """Decoupled radial/angular hyperbolic SupCon (EC-Net): direction carries the class, radius
    the intensity.

    With rho_i = d_c(0, x_i) = (2/sqrt c) artanh(sqrt c ||x_i||) (``manifold.dist0``) and the
    direction u_i = x_i / ||x_i||:

        L     = L_ang + lambda_rad * L_rad
        L_ang = SupCon(u, labels, tau_ang)                            (``supcon``, L_out form)
        L_rad = mean_{i != j, y_i = y_j} (rho_i - rho_j)^2             ("consistency")
              = mean_{intensity_i < intensity_j} max(0, rho_i - rho_j + margin)   ("margin")

    "margin" ranks every pair of the batch (both classes alike) whose intensities differ: the
    more intense sample must lie at least ``margin`` further from the origin. Tied intensities
    make no pair.

    Args:
        x_ball: (N, D) points of the Poincare ball (c ||x||^2 < 1; e.g. ``manifold.expmap0(h)``),
            no row at the origin (its direction is undefined).
        labels: (N,) integer class ids.
        manifold: a ``PoincareBall``; a learnable curvature gets its gradient through rho.
        tau_ang: SupCon temperature > 0 of the angular term.
        lambda_rad: weight >= 0 of the radial term.
        radial_mode: ``"consistency"`` or ``"margin"`` (needs ``intensity``).
        intensity: (N,) finite floats, the graded label ("margin" only).
        margin: radial margin >= 0 ("margin" only).

    Raises ``NoPositivePairsError`` when no class has two samples ("consistency"; SupCon too)
    or when all intensities tie ("margin").

    Reference: EC-Net, arXiv 2602.16161 (only the decoupling is published; the radial terms are
    METHODS.md 3.12's reconstruction).
    """
    fn = "decoupled_hyperbolic_supcon"
    if not isinstance(manifold, PoincareBall):
        raise InputError(
            f"{fn}: argument 'manifold' must be a contrastkit.geometry PoincareBall (the radius and "
            f"direction are taken in the ball); got {type(manifold).__name__}."
        )
    check_same_device(fn, x_ball=x_ball, labels=labels, intensity=intensity)
    x_ball = check_embeddings(fn, "x_ball", x_ball)
    n = x_ball.shape[0]
    labels = check_labels(fn, "labels", labels, n)
    tau_ang = check_temperature(fn, "tau_ang", tau_ang)
    lambda_rad = check_scalar(fn, "lambda_rad", lambda_rad, minimum=0.0)
    radial_mode = check_choice(fn, "radial_mode", radial_mode, RADIAL_MODES)
    margin = check_scalar(fn, "margin", margin, minimum=0.0)
    if radial_mode == "margin":
        if intensity is None:
            raise InputError(
                f"{fn}: radial_mode='margin' orders pairs by intensity; pass 'intensity' (N,) "
                f"floats, or use radial_mode='consistency'."
            )
        intensity = check_embeddings(fn, "intensity", intensity, shape="(N,)", ndims=(1,), rows=n)
    elif intensity is not None:
        raise InputError(
            f"{fn}: 'intensity' is used by radial_mode='margin' only; drop it or set radial_mode='margin'."
        )
    manifold.check_point(fn, "x_ball", x_ball)
    check_nonzero_rows(fn, "x_ball", x_ball)

    x = x_ball.to(compute_dtype(x_ball))
    rho = manifold.dist0(x)
    if radial_mode == "consistency":
        pairs = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=x.device)
        per_pair = (rho[:, None] - rho[None, :]) ** 2
        what = "two samples of one class"
    else:
        pairs = intensity[:, None] < intensity[None, :]
        per_pair = torch.relu(rho[:, None] - rho[None, :] + margin)
        what = "two samples of different intensity"
    if not bool(pairs.any()):
        raise NoPositivePairsError(
            f"{fn}: the radial term (radial_mode={radial_mode!r}) has no pair: the batch needs {what}."
        )
    angular = supcon(x / x.norm(dim=1, keepdim=True), labels, tau_ang)
    return angular + lambda_rad * per_pair[pairs].mean()
