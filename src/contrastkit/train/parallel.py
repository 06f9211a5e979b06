"""The trainer's side of ``torch.distributed``: DDP wrapping, loss-parameter sync, per-rank RNG.

The towers are wrapped in ``DistributedDataParallel``; the loss's own parameters (the logit scale
and bias of ``ContrastiveModel``) are used outside the model's forward and, under GradCache, get
their gradient from a backward pass that is not the model's. DDP is told to ignore them and the
trainer averages their gradients itself after every backward (``average_loss_gradients``), the
same average DDP takes, so that one rule holds on every path.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from contrastkit.distributed import (
    gather_objects,
    get_rank,
    get_world_size,
    is_active,
    job_value,
    launched_by_torchrun,
)
from contrastkit.train.config import ConfigError

RANK_RNG_PREFIX = "rng.rank"


def loss_parameter_names(model: nn.Module) -> list[str]:
    """Trainable parameters outside the towers and heads (the logit scale and bias)."""
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not name.startswith(("towers.", "heads."))
    ]


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when several processes run, else ``model`` itself.

    Buffers are not synchronised at each forward (GradCache runs a different number of forwards
    on ranks with uneven batches). BatchNorm layers would normalise by each rank's slice and keep
    per-rank running statistics: on CUDA they become ``SyncBatchNorm`` (statistics of the global
    batch, as one process has); on CPU, where torch has no synchronised BatchNorm, a warning says
    the run differs from one process.
    """
    if not is_active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif norms and get_rank() == 0:
        warnings.warn(
            f"{norms[0]!r} is a BatchNorm layer: under torchrun on CPU each process normalises by its "
            f"own slice of the batch and keeps its own running statistics (rank 0's are saved), so the "
            f"run differs from one process. Use GroupNorm (model.towers.image.norm: group) for an "
            f"exact run.",
            UserWarning,
            stacklevel=2,
        )

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, loss_parameter_names(model))
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def check_every_parameter_learns(model: nn.Module) -> None:
    """Under DDP, after the first backward: every trainable parameter must have a gradient (DDP
    waits for all of them and would fail at the next step with a message about reductions)."""
    if not is_active():
        return
    skipped = set(loss_parameter_names(model))
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and n not in skipped]
    if idle:
        raise ConfigError(
            f"model: {len(idle)} trainable parameter(s) get no gradient from the loss (first: "
            f"{idle[:3]}); under torchrun every trained parameter must be used. Freeze that part "
            f"(model.frozen, or requires_grad_(False)) or drop it from the tower."
        )


def average_loss_gradients(model: nn.Module, extra: Iterable[nn.Parameter] = ()) -> None:
    """Average the gradients of the loss parameters, and of ``extra`` parameters outside DDP
    (auxiliary-loss modules), over ranks (what DDP does for the towers).

    Every rank computes the same loss function, so a parameter has a gradient on all ranks or on
    none; one without is left alone."""
    if not is_active():
        return
    world = get_world_size()
    for param in [*(model.get_parameter(n) for n in loss_parameter_names(model)), *extra]:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world)


JOB_FILE = ".torchrun-job"
"""Names the torchrun job that owns a run directory: its restarts resume the run by themselves."""


def elastic_restart() -> int:
    """How many times torchrun has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def torchrun_job() -> str | None:
    """A token for this torchrun job, the same in every restart of it; None outside torchrun."""
    return job_value("run-token", lambda: uuid.uuid4().hex) if launched_by_torchrun() else None


def claim_run_dir(run_dir: Path, job: str | None) -> None:
    """Record that ``job`` (a ``torchrun_job`` token) writes ``run_dir``."""
    if job is not None:
        (run_dir / JOB_FILE).write_text(job)


def restarted_into(run_dir: Path, job: str | None) -> bool:
    """True in a torchrun restart whose own job wrote ``run_dir`` (never another run's folder)."""
    path = run_dir / JOB_FILE
    return bool(elastic_restart() and job and path.is_file() and path.read_text().strip() == job)


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. trains and saves a tokenizer); the others run it after,
    and find what rank 0 wrote."""
    if is_active() and get_rank() != 0:
        dist.barrier()
    yield
    if is_active() and get_rank() == 0:
        dist.barrier()


def seed_rank(seed: int) -> None:
    """Give ranks > 0 their own torch generator stream (dropout), after the shared model init;
    rank 0 keeps the stream a single process would have."""
    rank = get_rank()
    if is_active() and rank > 0:
        torch.manual_seed(hash((seed, rank)) % 2**63)


def gather_bad_record_examples(examples: list, keep: int) -> list:
    """Every rank's example bad records, in rank order, the first ``keep`` of them."""
    return [record for part in gather_objects(examples) for record in part][:keep]


def rank_rng_tensors() -> dict[str, torch.Tensor]:
    """Every rank's torch generator states, gathered on every rank as ``rng.rank{r}.*`` tensors
    (rank 0's own states are saved by the checkpoint itself)."""
    if not is_active():
        return {}
    mine = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine.update({f"torch_cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return {
        f"{RANK_RNG_PREFIX}{rank}.{key}": value
        for rank, state in enumerate(gather_objects(mine))
        if rank > 0
        for key, value in state.items()
    }


def restore_rank_rng(rng: dict[str, torch.Tensor], seed: int, step: int) -> None:
    """Set this rank's torch generators from a checkpoint's ``rng.rank{r}.*`` tensors.

    Rank 0 uses the checkpoint's own states (restored with the model). A rank the checkpoint has
    no state for (the run was resumed on more processes) is seeded from (seed, rank, step)."""
    rank = get_rank()
    if rank == 0:
        return
    prefix = f"{RANK_RNG_PREFIX}{rank}."
    mine = {k[len(prefix) :]: v for k, v in rng.items() if k.startswith(prefix)}
    if "torch_cpu" not in mine:
        torch.manual_seed(hash((seed, rank, step)) % 2**63)
        return
    torch.set_rng_state(mine["torch_cpu"])
    cuda = [mine[k] for k in sorted(mine) if k.startswith("torch_cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
