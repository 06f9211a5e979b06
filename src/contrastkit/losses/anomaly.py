"""VETime's anomaly-window contrast (AWCL): InfoNCE over anomalous segments and their context."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F

from contrastkit.errors import (
    InputError,
    check_embeddings,
    check_flag,
    check_generator,
    check_same_device,
    check_temperature,
)
from contrastkit.functional import compute_dtype
from contrastkit.functional.runs import binary_runs, check_binary_labels

Window = tuple[int, int, int]  # (row, start, end), end exclusive


class AnomalyWindowLoss(NamedTuple):
    """The result of ``anomaly_window_info_nce``.

    loss: the scalar loss (a graph-connected 0 when ``no_segments``).
    no_segments: True when ``patch_labels`` holds no anomalous patch (not an error: most
        windows of a real series are normal).
    n_segments: the segments the loss averages over.
    n_inter: the segments whose inter term had at least one background window.
    """

    loss: torch.Tensor
    no_segments: bool
    n_segments: int
    n_inter: int


class _Term(NamedTuple):
    """One InfoNCE term: its anchor, positive and negative windows, each as (view, window)."""

    anchor: tuple[int, Window]
    positive: tuple[int, Window]
    negatives: list[tuple[int, Window]]


def _count(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{fn}: argument '{name}' must be an int >= 0; got {value!r}.")
    return int(value)


def _background_windows(
    anomalies_before: list[int], row: int, length: int, n_background: int, max_tries: int, generator
) -> list[Window]:
    """Up to ``n_background`` all-normal, mutually non-overlapping windows of ``length`` in ``row``.

    One draw of ``max_tries`` uniform starts in [0, N - length], scanned in order; a start is
    kept if its window is all normal and overlaps no kept window.
    """
    n = len(anomalies_before) - 1
    starts = torch.randint(0, n - length + 1, (max_tries,), generator=generator).tolist()
    windows: list[Window] = []
    for start in starts:
        if len(windows) == n_background:
            break
        end = start + length
        normal = anomalies_before[end] == anomalies_before[start]
        if normal and all(end <= s or start >= e for _, s, e in windows):
            windows.append((row, start, end))
    return windows


def _segment_terms(
    anomalies_before: list[int], row: int, s: int, e: int, n_background: int, max_tries: int, generator
) -> tuple[list[_Term], bool]:
    """The intra (and, if L > 1, inter) terms of segment [s, e) with view 0 = z_a, 1 = z_b.

    ``anomalies_before[t]``: the number of anomalous patches before t in this row (N + 1 entries).
    """
    n, length = len(anomalies_before) - 1, e - s
    neighbours = [t for t in (s - 1, e) if 0 <= t < n and anomalies_before[t + 1] == anomalies_before[t]]
    negatives = [(0, (row, t, t + 1)) for t in neighbours]
    negatives += [(0, w) for w in ((row, max(0, s - length), s), (row, e, min(n, e + length))) if w[2] > w[1]]
    terms = [_Term((1, (row, s, e)), (0, (row, s, e)), negatives)]
    has_inter = False
    if length > 1:
        context = (row, max(0, s - length), min(n, e + length))
        background = _background_windows(
            anomalies_before, row, context[2] - context[1], n_background, max_tries, generator
        )
        terms.append(_Term((0, context), (1, context), [(1, w) for w in background]))
        has_inter = bool(background)
    return terms, has_inter


def _mirrored(term: _Term) -> _Term:
    """The same windows with the two views swapped."""
    return _Term(*((1 - v, w) for v, w in term[:2]), [(1 - v, w) for v, w in term.negatives])


def _window_means(z: torch.Tensor, windows: list[tuple[int, Window]]) -> torch.Tensor:
    """z (2, B, N, D) -> (len(windows), D): the mean of each window's tokens in its view."""
    n = z.shape[2]
    rows, owner, weight = [], [], []
    for i, (view, (row, start, end)) in enumerate(windows):
        base = (view * z.shape[1] + row) * n
        rows += range(base + start, base + end)
        owner += [i] * (end - start)
        weight += [1.0 / (end - start)] * (end - start)
    flat = z.reshape(-1, z.shape[-1])
    index = torch.tensor(rows, dtype=torch.long, device=z.device)
    scaled = flat[index] * torch.tensor(weight, dtype=z.dtype, device=z.device)[:, None]
    out = z.new_zeros(len(windows), z.shape[-1])
    return out.index_add(0, torch.tensor(owner, dtype=torch.long, device=z.device), scaled)


