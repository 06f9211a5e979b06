"""Anomalous segments of a labelled series: the runs that VETime's window contrast works on."""

from __future__ import annotations

import torch

from contrastkit.functional.runs import Segment, binary_runs, check_binary_labels


def find_segments(labels: torch.Tensor) -> list[Segment] | list[list[Segment]]:
    """Maximal runs of 1s as half-open (start, end) index pairs, in increasing order.

    labels (N,) -> [(s, e), ...] with labels[s:e] all 1 and labels[s-1], labels[e] 0 (or outside);
    labels (B, N) -> one such list per row (rows are independent series: a run never wraps
    from one row into the next). Accepts bool or integer 0/1; N = 0 gives no segments.

    Example: find_segments(torch.tensor([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)].

    Reference: VETime, arXiv 2602.16681 (the anomalous segments of the window contrast).
    """
    flags = check_binary_labels("find_segments", "labels", labels)
    runs = binary_runs(flags[None] if flags.dim() == 1 else flags)
    return runs[0] if flags.dim() == 1 else runs
