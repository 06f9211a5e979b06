"""Errors stay collective: a bad input on one rank stops every rank, none hangs.

The bad rank raises its own ``InputError``; the others raise ``DistributedError`` naming it and
carrying its message; the process group is still in step afterwards (a collective right after
the error returns the right value). Also: a bad ``distributed=`` value, and no process group at
all (every mode is then the plain loss), in the main process.
"""

from __future__ import annotations

import pytest
import torch

import dist_tasks
from contrastkit.distributed import DistributedError, is_active
from contrastkit.errors import ContrastkitError, InputError

SIZES = (3, 5)
LOSSES = list(dist_tasks.CASES)
RING = {"siglip": ("gather", "local", "ring")}


def loss_modes() -> list:
    return [
        pytest.param(name, mode, id=f"{name}-{mode}")
        for name in LOSSES
        for mode in RING.get(name, ("gather", "local"))
    ]


def _check_stopped_together(results, bad_ranks, expect_in_message):
    world = len(results)
    messages = {}
    for rank, ((error_type, message), mean_rank) in enumerate(results):
        assert mean_rank == pytest.approx((world - 1) / 2), "the group is out of step after the error"
        if rank in bad_ranks:
            assert error_type == "InputError", message
            assert expect_in_message in message
            messages[rank] = message
    first = min(bad_ranks)
    for rank, ((error_type, message), _) in enumerate(results):
        if rank not in bad_ranks:
            assert error_type == "DistributedError", message
            assert f"rank {first} failed" in message
            assert messages[first] in message
            if len(bad_ranks) > 1:
                assert f"ranks {sorted(bad_ranks)} failed" in message


@pytest.mark.parametrize(("name", "mode"), loss_modes())
@pytest.mark.parametrize(("kind", "expect"), [("nan", "NaN"), ("shape", "4-D")])
def test_bad_input_on_one_rank_stops_every_rank(pool, name, mode, kind, expect):
    results = pool.run(dist_tasks.bad_input, name, SIZES, mode, (1,), kind)
    _check_stopped_together(results, {1}, expect)


@pytest.mark.parametrize(
    ("name", "target", "expect"),
    [
        ("clip", "y", "rows"),  # y has one row less than x
        ("siglip", "ids", "shape"),  # sample_ids of the wrong length
        ("mnrl", "neg", "rows"),
        ("supcon", "labels", "shape"),
    ],
)
def test_inconsistent_rows_on_one_rank(pool, name, target, expect):
    options = {"negatives": "one"} if name == "mnrl" else {"ids": True} if name == "siglip" else {}
    results = pool.run(dist_tasks.bad_input, name, SIZES, "local", (0,), "rows", target, options)
    _check_stopped_together(results, {0}, expect)


def test_bad_input_on_two_of_three_ranks(pool3):
    results = pool3.run(dist_tasks.bad_input, "clip", (2, 3, 4), "local", (0, 2), "nan")
    _check_stopped_together(results, {0, 2}, "NaN")


def test_bad_input_ring_three_ranks(pool3):
    results = pool3.run(dist_tasks.bad_input, "siglip", (2, 3, 4), "ring", (2,), "shape")
    _check_stopped_together(results, {2}, "4-D")


@pytest.mark.parametrize(("name", "mode"), loss_modes())
def test_empty_batch_on_one_rank(pool, name, mode):
    """An empty slice fails that rank's own validation ("is empty", an InputError), so the
    others stop with a DistributedError that names it and carries the message."""
    results = pool.run(dist_tasks.bad_input, name, SIZES, mode, (1,), "empty")
    _check_stopped_together(results, {1}, "is empty")


@pytest.mark.parametrize("rows", [(3, 0), (0, 0)])
def test_agreement_with_an_empty_rank_raises_input_error_everywhere(pool, rows):
    """When every rank's inputs are valid but some rank holds 0 rows, ``agreement`` itself raises
    the same InputError on every rank."""
    empty = [r for r, n in enumerate(rows) if n == 0]
    for error_type, message in pool.run(dist_tasks.agreement_rows, rows):
        assert error_type == "InputError"
        assert f"rank(s) {empty} hold an empty batch" in message


def test_agreement_shares_the_rows(pool3):
    assert pool3.run(dist_tasks.agreement_rows, (2, 3, 4)) == [((2, 3, 4), r) for r in range(3)]


def test_embedding_dimension_differing_across_ranks_raises_everywhere(pool):
    """Rank 1's embeddings are one dimension narrower (locally consistent). The ranks cannot
    agree on a gather of (B_r, D_r) blocks, so every rank should raise a contrastkit error at the
    agreement, as for any other bad input; a mismatched all_gather aborts the gloo worker."""
    results = pool.run(dist_tasks.bad_input, "clip", SIZES, "local", (1,), "narrow", timeout=8)
    for (error_type, message), _ in results:
        assert error_type in ("InputError", "DistributedError"), message


# ---- in the main process: no process group ---------------------------------------------------------
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("bad", ["ring", "Gather", "all", ""])
def test_bad_distributed_value(name, bad):
    if name == "siglip" and bad == "ring":
        return  # a valid mode of siglip_loss
    case = dist_tasks.CASES[name]((8,), torch.float64)
    inputs, params = dist_tasks.global_inputs(case), dist_tasks.scalar_leaves(case, torch.float64)
    with pytest.raises(InputError, match="'distributed' must be None or one of"):
        case.loss(inputs, params, bad)


OPTIONS = {
    "clip": [{}, {"ids": True, "label_smoothing": 0.1, "chunk_size": 2}],
    "siglip": [{}, {"ids": True, "chunk_size": 2}],
    "info_nce": [{"negatives": "shared"}, {"negatives": "per_query", "reduction": "none"}],
    "nt_xent": [{}, {"chunk_size": 2}],
    "supcon": [{"views": 2}, {"reduction": "none", "chunk_size": 2}],
    "mnrl": [{"negatives": "many"}, {"guide": True, "negatives": "one"}],
}


@pytest.mark.parametrize(
    ("name", "options"),
    [pytest.param(n, o, id=f"{n}-{i}") for n, opts in OPTIONS.items() for i, o in enumerate(opts)],
)
def test_without_process_group_every_mode_is_the_plain_loss(name, options):
    assert not is_active()  # no process group of several ranks in the main process
    case = dist_tasks.CASES[name]((8,), torch.float64, **options)

    def run(mode):
        inputs, params = dist_tasks.global_inputs(case), dist_tasks.scalar_leaves(case, torch.float64)
        out = case.loss(inputs, params, mode)
        torch.nansum(out).backward()
        grads = [t.grad for t in list(inputs.values()) + list(params.values()) if t.requires_grad]
        return out.detach(), grads

    plain, plain_grads = run(None)
    for mode in RING.get(name, ("gather", "local")):
        out, grads = run(mode)
        assert torch.equal(out.nan_to_num(), plain.nan_to_num()), mode
        assert all(torch.equal(g, p) for g, p in zip(grads, plain_grads, strict=True)), mode


def test_distributed_error_is_a_contrastkit_error():
    assert issubclass(DistributedError, ContrastkitError)
    assert issubclass(DistributedError, RuntimeError)
