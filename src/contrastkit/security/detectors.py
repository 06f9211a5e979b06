"""Poisoned-pair detectors: kNN density scores (k-distance, LID, DAO), a GMM safe/risky split of
matched-pair cosine, and the AUROC of a detector against known poison.

Huang et al., "Detecting Backdoor Samples in Contrastive Language Image Pretraining" (ICLR 2025,
arXiv 2502.01385); SafeCLIP (Yang et al., ICML 2024, arXiv 2310.05862); METHODS 3.6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contrastkit.errors import (
    InputError,
    check_choice,
    check_embeddings,
    check_int,
    check_same_device,
    check_tensor,
)
from contrastkit.functional import compute_dtype

METHODS = ("k_distance", "lid", "dao")
FORMS = ("log", "power")


def knn_distances(
    query: torch.Tensor, reference: torch.Tensor, k: int, chunk_size: int, fn: str = "knn_distances"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (N, k) to the k nearest reference rows at a positive distance, ascending,
    and their (N, k) indices into ``reference``; exact, computed ``chunk_size`` query rows at a time
    (memory chunk_size x M). Distance-0 rows (the query itself, exact duplicates) are not neighbours.
    """
    out_d, out_i = [], []
    for start in range(0, query.shape[0], chunk_size):
        # the direct (difference-based) kernel: exact, and exactly 0 for identical rows
        d = torch.cdist(
            query[start : start + chunk_size], reference, compute_mode="donot_use_mm_for_euclid_dist"
        )
        d = d.masked_fill(d == 0, float("inf"))
        values, indices = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        if values.shape[1] < k or bool(torch.isinf(values[:, -1]).any()):
            row = start + int(torch.isinf(values[:, -1]).nonzero()[0, 0]) if values.shape[1] == k else start
            raise InputError(
                f"{fn}: row {row} has fewer than k = {k} reference rows at a positive distance "
                f"({reference.shape[0]} rows in all; identical rows are not neighbours). Use a smaller "
                f"k or more (distinct) rows."
            )
        out_d.append(values)
        out_i.append(indices)
    return torch.cat(out_d), torch.cat(out_i)


def lid_mle(distances: torch.Tensor) -> torch.Tensor:
    """LID maximum-likelihood estimate from ascending positive kNN distances (N, k):

    LID = -k / sum_{i<=k} log(d_i / d_k)     (Levina & Bickel 2004; +inf when all d_i = d_k)
    """
    k = distances.shape[1]
    total = torch.log(distances / distances[:, -1:]).sum(dim=1)
    return torch.where(total == 0, torch.full_like(total, float("inf")), -k / total)


