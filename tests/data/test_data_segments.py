"""find_segments: maximal runs of 1s against a loop reference, per row for (B, N), and its errors."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data.segments import find_segments
from contrastkit.errors import InputError


def ref_runs(row: list[int]) -> list[tuple[int, int]]:
    """Walk the row; a run starts at a 1 after a 0 (or the start) and ends before the next 0."""
    runs, start = [], None
    for t, value in enumerate(row + [0]):
        if value and start is None:
            start = t
        elif not value and start is not None:
            runs.append((start, t))
            start = None
    return runs


@pytest.mark.parametrize(
    ("labels", "want"),
    [
        ([0, 1, 1, 0, 1], [(1, 3), (4, 5)]),
        ([1, 1, 0, 0], [(0, 2)]),  # at the start
        ([0, 0, 1], [(2, 3)]),  # at the end
        ([1, 0, 1, 0, 1], [(0, 1), (2, 3), (4, 5)]),  # one-patch gaps, L = 1
        ([1, 1, 1], [(0, 3)]),
        ([0, 0, 0], []),
        ([], []),
    ],
)
def test_hand_cases(labels: list[int], want: list[tuple[int, int]]) -> None:
    t = torch.tensor(labels, dtype=torch.long)
    assert find_segments(t) == want
    assert find_segments(t.bool()) == want


def test_rows_are_independent_and_match_the_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(7, 40, generator=g) < 0.3).to(torch.int32)
    labels[0, -1], labels[1, 0] = 1, 1  # a run ending one row and one starting the next: no wrap
    got = find_segments(labels)
    assert got == [ref_runs(row) for row in labels.tolist()]
    assert got[0][-1][1] == 40 and got[1][0][0] == 0


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0.0, 1.0]), "bool or integer"),
        (torch.zeros(2, 2, 2, dtype=torch.long), r"\(N,\) or \(B, N\)"),
        (torch.tensor([0, 2, 1]), "only 0 and 1"),
        ([0, 1], "torch.Tensor"),
    ],
)
def test_errors(labels: object, match: str) -> None:
    with pytest.raises(InputError, match=f"find_segments: argument 'labels'.*{match}"):
        find_segments(labels)
