"""Every distributed loss is exact (METHODS 2.4), on real gloo processes over loopback.

Each case splits one seeded global batch over the ranks (unevenly: (3, 5), or (2, 3, 4) with
three ranks) and checks, against the single-process loss L of the whole batch in float64:

- ``"gather"``: every rank returns L; ``"local"`` / ``"ring"``: the ranks' losses average to L
  (``reduction="none"``: each rank returns its anchors' losses);
- the gradient of every input slice z_r, divided by W, is dL/dz of those rows (atol 1e-10);
- the scale and bias (leaves shared by the ranks) get gradients whose mean over ranks is
  dL/dscale, dL/dbias, which is what DDP's averaging hands the optimiser.
"""

from __future__ import annotations

import pytest
import torch

import dist_tasks
from process_pool import TaskFailed

SIZES = (3, 5)
SIZES3 = (2, 3, 4)
MODES = ("gather", "local")


def case(name: str, mode: str, options: dict):
    """A pytest.param with a readable id: loss-mode-option=value-..."""
    shown = "-".join(f"{k}={v}" for k, v in options.items()) or "default"
    return pytest.param(name, mode, options, id=f"{name}-{mode}-{shown}")


def cases(name: str, modes: tuple[str, ...], options: list[dict]) -> list:
    return [case(name, mode, opts) for mode in modes for opts in options]


CLIP = cases(
    "clip",
    MODES,
    [
        {},
        {"chunk_size": 0},
        {"chunk_size": 2},
        {"label_smoothing": 0.1},
        {"label_smoothing": 0.1, "chunk_size": 2},
        {"ids": True},
        {"ids": True, "chunk_size": 2},
        {"ids": True, "label_smoothing": 0.2},
        {"ids": True, "label_smoothing": 0.2, "chunk_size": 2},
        {"bias": True},  # accepted, zero gradient
    ],
)
SIGLIP = cases(
    "siglip",
    ("gather", "local", "ring"),
    [{}, {"chunk_size": 0}, {"chunk_size": 2}, {"ids": True}, {"ids": True, "chunk_size": 2}],
)
INFO_NCE = cases(
    "info_nce",
    MODES,
    [
        {},
        {"more_keys": False},
        {"chunk_size": 2},
        {"negatives": "shared"},
        {"negatives": "shared", "chunk_size": 2},
        {"negatives": "per_query"},
        {"negatives": "per_query", "chunk_size": 2},
        {"reduction": "sum"},
        {"reduction": "sum", "negatives": "shared"},
        {"reduction": "none"},
        {"reduction": "none", "negatives": "per_query", "chunk_size": 2},
    ],
)
NT_XENT = cases("nt_xent", MODES, [{}, {"chunk_size": 0}, {"chunk_size": 2}])
SUPCON = cases(
    "supcon",
    MODES,
    [
        {},
        {"chunk_size": 2},
        {"views": 2},
        {"views": 2, "chunk_size": 2},
        {"reduction": "sum"},
        {"reduction": "sum", "views": 2, "chunk_size": 2},
        {"reduction": "none"},
        {"reduction": "none", "views": 2},
        {"reduction": "none", "views": 2, "chunk_size": 2},
    ],
)
MNRL = cases(
    "mnrl",
    MODES,
    [
        {},
        {"chunk_size": 2},
        {"negatives": "one"},
        {"negatives": "many"},
        {"negatives": "many", "chunk_size": 2},
        {"guide": True},
        {"guide": True, "negatives": "one", "margin": 0.1},
        {"guide": True, "negatives": "many", "chunk_size": 0},
        {"guide": True, "negatives": "many", "margin": 0.1, "margin_strategy": "relative"},
        {"symmetric": True},
        {"symmetric": True, "negatives": "many", "chunk_size": 2},
    ],
)


@pytest.mark.parametrize(("name", "mode", "options"), CLIP + SIGLIP + INFO_NCE + NT_XENT + SUPCON + MNRL)
def test_exact_float64(pool, name, mode, options):
    dist_tasks.check_exact(pool.run(dist_tasks.exact, name, SIZES, mode, options), mode)


FLOAT32 = [
    case("clip", "local", {"ids": True, "label_smoothing": 0.1}),
    case("clip", "gather", {"chunk_size": 2}),
    case("siglip", "ring", {"ids": True}),
    case("siglip", "local", {"chunk_size": 2}),
    case("info_nce", "local", {"negatives": "shared"}),
    case("nt_xent", "local", {}),
    case("supcon", "local", {"views": 2}),
    case("mnrl", "local", {"guide": True, "negatives": "many"}),
]


@pytest.mark.parametrize(("name", "mode", "options"), FLOAT32)
def test_exact_float32(pool, name, mode, options):
    results = pool.run(dist_tasks.exact, name, SIZES, mode, options, "float32")
    dist_tasks.check_exact(results, mode, atol=1e-5)