def anomaly_window_info_nce(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    patch_labels: torch.Tensor,
    temperature: float = 0.1,
    n_background: int = 10,
    max_tries: int = 50,
    symmetric: bool = False,
    generator: torch.Generator | None = None,
) -> AnomalyWindowLoss:
    """VETime's anomaly-window contrastive loss (AWCL).

    Per anomalous segment [s, e) of ``patch_labels`` (L = e - s; runs from ``find_segments``),
    with m_v[i:j] the mean of view v's tokens i..j-1 and every term

        l(a, p, {n}) = -log( e^{a.p/tau} / (e^{a.p/tau} + sum_n e^{a.n/tau}) ):

    - intra: a = m_b[s:e], p = m_a[s:e]; negatives z_a[s-1] and z_a[e] (each if inside the
      series and normal) and the context means m_a[max(0, s-L):s] and m_a[e:min(N, e+L)] (each
      if not empty after clipping; they may contain another segment's patches).
    - inter, only if L > 1: W = [max(0, s-L), min(N, e+L)); a = m_a[W], p = m_b[W]; negatives
      the means of z_b over up to ``n_background`` random windows of length |W| that are all
      normal and do not overlap each other. Their starts: one draw of ``max_tries`` uniform ints
      in [0, N - |W|] from ``generator`` per such segment (rows in order, segments left to
      right), scanned in order.
    - ``symmetric=True`` adds each term again with the views swapped (the same windows).

    A term with no negative is exactly 0 (it has nothing to contrast). The loss is the sum of
    the terms over all segments of all rows divided by the number of segments, i.e. the mean
    over segments of (intra + inter). With no segment it is a graph-connected 0 and
    ``no_segments`` is True (not an error).

    Args:
        z_a: (N, D) or (B, N, D) patch tokens of the first view (z^1, VETime's image branch),
            used as given: normalise them first (window means are not renormalised).
        z_b: the same shape, patch tokens of the second view (z^2, the time-series branch).
        patch_labels: (N,) or (B, N) bool or 0/1 integer; 1 marks an anomalous patch. Rows of a
            batch are separate series: windows never cross rows.
        temperature: tau > 0.
        n_background: the most background windows per inter term (>= 0).
        max_tries: candidate starts drawn per inter term (>= 0).
        symmetric: add the mirrored terms (the release computes them but does not add them).
        generator: the CPU torch.Generator the background windows are drawn from (None: the
            global one).

    Returns:
        ``AnomalyWindowLoss(loss, no_segments, n_segments, n_inter)``.

    Reference: VETime, arXiv 2602.16681 (METHODS.md 3.19).
    """
    fn = "anomaly_window_info_nce"
    check_same_device(fn, z_a=z_a, z_b=z_b, patch_labels=patch_labels)
    z_a = check_embeddings(fn, "z_a", z_a, shape="(N, D) or (B, N, D)", ndims=(2, 3))
    z_b = check_embeddings(fn, "z_b", z_b, shape="(N, D) or (B, N, D)", ndims=(2, 3))
    if z_b.shape != z_a.shape:
        raise InputError(
            f"{fn}: arguments 'z_a' and 'z_b' must have the same shape (one token per patch in each "
            f"view); got {tuple(z_a.shape)} and {tuple(z_b.shape)}."
        )
    labels = check_binary_labels(fn, "patch_labels", patch_labels, shape=z_a.shape[:-1])
    temperature = check_temperature(fn, "temperature", temperature)
    n_background = _count(fn, "n_background", n_background)
    max_tries = _count(fn, "max_tries", max_tries)
    symmetric = check_flag(fn, "symmetric", symmetric)
    check_generator(fn, generator)

    dtype = compute_dtype(z_a, z_b)
    z = torch.stack([z_a, z_b]).to(dtype)
    if z_a.dim() == 2:
        z, labels = z[:, None], labels[None]
    labels = labels.cpu()
    anomalies_before = F.pad(labels.long().cumsum(dim=1), (1, 0)).tolist()
    terms: list[_Term] = []
    n_segments = n_inter = 0
    for row, segments in enumerate(binary_runs(labels)):
        for s, e in segments:
            segment_terms, has_inter = _segment_terms(
                anomalies_before[row], row, s, e, n_background, max_tries, generator
            )
            terms += segment_terms
            n_segments += 1
            n_inter += has_inter
    if not terms:
        return AnomalyWindowLoss(0.0 * z.sum(), True, 0, 0)
    if symmetric:
        terms += [_mirrored(t) for t in terms]

    width = max(len(t.negatives) for t in terms)
    anchors = _window_means(z, [t.anchor for t in terms])
    positives = _window_means(z, [t.positive for t in terms])
    pad = terms[0].positive  # any window: padded slots are masked out below
    negatives = _window_means(z, [w for t in terms for w in t.negatives + [pad] * (width - len(t.negatives))])
    negatives = negatives.view(len(terms), width, z.shape[-1])
    n_negatives = torch.tensor([len(t.negatives) for t in terms], device=z.device)
    is_negative = torch.arange(width, device=z.device)[None, :] < n_negatives[:, None]
    positive_logit = (anchors * positives).sum(-1) / temperature
    negative_logits = torch.einsum("td,tkd->tk", anchors, negatives) / temperature
    negative_logits = negative_logits.masked_fill(~is_negative, float("-inf"))
    logits = torch.cat([positive_logit[:, None], negative_logits], dim=1)
    per_term = torch.logsumexp(logits, dim=1) - positive_logit
    return AnomalyWindowLoss(per_term.sum() / n_segments, False, n_segments, n_inter)
