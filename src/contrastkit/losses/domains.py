"""Contrast across recording domains: CRCC's cross-subject, cross-site SupCon and its objective.

Reference: CRCC, arXiv 2602.19138 (METHODS.md 3.17; the published text gives only "cross-subject/
site contrast + site-adversarial training", the defaults below are METHODS' reconstruction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_flag,
    check_labels,
    check_same_device,
    check_scalar,
    check_temperature,
)
from contrastkit.functional import REDUCTIONS, compute_dtype
from contrastkit.losses.supervised import supcon


def cross_domain_supcon(
    z: torch.Tensor,
    labels: torch.Tensor,
    subject: torch.Tensor,
    site: torch.Tensor,
    temperature: float = 0.1,
    *,
    require_cross_site: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """SupCon (L_out) whose positives come from other subjects at other sites.

    With l_ij = <z_i, z_j>/tau,

        P(i) = {p : y_p = y_i, subject_p != subject_i, site_p != site_i}
        A(i) = {j : subject_j != subject_i}          (same-subject pairs leave the denominator)
        L_i  = -(1/|P(i)|) sum_{p in P(i)} [ l_ip - LSE_{j in A(i)} l_ij ]

    Same-label pairs of other subjects at the same site stay in A(i) as negatives.
    ``require_cross_site=False`` drops the site condition from P(i). Anchors with an empty
    P(i) are left out of the mean; if none remains, ``NoPositivePairsError`` is raised.

    Args:
        z: (N, D) embeddings, used as given (normalise them first).
        labels: (N,) integer class ids y.
        subject: (N,) integer subject ids, unique across sites (one id = one person).
        site: (N,) integer site (recording centre) ids.
        temperature: tau > 0.
        require_cross_site: keep only positives recorded at another site.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` -> (N,) with NaN at the anchors left out.

    Reference: CRCC, arXiv 2602.19138; SupCon, Khosla et al. 2020, arXiv 2004.11362.
    """
    fn = "cross_domain_supcon"
    check_same_device(fn, z=z, labels=labels, subject=subject, site=site)
    z = check_embeddings(fn, "z", z)
    n = z.shape[0]
    labels = check_labels(fn, "labels", labels, n)
    subject = check_labels(fn, "subject", subject, n)
    site = check_labels(fn, "site", site, n)
    temperature = check_temperature(fn, "temperature", temperature)
    require_cross_site = check_flag(fn, "require_cross_site", require_cross_site)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    same_subject = subject[:, None] == subject[None, :]
    positive = (labels[:, None] == labels[None, :]) & ~same_subject
    if require_cross_site:
        positive &= site[:, None] != site[None, :]
    try:
        return supcon(
            z, None, temperature, positive_mask=positive, ignore_mask=same_subject, reduction=reduction
        )
    except NoPositivePairsError as err:
        where = "another subject at another site" if require_cross_site else "another subject"
        raise NoPositivePairsError(
            f"{fn}: no anchor has a positive (same label, {where}) and a negative, so the loss is "
            f"undefined. Build batches that hold at least 2 sites (and 2 subjects) per label, e.g. "
            f"with a site-balanced sampler, or pass require_cross_site=False."
        ) from err


def crcc_loss(
    class_logits: torch.Tensor,
    z: torch.Tensor,
    site_logits: torch.Tensor | None,
    labels: torch.Tensor,
    subject: torch.Tensor,
    site: torch.Tensor,
    *,
    temperature: float = 0.1,
    contrast_weight: float = 1.0,
    site_weight: float = 1.0,
    require_cross_site: bool = True,
) -> torch.Tensor:
    """CRCC's objective L = CE(class_logits, y) + w_c L_xcon(z) + w_s CE(site_logits, site).

    ``site_logits`` must come from a site classifier fed through ``grad_reverse`` (or the
    ``GradientReversal`` module of ``contrastkit.models.reversal``): minimising L then trains the
    site classifier while the reversed gradient pushes the encoder to hide the site.
    ``site_logits=None`` drops the site term and ``contrast_weight=0`` drops L_xcon (it is then
    not computed, so it cannot raise), which gives the CE-only and single-term ablations.

    Args:
        class_logits: (N, C) logits of the task classifier; labels: (N,) ids in [0, C).
        z: (N, D) embeddings for ``cross_domain_supcon`` (normalised by the caller).
        site_logits: (N, S) logits of the site classifier, or None; site: (N,) ids in [0, S).
        subject: (N,) subject ids, unique across sites.
        temperature, require_cross_site: passed to ``cross_domain_supcon``.
        contrast_weight: w_c >= 0 (METHODS: 1.0); site_weight: w_s >= 0 (1.0).

    Reference: CRCC, arXiv 2602.19138 (METHODS.md 3.17); gradient reversal, Ganin & Lempitsky
    2015, arXiv 1409.7495.
    """
    fn = "crcc_loss"
    check_same_device(fn, class_logits=class_logits, z=z, site_logits=site_logits, labels=labels, site=site)
    class_logits = check_embeddings(fn, "class_logits", class_logits, shape="(N, C)")
    n = class_logits.shape[0]
    labels = _check_targets(fn, "labels", labels, n, class_logits.shape[1], "class_logits")
    contrast_weight = float(check_scalar(fn, "contrast_weight", contrast_weight, minimum=0.0))
    site_weight = float(check_scalar(fn, "site_weight", site_weight, minimum=0.0))
    loss = F.cross_entropy(class_logits.to(compute_dtype(class_logits)), labels)
    if contrast_weight > 0:
        z = check_embeddings(fn, "z", z, rows=n, like="class_logits")
        xcon = cross_domain_supcon(
            z, labels, subject, site, temperature, require_cross_site=require_cross_site
        )
        loss = loss + contrast_weight * xcon
    if site_logits is not None:
        site_logits = check_embeddings(
            fn, "site_logits", site_logits, shape="(N, S)", rows=n, like="class_logits"
        )
        site = _check_targets(fn, "site", site, n, site_logits.shape[1], "site_logits")
        loss = loss + site_weight * F.cross_entropy(site_logits.to(compute_dtype(site_logits)), site)
    return loss


def _check_targets(fn: str, name: str, ids: object, n: int, n_classes: int, logits: str) -> torch.Tensor:
    """Check (n,) integer targets in [0, n_classes) (the columns of ``logits``)."""
    ids = check_labels(fn, name, ids, n)
    if bool(((ids < 0) | (ids >= n_classes)).any()):
        raise InputError(
            f"{fn}: argument '{name}' must hold ids in [0, {n_classes}) (the columns of '{logits}'); "
            f"got values from {int(ids.min())} to {int(ids.max())}. Give the classifier one output per id."
        )
    return ids.long()
