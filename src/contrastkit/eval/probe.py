"""Frozen-feature classifiers: the weighted kNN monitor and a multinomial logistic-regression probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrastkit.errors import InputError, check_same_device, check_scalar, check_temperature
from contrastkit.eval._checks import check_chunk_size, check_class_labels, check_emb, check_int, unit_pair
from contrastkit.eval.retrieval import _chunked_top_k


def _check_split(
    fn: str, train_emb: object, train_labels: object, test_emb: object, test_labels: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_same_device(
        fn, train_emb=train_emb, train_labels=train_labels, test_emb=test_emb, test_labels=test_labels
    )
    train_emb = check_emb(fn, "train_emb", train_emb)
    test_emb = check_emb(fn, "test_emb", test_emb, dim=train_emb.shape[1], like="train_emb")
    train_labels = check_class_labels(fn, "train_labels", train_labels, train_emb.shape[0]).long()
    test_labels = check_class_labels(fn, "test_labels", test_labels, test_emb.shape[0]).long()
    return train_emb, train_labels, test_emb, test_labels


@torch.no_grad()
def knn_accuracy(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    test_emb: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Accuracy of the similarity-weighted kNN classifier (InstDisc / DINO kNN monitor).

    Each test point takes its k most cosine-similar training points N_k (ties: lower index first)
    and predicts argmax_c sum_{j in N_k, y_j = c} exp(s_j / T) (ties: the lower class id).

    Args:
        train_emb: (N, D); train_labels: (N,) int >= 0.
        test_emb: (M, D); test_labels: (M,) int >= 0.
        k: neighbours, 1 <= k <= N.
        temperature: T > 0 of the vote weights.
        chunk_size: test rows scored at once (memory ~ chunk_size x N).

    Returns:
        The fraction of test points classified correctly.

    Reference: Wu et al. 2018 (arXiv 1805.01978); Caron et al. 2021 (DINO, ``eval_knn.py``).
    """
    fn = "knn_accuracy"
    train_emb, train_labels, test_emb, test_labels = _check_split(
        fn, train_emb, train_labels, test_emb, test_labels
    )
    n = train_emb.shape[0]
    k = check_int(fn, "k", k, hint=f" It counts neighbours (at most the {n} training points).")
    if k > n:
        raise InputError(
            f"{fn}: argument 'k' must be <= the number of training points {n}; got {k}. Lower k."
        )
    temperature = check_temperature(fn, "temperature", temperature)
    chunk_size = check_chunk_size(fn, chunk_size)
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    test, train = unit_pair(test_emb, train_emb)
    scores, idx = _chunked_top_k(test, train, k, chunk_size)
    scores = scores.double()
    # exp(s/T) shifted by the row max (the largest weight becomes 1): the vote is unchanged, no overflow
    weights = torch.exp((scores - scores[:, :1]) / temperature)
    votes = torch.zeros(scores.shape[0], n_classes, dtype=torch.float64, device=scores.device)
    votes.scatter_add_(1, train_labels[idx], weights)
    return float((votes.argmax(dim=1) == test_labels).double().mean())


def linear_probe_accuracy(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    test_emb: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
) -> float:
    """Test accuracy of multinomial logistic regression fitted on frozen training features.

    Features are standardised with the training mean and std (constant features left at 0),
    then W (D, C), b (C,) minimise, by full-batch L-BFGS (strong Wolfe) in float64,

        L = (1/N) sum_i CE(x_i W + b, y_i) + (weight_decay / 2) ||W||_F^2

    which is scikit-learn's LogisticRegression with C = 1 / (weight_decay * N). Deterministic.

    Args:
        train_emb: (N, D); train_labels: (N,) int >= 0; test_emb: (M, D); test_labels: (M,).
        weight_decay: L2 strength >= 0 (the bias is not penalised).
        max_iter: L-BFGS iterations.
        seed: seeds the small random initial W (the problem is convex: only matters via max_iter).

    Returns:
        The fraction of test points classified correctly.
    """
    fn = "linear_probe_accuracy"
    train_emb, train_labels, test_emb, test_labels = _check_split(
        fn, train_emb, train_labels, test_emb, test_labels
    )
    weight_decay = float(check_scalar(fn, "weight_decay", weight_decay, minimum=0.0))
    max_iter = check_int(fn, "max_iter", max_iter)
    seed = check_int(fn, "seed", seed, minimum=0)
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    x = train_emb.detach().double()
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (1e-3 * torch.randn(x.shape[1], n_classes, generator=gen, dtype=torch.float64)).to(x.device)
    w.requires_grad_()
    b = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_labels) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        test = (test_emb.detach().double() - mean) / std
        return float(((test @ w + b).argmax(dim=1) == test_labels).double().mean())
