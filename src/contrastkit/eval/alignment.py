"""Cross-model alignment of representations: mutual kNN, CKA, CKNNA, SVCCA and bridge retrieval.

A and B are features of the *same* N items from two models or modalities (row i of A and row i of
B describe item i); their widths may differ. Following the Platonic-Representation definitions
(Huh et al. 2024, arXiv 2405.07987), rows are L2-normalised first (``normalize=True``) and the
kernels are linear, K = A A^T and L = B B^T. Everything is computed in float64 on the inputs'
device and returned as a Python float; the N x N kernels are materialised (N up to a few thousand).

    mutual_knn  (1/N) sum_i |kNN_A(i) & kNN_B(i)| / k, cosine neighbours, self excluded
    cka         HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), unbiased (HSIC_u) or biased HSIC
    cknna       CKA restricted to pairs that are mutual k-nearest neighbours in both spaces
    svcca       mean canonical correlation of the top-``dims`` left singular vectors
    modality_gap, alignment_score (= mean matched cosine) for two embeddings of one space
    bridge_retrieval  direct src->dst R@1 against two-hop rowsoftmax(S_src,mid / tau) S_mid,dst
"""

from __future__ import annotations

import torch

from contrastkit.errors import InputError, check_flag, check_same_device, check_temperature
from contrastkit.eval._checks import check_emb, check_int, check_ks, unit
from contrastkit.eval.geometry import mean_matched_cosine, modality_gap
from contrastkit.eval.retrieval import _topk_rows

__all__ = [
    "alignment_metrics",
    "alignment_score",
    "bridge_retrieval",
    "cka",
    "cknna",
    "modality_gap",
    "mutual_knn",
    "svcca",
]


