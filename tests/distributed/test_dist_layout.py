"""The building blocks on real processes: ``Layout``'s collectives and the ring exchange."""

from __future__ import annotations

import numpy as np
import pytest

import dist_tasks


def _run(pool, pool3, world, task, *args):
    return (pool if world == 2 else pool3).run(task, *args)


@pytest.mark.parametrize(("world", "sizes"), [(2, (3, 5)), (2, (4, 1)), (3, (2, 3, 4)), (3, (1, 4, 1))])
def test_ring_blocks_visit_every_rank_once_and_send_gradients_home(pool, pool3, world, sizes):
    results = _run(pool, pool3, world, dist_tasks.ring, sizes)
    for rank, res in enumerate(results):
        owners = [owner for owner, _ in res["seen"]]
        # own block first, then one step back around the ring at a time
        assert owners == [(rank - step) % world for step in range(world)]
        for owner, block in res["seen"]:
            np.testing.assert_array_equal(block, res["expected_blocks"][owner])
        # the gradient of every rank's function of this rank's block came back here
        got, want = res["grad"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("world", "sizes"), [(2, (3, 5)), (2, (4, 4)), (3, (2, 3, 4)), (3, (5, 1, 2))])
def test_layout_helpers(pool, pool3, world, sizes):
    results = _run(pool, pool3, world, dist_tasks.layout_helpers, sizes)
    n = sum(sizes)
    for rank, res in enumerate(results):
        assert res["sizes"] == sizes and res["rank"] == rank
        assert res["offset"] == sum(sizes[:rank]) and res["rows"] == sizes[rank] and res["total"] == n
        for key in ("gather", "gather_grad", "gather_others", "gather_local_first"):
            got, want = res[key]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=key)
        for key in ("values_int64", "values_int64_local_first", "values_bool"):
            got, want = res[key]
            assert got.dtype == want.dtype, key
            np.testing.assert_array_equal(got, want, err_msg=key)
        assert res["values_dtypes"] == ("torch.int64", "torch.bool")
        assert res["per_row"] == tuple(3 * s for s in sizes)
        assert res["count"] == sum(range(1, world + 1))

    mean, total, _, count = results[0]["reduce_ref"]
    # mean and sum: this rank's share; the mean over ranks is the global mean / sum
    np.testing.assert_allclose(np.mean([r["reduce_mean"][0] for r in results]), mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.mean([r["reduce_sum"][0] for r in results]), total, rtol=0, atol=1e-12)
    for res in results:
        # d(share)/d(loss) = W / n for the mean, W for the sum
        np.testing.assert_allclose(res["reduce_mean"][1], world / count, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res["reduce_sum"][1], float(world), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(res["reduce_none"][0], res["reduce_ref"][2])  # NaN where invalid
        assert res["reduce_none"][1] is None
        assert res["reduce_empty"][0] == "NoPositivePairsError"
        assert f"all {world} ranks" in res["reduce_empty"][1]
    np.testing.assert_allclose(
        np.mean([r["reduce_one_rank_valid"] for r in results]),
        results[0]["reduce_one_rank_ref"],
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("world", "sizes", "other"), [(2, (3, 5), (4, 2)), (2, (4, 4), (6, 6)), (3, (2, 3, 4), (3, 1, 5))]
)
def test_layout_resized(pool, pool3, world, sizes, other):
    """The layout of a second tensor with its own row count per rank (info_nce's keys and
    shared negatives): one count per rank, and a gather along it."""
    results = _run(pool, pool3, world, dist_tasks.resized, sizes, other)
    want = np.concatenate([np.full(m, float(r)) for r, m in enumerate(other)])
    for rank, (got_sizes, got_rank, gathered) in enumerate(results):
        assert got_sizes == other and got_rank == rank
        np.testing.assert_array_equal(gathered, want)
