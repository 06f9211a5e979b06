"""Shared helpers: seeded inputs and the value-and-gradient comparison against a reference."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


def unit_rows(n: int, d: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, d) random L2-normalised rows, requiring grad, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()


def assert_matches_reference(
    loss_fn: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    *inputs: torch.Tensor,
    atol: float = 1e-10,
    rtol: float = 0.0,
) -> None:
    """Compare the value and the gradient w.r.t. every input that requires grad."""
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    got = loss_fn(*inputs)
    want = reference(*inputs)
    torch.testing.assert_close(got, want.to(got.dtype), atol=atol, rtol=rtol)
    got_grads = torch.autograd.grad(got, wrt, allow_unused=True)
    want_grads = torch.autograd.grad(want, wrt, allow_unused=True)
    for i, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert (g is None) == (w is None), f"gradient {i}: one side has none"
        if g is not None:
            torch.testing.assert_close(
                g, w.to(g.dtype), atol=atol, rtol=rtol, msg=lambda m, i=i: f"grad {i}: {m}"
            )


def loop_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> as a Python sum of element products (a 0-d tensor that autograd follows)."""
    return sum(a[d] * b[d] for d in range(a.shape[0]))


def loop_lse(values: list[torch.Tensor]) -> torch.Tensor:
    """log sum_j exp v_j over a Python list of 0-d tensors, shifted by the (constant) max."""
    top = max(float(v.detach()) for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def loop_reduce(per_anchor: list[torch.Tensor | None], reduction: str) -> torch.Tensor:
    """mean / sum over the anchors that have a value; "none" stacks with NaN for the others."""
    kept = [v for v in per_anchor if v is not None]
    if reduction == "mean":
        return sum(kept) / len(kept)
    if reduction == "sum":
        return sum(kept)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return torch.stack([nan if v is None else v for v in per_anchor])


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


_DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("CONTRASTKIT_SHARED_DATA", _DEFAULT_SHARED_DATA))


@pytest.fixture
def shared_data() -> Path:
    """The real data sets of ../shared/data (or $CONTRASTKIT_SHARED_DATA); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set CONTRASTKIT_SHARED_DATA to use it)")
    return SHARED_DATA


# A training run small enough for a test (a few seconds): shapes, tiny towers, 6 steps.
TINY_RUN = [
    "data.train.n=96",
    "data.eval.n=32",
    "data.image_size=16",
    "data.tokenizer=byte",
    "data.max_length=24",
    "model.towers.image={type: cnn, width: 8, depth: 2}",
    "model.towers.text={type: transformer, dim: 32, depth: 1, heads: 2}",
    "model.embed_dim=16",
    "train.batch_size=16",
    "train.steps=6",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.progress=false",
    "optim.warmup_steps=2",
    "eval.examples=4",
]

# TINY_RUN as a one-step, image-only SimCLR run (a checkpoint with no text tower).
TINY_IMAGE_ONLY_RUN = [
    *TINY_RUN,
    "model.towers={image: {type: cnn, width: 8, depth: 2}}",
    "data.views=2",
    "data.augment=true",
    "loss.name=nt_xent",
    "train.steps=1",
    "data.eval=null",
]


@contextlib.contextmanager
def crash_at_step(step: int) -> Iterator[None]:
    """Inside the block a training run dies (KeyboardInterrupt, expected) when ``step`` steps are
    done, leaving its checkpoints behind as a crash would."""
    from contrastkit.train.trainer import Trainer

    original = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    Trainer.train_step = train_step
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Trainer.train_step = original


# Real worker processes in a gloo group on loopback, for tests/distributed: ``pool`` (world 2)
# and ``pool3`` (world 3, started on first use) live for the session; a pool that a timed-out
# task broke is replaced by a fresh one for the next test.
_POOLS: dict = {}


def _pool(world: int):
    from process_pool import ProcessPool

    pool = _POOLS.get(world)
    if pool is None or pool.broken:
        pool = _POOLS[world] = ProcessPool(world)
    return pool


@pytest.fixture(scope="session")
def _pool_registry():
    yield _POOLS
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


@pytest.fixture
def pool(_pool_registry):
    """Two ranks (a fresh pool if the last one was broken by a timeout)."""
    return _pool(2)


@pytest.fixture
def pool3(_pool_registry):
    """Three ranks, started lazily."""
    return _pool(3)