def _features(
    fn: str, a: object, b: object, normalize: object, *, min_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked float64 (N, Da), (N, Db) features of the same items, unit rows when ``normalize``."""
    check_same_device(fn, a=a, b=b)
    a = check_emb(fn, "a", a)
    b = check_emb(fn, "b", b, rows=a.shape[0], like="a")
    n = a.shape[0]
    if n < min_rows:
        raise InputError(
            f"{fn}: arguments 'a' and 'b' need at least {min_rows} rows (items); got {n}. Score more items."
        )
    if check_flag(fn, "normalize", normalize):
        return unit(a, torch.float64), unit(b, torch.float64)
    return a.detach().to(torch.float64), b.detach().to(torch.float64)


def _check_k(fn: str, k: object, n: int) -> int:
    k = check_int(fn, "k", k, hint=" It counts nearest neighbours per item (self excluded).")
    if k > n - 1:
        raise InputError(
            f"{fn}: argument 'k' must be <= N - 1 = {n - 1} (neighbours other than the item itself); "
            f"got {k}. Lower k or score more items."
        )
    return k


def _knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N) bool: True at (i, j) when j is among the k most similar rows to i (j != i).

    Ties are broken by the lower index, so the mask is deterministic.
    """
    n = kernel.shape[0]
    scores = kernel.clone()
    scores.fill_diagonal_(-torch.inf)
    _, idx = _topk_rows(scores, k)
    mask = torch.zeros(n, n, dtype=torch.bool, device=kernel.device)
    mask.scatter_(1, idx, True)
    return mask


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """HSIC_u of Song et al. (2012) for (N, N) kernels (N >= 4), O(N^2), kernels need not be symmetric.

    [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1)/((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)), with K~, L~
    the kernels with zeroed diagonals.
    """
    n = k.shape[0]
    kt = k.clone()
    kt.fill_diagonal_(0)
    lt = l.clone()
    lt.fill_diagonal_(0)
    trace = (kt * lt.T).sum()
    sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = kt.sum(dim=0) @ lt.sum(dim=1)  # 1^T K~ L~ 1
    return (trace + sums - 2.0 * cross / (n - 2)) / (n * (n - 3))


def _hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """HSIC_b = tr(K H L H) / (n-1)^2 with H = I - 11^T/n (the original CKA estimator)."""
    n = k.shape[0]
    kc = k - k.mean(dim=0, keepdim=True)  # K H ... centred columns
    kc = kc - kc.mean(dim=1, keepdim=True)  # H K H
    return (kc * l.T).sum() / (n - 1) ** 2  # tr(HKH L) = tr(K H L H)


def _ratio(fn: str, kl: torch.Tensor, kk: torch.Tensor, ll: torch.Tensor, what: str) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); a non-positive self term raises."""
    for name, value in (("a", kk), ("b", ll)):
        if not float(value) > 0:
            raise InputError(
                f"{fn}: the {what} self-similarity HSIC of argument '{name}' is {float(value):.3g} <= 0, "
                f"so the ratio is undefined: '{name}' is degenerate (all items alike after centring) "
                f"or there are too few items for the unbiased estimate. Score more items"
                f"{' or pass unbiased=False' if what == 'unbiased' else ''}."
            )
    return float(kl / torch.sqrt(kk * ll))


@torch.no_grad()
def mutual_knn(a: torch.Tensor, b: torch.Tensor, k: int = 10, *, normalize: bool = True) -> float:
    """Mutual k-nearest-neighbour alignment: (1/N) sum_i |kNN_A(i) & kNN_B(i)| / k.

    Neighbours by cosine similarity (dot product when ``normalize=False``), the item itself
    excluded, ties broken by the lower index. 1 when both spaces order every item's
    neighbours alike; about k/(N-1) for independent spaces.

    Args:
        a: (N, Da) features; b: (N, Db) features of the same items.
        k: neighbours per item, 1 <= k <= N - 1.

    Example:
        >>> a = torch.randn(100, 16)
        >>> mutual_knn(a, 3 * a @ torch.linalg.qr(torch.randn(16, 16))[0])
        1.0
    """
    fn = "mutual_knn"
    a, b = _features(fn, a, b, normalize, min_rows=2)
    k = _check_k(fn, k, a.shape[0])
    both = _knn_mask(a @ a.T, k) & _knn_mask(b @ b.T, k)
    return float(both.sum(dim=1, dtype=torch.float64).mean() / k)


@torch.no_grad()
def cka(a: torch.Tensor, b: torch.Tensor, unbiased: bool = True, *, normalize: bool = True) -> float:
    """Linear centred kernel alignment, CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

    K = A A^T, L = B B^T. ``unbiased=True`` uses HSIC_u (Song et al. 2012; needs N >= 4), the
    estimator of the Platonic-Representation paper; ``unbiased=False`` uses the biased
    HSIC_b = tr(K H L H)/(N-1)^2 of Kornblith et al. (2019). CKA is invariant to orthogonal
    transforms and isotropic scaling of either side; the unbiased form can be slightly negative
    for unrelated features.

    Args:
        a: (N, Da) features; b: (N, Db) features of the same items.
        unbiased: HSIC_u (default) or HSIC_b.
        normalize: L2-normalise rows first (default, as in the paper).
    """
    fn = "cka"
    unbiased = check_flag(fn, "unbiased", unbiased)
    a, b = _features(fn, a, b, normalize, min_rows=4 if unbiased else 2)
    k, l = a @ a.T, b @ b.T  # noqa: E741
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    return _ratio(fn, hsic(k, l), hsic(k, k), hsic(l, l), "unbiased" if unbiased else "biased")


@torch.no_grad()
def cknna(a: torch.Tensor, b: torch.Tensor, k: int = 10, *, normalize: bool = True) -> float:
    """Centred kernel nearest-neighbour alignment: CKA restricted to mutual k-NN pairs.

        M_K, M_L: top-k masks of K = A A^T and L = B B^T (diagonal excluded), M = M_K * M_L
        CKNNA = HSIC_u(M*K, M*L) / sqrt(HSIC_u(M_K*K, M_K*K) HSIC_u(M_L*L, M_L*L))

    Args:
        a: (N, Da) features; b: (N, Db) features of the same items (N >= 4).
        k: neighbours per item, 1 <= k <= N - 1 (k = N - 1 keeps every off-diagonal pair: CKA).
        normalize: L2-normalise rows first (default, as in the paper).
    """
    fn = "cknna"
    a, b = _features(fn, a, b, normalize, min_rows=4)
    k = _check_k(fn, k, a.shape[0])
    kk, ll = a @ a.T, b @ b.T
    mk, ml = _knn_mask(kk, k).to(kk.dtype), _knn_mask(ll, k).to(ll.dtype)
    m = mk * ml
    return _ratio(
        fn,
        _hsic_unbiased(m * kk, m * ll),
        _hsic_unbiased(mk * kk, mk * kk),
        _hsic_unbiased(ml * ll, ml * ll),
        "unbiased",
    )


def _top_left_singular(fn: str, name: str, x: torch.Tensor, dims: int) -> torch.Tensor:
    """The top-``dims`` left singular vectors of x with standardised columns (N, dims)."""
    x = x - x.mean(dim=0, keepdim=True)
    std = x.std(dim=0, keepdim=True)
    x = x / torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays 0
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    if s.numel() < dims or not float(s[dims - 1]) > 1e-10 * float(s[0]):
        rank = int((s > 1e-10 * s[0]).sum()) if float(s[0]) > 0 else 0
        raise InputError(
            f"{fn}: argument 'dims' = {dims} exceeds the rank {rank} of the centred '{name}' "
            f"(N = {x.shape[0]} items, {x.shape[1]} features); lower dims."
        )
    return u[:, :dims]


@torch.no_grad()
def svcca(a: torch.Tensor, b: torch.Tensor, dims: int = 10, *, normalize: bool = True) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of the top singular directions.

    Standardise the columns of each side, keep its top ``dims`` left singular vectors U_A, U_B
    (N, dims), run ``dims``-component CCA between them and average the canonical correlations.
    U_A and U_B have orthonormal, centred columns, so the canonical correlations are exactly the
    singular values of U_A^T U_B (no iterative CCA, deterministic).

    Args:
        a: (N, Da) features; b: (N, Db) features of the same items.
        dims: singular directions kept per side, at most the rank of either centred side.
        normalize: L2-normalise rows first (as for the other metrics).
    """
    fn = "svcca"
    a, b = _features(fn, a, b, normalize, min_rows=2)
    dims = check_int(fn, "dims", dims, hint=" It is the number of singular directions kept per side.")
    ua = _top_left_singular(fn, "a", a, dims)
    ub = _top_left_singular(fn, "b", b, dims)
    return float(torch.linalg.svdvals(ua.T @ ub).clamp(max=1.0).mean())


