"""GradCache: the gradient of a contrastive loss over a batch larger than activations allow.

The loss couples every pair of the batch, so it cannot be split into independent micro-batches.
GradCache (Gao et al. 2021, arXiv 2101.06983) splits the *encoder* instead:

1. embed every micro-batch under ``no_grad``, saving the RNG state before each;
2. compute the loss on all embeddings at once (tiled when large) and cache dL/d(embeddings);
3. re-embed each micro-batch with its RNG state replayed (same dropout masks) and backpropagate
   <embeddings, cached gradient>, under DDP's ``no_sync`` for all but the last micro-batch.

The parameter gradients equal those of one backward pass through the same micro-batch
forwards; activation memory is that of one micro-batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from contrastkit.errors import InputError

Batch = Any
"""A tensor, a list, or a (nested) dict of them, all split along their first dimension."""


class RandomState:
    """The CPU, CUDA and MPS generator states at one moment, to replay a forward pass exactly."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        mps = getattr(torch, "mps", None)
        self.mps = mps.get_rng_state() if mps is not None and torch.backends.mps.is_available() else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then restore the generators as they were before it."""
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            mps_before = torch.mps.get_rng_state() if self.mps is not None else None
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            if self.mps is not None:
                torch.mps.set_rng_state(self.mps)
            try:
                yield
            finally:
                if mps_before is not None:
                    torch.mps.set_rng_state(mps_before)


def _row_counts(batch: Batch) -> list[int]:
    """The first dimension of every tensor and the length of every list in a batch; dicts and
    tuples are structure (a tuple of tensors is several inputs, not several samples)."""
    if isinstance(batch, torch.Tensor):
        return [batch.shape[0]] if batch.dim() else []
    if isinstance(batch, Mapping):
        return [n for value in batch.values() for n in _row_counts(value)]
    if isinstance(batch, tuple):
        return [n for value in batch for n in _row_counts(value)]
    if isinstance(batch, list):
        return [len(batch)]
    return []


def batch_size_of(batch: Batch) -> int:
    """The number of samples B, shared by every tensor (first dimension) and list of the batch."""
    counts = set(_row_counts(batch))
    if len(counts) != 1:
        found = "no tensor or list" if not counts else f"different row counts {sorted(counts)}"
        raise InputError(
            f"gradcache: cannot find the batch size: the batch has {found}; give tensors (and lists) "
            f"that share their first dimension."
        )
    return counts.pop()


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Split every tensor and list of a batch into consecutive micro-batches of ``size`` rows."""
    n = batch_size_of(batch)
    return [_slice(batch, start, min(start + size, n)) for start in range(0, n, size)]


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {key: _slice(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_slice(value, start, stop) for value in batch)
    if isinstance(batch, list):
        return batch[start:stop]
    return batch


def _leaves(reps: Any) -> list[torch.Tensor]:
    if isinstance(reps, torch.Tensor):
        return [reps]
    if isinstance(reps, Mapping):
        return [leaf for key in sorted(reps) for leaf in _leaves(reps[key])]
    if isinstance(reps, Sequence) and not isinstance(reps, str):
        return [leaf for item in reps for leaf in _leaves(item)]
    raise InputError(
        f"gradcache: the encoder must return a tensor, or a tuple/dict of tensors; got {type(reps).__name__}."
    )


def _rebuild(template: Any, leaves: Iterator[torch.Tensor]) -> Any:
    if isinstance(template, torch.Tensor):
        return next(leaves)
    if isinstance(template, Mapping):
        rebuilt = {key: _rebuild(template[key], leaves) for key in sorted(template)}
        return {key: rebuilt[key] for key in template}
    return type(template)(_rebuild(item, leaves) for item in template)


def _warn_batch_norm(model: nn.Module) -> None:
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and model.training:
        warnings.warn(
            f"gradcache: {norms[0]!r} is a BatchNorm layer; its statistics are per micro-batch, so the "
            f"gradient is not that of the full batch (and running stats update twice). Use GroupNorm "
            f"/ LayerNorm, or accept the difference.",
            UserWarning,
            stacklevel=3,
        )


def gradcache_step(
    model: nn.Module,
    batch: Batch,
    loss_fn: Callable[[Any], torch.Tensor],
    micro_batch_size: int,
    *,
    encode: Callable[[Batch], Any] | None = None,
    scaler: Any = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn(encode(batch))``, one micro-batch at a time.

    Args:
        model: the module whose parameters receive gradients (DDP-wrapped or not); with DDP,
            every micro-batch but the last runs under ``model.no_sync()``, so gradients are
            all-reduced once.
        batch: a tensor, list or (nested) dict of them with B rows.
        loss_fn: full embeddings (the structure ``encode`` returns, concatenated over micro-batches)
            -> scalar loss. Its own parameters (a learnable scale) get their gradient directly.
        micro_batch_size: rows per micro-batch (>= 1).
        encode: micro-batch -> embeddings: a tensor, a tuple or a dict of tensors; default ``model``.
        scaler: an optional ``torch.amp.GradScaler`` (fp16): the loss is scaled before backward.

    Returns:
        The loss, detached.

    Under DDP, parameters that only ``loss_fn`` uses (a learnable scale inside the wrapped model)
    get their gradient outside DDP's synchronised backward: keep them out of DDP and average their
    gradient yourself, as the trainer does (``train.parallel.wrap_model`` and
    ``average_loss_gradients``). With a distributed loss (``distributed="local"``) the cached
    gradients already hold every rank's contribution, so the result is the global-batch gradient.
    """
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise InputError(f"gradcache: 'micro_batch_size' must be an int >= 1; got {micro_batch_size!r}.")
    encode = model if encode is None else encode
    _warn_batch_norm(model)
    micro_batches = split_batch(batch, micro_batch_size)
    states, outputs = [], []
    with torch.no_grad():
        for micro in micro_batches:
            states.append(RandomState())
            outputs.append(encode(micro))

    per_micro = [_leaves(out) for out in outputs]
    full = [torch.cat(parts).detach().requires_grad_() for parts in zip(*per_micro, strict=True)]
    loss = loss_fn(_rebuild(outputs[0], iter(full)))
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise InputError("gradcache: 'loss_fn' must return a 0-d tensor (the batch loss).")
    (scaler.scale(loss) if scaler is not None else loss).backward()
    cached = [
        None if leaf.grad is None else leaf.grad.split([part.shape[0] for part in parts])
        for leaf, parts in zip(full, zip(*per_micro, strict=True), strict=True)
    ]

    no_sync = getattr(model, "no_sync", None)
    for index, (micro, state) in enumerate(zip(micro_batches, states, strict=True)):
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with state.replay():
                leaves = _leaves(encode(micro))
            terms = [
                (leaf * grads[index]).sum()
                for leaf, grads in zip(leaves, cached, strict=True)
                if grads is not None and leaf.requires_grad
            ]
            if terms:
                sum(terms).backward()
    return loss.detach()