THREE_RANKS = [
    case("clip", "local", {"ids": True}),
    case("clip", "gather", {"label_smoothing": 0.1, "chunk_size": 2}),
    case("siglip", "ring", {}),
    case("siglip", "ring", {"ids": True, "chunk_size": 2}),
    case("siglip", "local", {"ids": True}),
    case("siglip", "gather", {}),
    case("info_nce", "local", {"negatives": "shared"}),
    case("info_nce", "gather", {"negatives": "per_query", "reduction": "none"}),
    case("nt_xent", "local", {"chunk_size": 2}),
    case("supcon", "local", {"views": 2}),
    case("supcon", "gather", {"reduction": "none"}),
    case("mnrl", "local", {"guide": True, "negatives": "many"}),
    case("mnrl", "gather", {"negatives": "one", "chunk_size": 2}),
    case("mnrl", "local", {"symmetric": True, "negatives": "many"}),
    case("mnrl", "local", {"symmetric": True, "negatives": "one", "chunk_size": 2}),
    case("mnrl", "gather", {"symmetric": True, "negatives": "many", "chunk_size": 2}),
    case("mnrl", "gather", {"symmetric": True}),
]


@pytest.mark.parametrize(("name", "mode", "options"), THREE_RANKS)
def test_exact_three_ranks_uneven(pool3, name, mode, options):
    dist_tasks.check_exact(pool3.run(dist_tasks.exact, name, SIZES3, mode, options), mode)


# ---- supcon: anchors without positives ---------------------------------------------------------
# rank 0's three samples are singletons of the global batch; rank 1 holds two classes of two
NO_ANCHOR_ON_RANK0 = [100, 101, 102, 0, 0, 1, 1, 2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [0, 2])
def test_supcon_rank_without_valid_anchor_is_exact(pool, mode, reduction, chunk_size):
    options = {"labels": NO_ANCHOR_ON_RANK0, "reduction": reduction, "chunk_size": chunk_size}
    results = pool.run(dist_tasks.exact, "supcon", SIZES, mode, options)
    dist_tasks.check_exact(results, mode)
    if reduction == "none" and mode == "local":
        assert all(v != v for v in results[0]["value"])  # rank 0: all NaN (no positive)
    # rank 0's embeddings still get gradient: they are the other anchors' negatives
    assert abs(results[0]["grads"]["z"][0]).max() > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{"chunk_size": 0}, {"chunk_size": 2}, {"views": 1, "reduction": "none"}])
def test_supcon_no_positive_anywhere_raises_on_every_rank(pool, mode, options):
    options = {"labels": list(range(8))} | options  # every sample its own class, one view
    with pytest.raises(TaskFailed) as failed:
        pool.run(dist_tasks.exact, "supcon", SIZES, mode, options)
    assert sorted(failed.value.errors) == [0, 1]
    for error_type, message, _ in failed.value.errors.values():
        assert error_type == "NoPositivePairsError", message
        assert "supcon" in message


def test_supcon_two_views_singletons_still_have_positives(pool):
    """With two views a sample is its own other view's positive: unique labels are fine."""
    options = {"labels": list(range(8)), "views": 2}
    dist_tasks.check_exact(pool.run(dist_tasks.exact, "supcon", SIZES, "local", options), "local")


# ---- the cases exercise what they claim to (main process, no pool) ---------------------------------
def test_cases_exercise_their_options():
    def loss(name, sizes=SIZES, **options):
        case = dist_tasks.CASES[name](sizes, torch.float64, **options)
        inputs, params = dist_tasks.global_inputs(case), dist_tasks.scalar_leaves(case, torch.float64)
        return float(case.reference(inputs, params).detach())

    # sample ids repeat across ranks (cross-rank positives) and within a rank
    for sizes in (SIZES, SIZES3):
        ids = dist_tasks.CASES["clip"](sizes, torch.float64, ids=True).data["ids"][0]
        parts = [set(ids[dist_tasks.rows_of(sizes, r)].tolist()) for r in range(len(sizes))]
        assert all(parts[r] & set().union(*(parts[:r] + parts[r + 1 :])) for r in range(len(sizes)))
        assert len(ids.unique()) < len(ids)
    # the GISTEmbed guide masks some candidates, with and without negatives and margins
    for options in (
        {},
        {"negatives": "many", "margin": 0.1},
        {"negatives": "one", "margin": 0.1, "margin_strategy": "relative"},
    ):
        plain = {k: v for k, v in options.items() if k == "negatives"}
        assert abs(loss("mnrl", guide=True, **options) - loss("mnrl", **plain)) > 1e-3
    # info_nce: more keys than queries on every rank; label smoothing changes the clip loss
    case = dist_tasks.CASES["info_nce"](SIZES, torch.float64)
    assert all(m > b for m, b in zip(case.data["k"][1], SIZES, strict=True))
    assert abs(loss("clip", label_smoothing=0.1) - loss("clip")) > 1e-3
    # supcon's default labels: a class on one rank only, classes shared by the ranks, a singleton
    labels = dist_tasks.default_labels(SIZES)
    assert labels[:3] == [0, 1, 20] and labels[3:] == [0, 1, 0, 10, 10]