def alignment_score(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cosine of matched pairs, (1/N) sum_i cos(x_i, y_i); x, y: (N, D) in one space.

    The same as ``contrastkit.eval.mean_matched_cosine`` (under the trimodal study's name).
    """
    return mean_matched_cosine(x, y)


def _r_at(scores: torch.Tensor, ks: tuple[int, ...]) -> dict[int, float]:
    """R@K of target i for each row of (N, N) scores, ties counted against the target."""
    positive = scores.diagonal()[:, None]
    ranks = (scores >= positive).sum(dim=1)
    return {k: float((ranks <= k).double().mean()) for k in ks}


@torch.no_grad()
def bridge_retrieval(
    src: torch.Tensor,
    mid: torch.Tensor,
    dst: torch.Tensor,
    tau: float = 0.05,
    ks: tuple[int, ...] = (1,),
) -> dict[str, float]:
    """Direct src->dst retrieval against the two-hop route through a bridge modality.

        direct  score_ij = S_src,dst[i, j]
        bridge  score = rowsoftmax(S_src,mid / tau) @ S_mid,dst

    with S the cosine similarity matrices; row i's target is dst_i. Ranks are pessimistic on ties
    (as ``paired_retrieval``).

    Args:
        src: (N, D), mid: (N, D), dst: (N, D) embeddings of the same N items in one shared space.
        tau: softmax temperature of the first hop (our default 0.05; the paper leaves it open).
        ks: cutoffs K.

    Returns:
        {"direct_R@K", "bridge_R@K", "gain_R@K" (= bridge - direct)} for each K in ks.
    """
    fn = "bridge_retrieval"
    check_same_device(fn, src=src, mid=mid, dst=dst)
    src = check_emb(fn, "src", src)
    n, d = src.shape
    mid = check_emb(fn, "mid", mid, rows=n, dim=d, like="src")
    dst = check_emb(fn, "dst", dst, rows=n, dim=d, like="src")
    tau = check_temperature(fn, "tau", tau)
    ks = check_ks(fn, "ks", ks)
    src, mid, dst = (unit(t, torch.float64) for t in (src, mid, dst))
    direct = src @ dst.T
    bridge = torch.softmax(src @ mid.T / tau, dim=1) @ (mid @ dst.T)
    d_r, b_r = _r_at(direct, ks), _r_at(bridge, ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"direct_R@{k}"] = d_r[k]
        out[f"bridge_R@{k}"] = b_r[k]
        out[f"gain_R@{k}"] = b_r[k] - d_r[k]
    return out


def alignment_metrics(
    a: torch.Tensor, b: torch.Tensor, k: int = 10, dims: int = 10, *, normalize: bool = True
) -> dict[str, float]:
    """Every cross-model metric of one pair: {"mutual_knn", "cka", "cknna", "svcca"}.

    When a and b share a width (one embedding space) it adds "modality_gap", "alignment_score"
    and "R@1" (a->b retrieval of the matched row, ties pessimistic). ``dims`` is clipped to the
    smaller width and N - 1.
    """
    fn = "alignment_metrics"
    fa, fb = _features(fn, a, b, normalize, min_rows=4)
    dims = min(check_int(fn, "dims", dims), fa.shape[1], fb.shape[1], fa.shape[0] - 1)
    out = {
        "mutual_knn": mutual_knn(fa, fb, k, normalize=False),
        "cka": cka(fa, fb, normalize=False),
        "cknna": cknna(fa, fb, k, normalize=False),
        "svcca": svcca(fa, fb, dims, normalize=False),
    }
    if a.shape[1] == b.shape[1]:
        ua, ub = unit(a, torch.float64), unit(b, torch.float64)
        out["modality_gap"] = modality_gap(ua, ub)
        out["alignment_score"] = alignment_score(ua, ub)
        out["R@1"] = _r_at(ua @ ub.T, (1,))[1]
    return out
