"""End to end under DistributedDataParallel, and the pitfalls of METHODS 2.4 as negative controls.

A tiny model (one Linear + L2 normalisation per input, a learnable log-scale, a bias for SigLIP;
float64, the same initialisation on every rank) is wrapped in DDP on each rank and fed that rank's
slice of one global batch. After ``loss.backward()`` the DDP-averaged gradient of every parameter
must equal the gradient of the single-process loss of the whole batch through an identical non-DDP
copy of the model (atol 1e-10), for every loss and mode.

The controls replace ``Layout.gather`` / ``gather_others`` inside the workers with an all_gather
*without* gradient (this rank's own rows keep theirs, as open_clip does without
``gather_with_grad``) and show the failure modes the exact design avoids:

  mode                          encoder grads        scale / bias grads
  gather, no-grad gather        1/W of the truth     exact
  gather, no-grad gather, x W   exact                W x the truth
  local, no-grad gather         wrong                exact
"""

from __future__ import annotations

import numpy as np
import pytest

import dist_tasks

SIZES = (3, 5)

DDP_CASES = [
    ("clip", "gather", {"ids": True, "label_smoothing": 0.1}),
    ("clip", "local", {"ids": True, "label_smoothing": 0.1}),
    ("clip", "local", {"chunk_size": 2}),
    ("siglip", "gather", {"ids": True}),
    ("siglip", "local", {"ids": True}),
    ("siglip", "ring", {"ids": True}),
    ("siglip", "ring", {"chunk_size": 2}),
    ("info_nce", "gather", {"negatives": "shared"}),
    ("info_nce", "local", {"negatives": "shared"}),
    ("info_nce", "local", {"negatives": "per_query", "chunk_size": 2}),
    ("nt_xent", "gather", {}),
    ("nt_xent", "local", {}),
    ("supcon", "gather", {"views": 2}),
    ("supcon", "local", {"views": 2}),
    ("supcon", "local", {"chunk_size": 2}),
    ("mnrl", "gather", {"negatives": "many", "guide": True}),
    ("mnrl", "local", {"negatives": "many", "guide": True}),
    ("mnrl", "local", {"negatives": "one", "chunk_size": 2}),
]


def _id(name, mode, options):
    return f"{name}-{mode}-" + ("-".join(f"{k}={v}" for k, v in options.items()) or "default")


@pytest.mark.parametrize(("name", "mode", "options"), [pytest.param(*c, id=_id(*c)) for c in DDP_CASES])
def test_ddp_gradients_are_the_full_batch_gradients(pool, name, mode, options):
    dist_tasks.check_ddp(pool.run(dist_tasks.ddp, name, SIZES, mode, options), mode)


@pytest.mark.parametrize(
    ("name", "mode", "options"),
    [
        pytest.param("clip", "local", {"ids": True}, id="clip-local"),
        pytest.param("siglip", "ring", {}, id="siglip-ring"),
        pytest.param("supcon", "gather", {"views": 2}, id="supcon-gather"),
    ],
)
def test_ddp_three_ranks_uneven(pool3, name, mode, options):
    dist_tasks.check_ddp(pool3.run(dist_tasks.ddp, name, (2, 3, 4), mode, options), mode)


# ---- negative controls ---------------------------------------------------------------------------
def _differs(got, want):
    """A real mismatch, far above rounding."""
    return np.abs(got - want).max() > 1e-3 * max(np.abs(want).max(), 1e-12)


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=what)


def _split(grads):
    encoders = {k: v for k, v in grads.items() if k.startswith("enc.")}
    scalars = {k: v for k, v in grads.items() if not k.startswith("enc.")}
    assert encoders and scalars
    return encoders, scalars


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("world", [2, 3])
def test_pitfall_global_loss_with_gather_without_grad(pool, pool3, name, world):
    """gather mode, no-grad gather: encoders get 1/W of their gradient, the scale (bias) exact."""
    runner, sizes = (pool, SIZES) if world == 2 else (pool3, (2, 3, 4))
    for res in runner.run(dist_tasks.ddp, name, sizes, "gather", {}, "no_grad_gather"):
        encoders, scalars = _split(res["grads"])
        for key, (want, got) in encoders.items():
            assert _differs(got, want), key
            _close(got, want / world, f"{key}: 1/W of the gradient")
        for key, (want, got) in scalars.items():
            _close(got, want, f"{key}: exact")


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_pitfall_loss_times_w_makes_scale_gradient_w_times_too_large(pool, name):
    """The "fix" loss x W repairs the encoders and breaks the scale and bias: W x too large."""
    world = 2
    for res in pool.run(dist_tasks.ddp, name, SIZES, "gather", {}, "no_grad_gather_times_w"):
        encoders, scalars = _split(res["grads"])
        for key, (want, got) in encoders.items():
            _close(got, want, f"{key}: exact after x W")
        for key, (want, got) in scalars.items():
            assert _differs(got, want), key
            _close(got, world * want, f"{key}: W x the gradient")


@pytest.mark.parametrize(
    ("name", "options", "wrong"),
    [
        # one B_r x B block per rank: x only scores (its column LSEs are all-reduced), y is remote
        ("clip", {}, ("enc.y.weight",)),
        ("siglip", {}, ("enc.y.weight",)),  # x only scores (it is never a remote column)
        ("supcon", {"views": 2}, ("enc.z.weight",)),
    ],
)
def test_pitfall_local_loss_with_gather_without_grad(pool, name, options, wrong):
    """local mode, no-grad gather: the terms where this rank's rows are another rank's columns are
    lost, so those encoders' gradients are wrong (not a rescaling of the truth); the rest, and the
    scale and bias (used locally), stay exact."""
    for res in pool.run(dist_tasks.ddp, name, SIZES, "local", options, "no_grad_gather"):
        for key, (want, got) in res["grads"].items():
            if key in wrong:
                ratio = (got.ravel() @ want.ravel()) / (want.ravel() @ want.ravel())
                assert _differs(got, want) and _differs(got, ratio * want), key
            elif not key.startswith(tuple(k.rsplit(".", 1)[0] for k in wrong)):
                _close(got, want, f"{key}: exact")


@pytest.mark.parametrize("name", ["clip", "siglip", "nt_xent", "mnrl"])
def test_pitfall_embedding_gradients(pool, name):
    """The same at the embeddings: gather mode without grad gives z_r.grad / W = (1/W) dL/dz;
    x W repairs that and makes the scale's gradient W x too large; local mode without grad is
    wrong."""
    world = 2
    for res in pool.run(dist_tasks.exact, name, SIZES, "gather", {}, "float64", "no_grad_gather"):
        for key, (got, want) in res["grads"].items():
            assert _differs(got / world, want), key
            _close(got / world, want / world, f"{key}: 1/W")
    results = pool.run(dist_tasks.exact, name, SIZES, "gather", {}, "float64", "no_grad_gather_times_w")
    for res in results:
        for key, (got, want) in res["grads"].items():
            _close(got / world, want, f"{key}: exact after x W")
    for key, (_, want) in results[0]["param_grads"].items():
        mean = np.mean([res["param_grads"][key][0] for res in results], axis=0)
        assert _differs(mean, want), key
        _close(mean, world * want, f"{key}: W x")
    wrong = 0
    for res in pool.run(dist_tasks.exact, name, SIZES, "local", {}, "float64", "no_grad_gather"):
        wrong += sum(_differs(got / world, want) for got, want in res["grads"].values())
    assert wrong > 0