def knn_outlier_scores(
    z: torch.Tensor,
    reference: torch.Tensor | None = None,
    k: int = 32,
    method: str = "dao",
    form: str = "log",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """kNN outlier scores of embeddings; higher = sparser neighbourhood = more suspicious.

    With N_k(x) the k nearest neighbours of x in the reference set (Euclidean) and d_i(x) the
    distance to the i-th of them:

        k_distance:  d_k(x)
        lid:         LID(x) = -k / sum_{i<=k} log(d_i(x) / d_k(x))
        dao (log):   (1/k) sum_{o in N_k(x)} LID(o) * log(d_k(x) / d_k(o))
        dao (power): (1/k) sum_{o in N_k(x)} (d_k(x) / d_k(o)) ** LID(o)       (the original form)

    where LID(o) and d_k(o) of a neighbour are computed within the reference set. Reference:
    Huang et al., ICLR 2025 (arXiv 2502.01385), METHODS 3.6; LID with clean indexing (the i-th
    neighbour, no +1e-4).

    Neighbours: ``reference=None`` scores the batch against itself; a given ``reference`` (e.g.
    a clean set) is searched instead. In both cases a reference row at distance exactly 0 is
    never a neighbour: this excludes the point itself, and exact duplicates (same image with
    several captions, a repeated caption), which carry no density information and would make
    log(d_i / d_k) = -inf. So every d_i > 0; LID is finite unless all k distances tie (then +inf,
    the estimator's limit, and a DAO term with d_k(x) = d_k(o) counts 0 in the log form; a row
    with a +inf term scores +inf in the log form, as in the power form, never NaN).

    Args:
        z: (N, D) embeddings (normalise them first if cosine geometry is meant).
        reference: (M, D) embeddings, or None for ``z`` itself.
        k: neighbours (>= 2 for lid and dao); each row (and, for dao, each reference row) needs k
            reference rows at a positive distance.
        method: "k_distance", "lid" or "dao".
        form: DAO's "log" (default; cannot overflow) or "power" form.
        chunk_size: query rows per distance block (memory ~ chunk_size x M).

    Returns:
        (N,) scores, float64 for float64 input, else float32 (bf16/fp16 are upcast).
    """
    fn = "knn_outlier_scores"
    z = check_embeddings(fn, "z", z, shape="(N, D)")
    if reference is not None:
        check_same_device(fn, z=z, reference=reference)
        reference = check_embeddings(fn, "reference", reference, shape="(M, D)", dim=z.shape[1], like="z")
    k = check_int(fn, "k", k, 1)
    method = check_choice(fn, "method", method, METHODS)
    form = check_choice(fn, "form", form, FORMS)
    chunk_size = check_int(fn, "chunk_size", chunk_size, 1)
    if k < 2 and method != "k_distance":
        raise InputError(
            f"{fn}: method {method!r} needs k >= 2 (with k = 1 the LID sum is log(d_1 / d_1) = 0); "
            f"got k = {k}."
        )
    dtype = compute_dtype(z) if reference is None else compute_dtype(z, reference)
    query = z.detach().to(dtype)
    ref = query if reference is None else reference.detach().to(dtype)
    distances, neighbours = knn_distances(query, ref, k, chunk_size, fn)
    if method == "k_distance":
        return distances[:, -1]
    lid = lid_mle(distances)
    if method == "lid":
        return lid
    ref_distances = distances if reference is None else knn_distances(ref, ref, k, chunk_size, fn)[0]
    ref_lid = lid if reference is None else lid_mle(ref_distances)
    ref_kdist, ref_lid = ref_distances[:, -1][neighbours], ref_lid[neighbours]
    if form == "power":
        return ((distances[:, -1:] / ref_kdist) ** ref_lid).mean(dim=1)
    log_ratio = torch.log(distances[:, -1:] / ref_kdist)
    terms = torch.where(log_ratio == 0, torch.zeros_like(log_ratio), ref_lid * log_ratio)
    # +inf and -inf terms (tied neighbours on both sides of d_k(x), possible against a separate
    # reference) would average to NaN: take the power form's limit, +inf
    return torch.where((terms == math.inf).any(dim=1), math.inf, terms.mean(dim=1))


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks (float64) of a 1-D tensor in ascending order; tied values share their mean rank."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts  # 0-based first position of each distinct value
    mean_rank = start.double() + (counts.double() + 1) / 2
    return mean_rank[inverse]


def detection_auroc(scores: torch.Tensor, poisoned_mask: torch.Tensor) -> float:
    """AUROC of a detector: P(score of a poisoned pair > score of a clean one), ties counting 1/2.

        AUROC = (R_p - n_p (n_p + 1) / 2) / (n_p n_c)

    with R_p the sum of the poisoned pairs' average ranks (Mann-Whitney U / (n_p n_c)). Higher
    score = more suspicious; 0.5 is chance.

    Args:
        scores: (N,) float scores, no NaN (+-inf rank as the largest / smallest).
        poisoned_mask: (N,) bool, True for poisoned pairs (at least one of each kind).
    """
    fn = "detection_auroc"
    scores = check_tensor(fn, "scores", scores)
    if scores.dim() != 1 or scores.numel() == 0:
        raise InputError(
            f"{fn}: argument 'scores' must be a non-empty 1-D tensor; got shape {tuple(scores.shape)}."
        )
    nan = torch.isnan(scores)
    if bool(nan.any()):  # +-inf are valid scores (a tied LID is +inf) and rank like any other value
        raise InputError(
            f"{fn}: argument 'scores' contains {int(nan.sum())} NaN value(s) out of {scores.numel()}; "
            f"a NaN has no rank. Check the detector's input."
        )
    if not isinstance(poisoned_mask, torch.Tensor) or poisoned_mask.dtype != torch.bool:
        raise InputError(f"{fn}: argument 'poisoned_mask' must be a bool tensor (True = poisoned).")
    if poisoned_mask.shape != scores.shape:
        raise InputError(
            f"{fn}: argument 'poisoned_mask' must have the shape of 'scores' {tuple(scores.shape)}; "
            f"got {tuple(poisoned_mask.shape)}."
        )
    n_poisoned = int(poisoned_mask.sum())
    n_clean = scores.numel() - n_poisoned
    if n_poisoned == 0 or n_clean == 0:
        raise InputError(
            f"{fn}: AUROC needs poisoned and clean pairs; got {n_poisoned} poisoned and {n_clean} clean."
        )
    ranks = average_ranks(scores.detach().cpu().double())
    rank_sum = float(ranks[poisoned_mask.cpu()].sum())
    return (rank_sum - n_poisoned * (n_poisoned + 1) / 2) / (n_poisoned * n_clean)


@dataclass(frozen=True)
class GmmSplit:
    """``posterior``: (N,) float64 P(high-mean component | s_i); ``safe``: posterior > 0.5; the fitted
    ``weights``, ``means``, ``variances`` as (low, high) pairs."""

    posterior: torch.Tensor
    safe: torch.Tensor
    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]


def gmm_safe_split(similarities: torch.Tensor, seed: int = 0, max_iter: int = 200) -> GmmSplit:
    """SafeCLIP's split of pairs into safe and risky by their matched-pair cosine (METHODS 3.6).

    Fits a two-component 1-D Gaussian mixture to s_i = cos(x_i, y_i) (scikit-learn
    ``GaussianMixture``, seeded k-means initialisation) and returns, for each pair,

        p_i = pi_h N(s_i; mu_h, var_h) / sum_c pi_c N(s_i; mu_c, var_c)

    for the high-mean component h; "safe" means p_i > 0.5. Reference: SafeCLIP (arXiv 2310.05862).

    Args:
        similarities: (N,) finite floats, N >= 2, at least two distinct values.
        seed: the mixture's ``random_state``.
        max_iter: EM iterations at most.
    """
    fn = "gmm_safe_split"
    similarities = check_tensor(fn, "similarities", similarities)
    if similarities.dim() != 1 or similarities.numel() < 2:
        raise InputError(
            f"{fn}: argument 'similarities' must be a 1-D tensor of at least 2 matched-pair cosines; "
            f"got shape {tuple(similarities.shape)}."
        )
    check_embeddings(fn, "similarities", similarities[:, None], shape="(N,)")
    if torch.unique(similarities).numel() < 2:
        raise InputError(
            f"{fn}: argument 'similarities' holds one value only; two components cannot be fitted."
        )
    seed = check_int(fn, "seed", seed, 0)
    max_iter = check_int(fn, "max_iter", max_iter, 1)
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        raise InputError(f"{fn}: needs scikit-learn; pip install 'contrastkit[cluster]'") from None
    values = similarities.detach().cpu().double().numpy()[:, None]
    gmm = GaussianMixture(n_components=2, random_state=seed, max_iter=max_iter).fit(values)
    low, high = (int(i) for i in gmm.means_[:, 0].argsort())
    posterior = torch.from_numpy(gmm.predict_proba(values)[:, high]).double()
    variances = gmm.covariances_.reshape(2)
    return GmmSplit(
        posterior=posterior,
        safe=posterior > 0.5,
        weights=(float(gmm.weights_[low]), float(gmm.weights_[high])),
        means=(float(gmm.means_[low, 0]), float(gmm.means_[high, 0])),
        variances=(float(variances[low]), float(variances[high])),
    )
