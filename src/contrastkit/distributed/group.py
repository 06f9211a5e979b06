"""The process group: who am I, joining torchrun's group, and small collectives on Python values."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist


def is_active(group: Any = None) -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def get_rank(group: Any = None) -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when the environment of a torchrun (or any env:// launcher) worker is set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA).

    Returns True when this process is one of several; a no-op (False) outside torchrun or when
    the group is already initialised by the caller.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if dist.is_initialized():
        return True
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        store=_attempt_store(rank, world),
        rank=rank,
        world_size=world,
    )
    return True


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The rendezvous store of this worker group, with keys private to this restart attempt.

    torchrun keeps one TCP store across restarts (``TORCHELASTIC_USE_AGENT_STORE``), and the
    process group's keys are the same in every attempt: a restarted worker could read the address
    of a killed one and fail to connect. A prefix per ``TORCHELASTIC_RESTART_COUNT`` avoids that.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent_store and rank == 0,
        multi_tenant=True,
    )
    return dist.PrefixStore(f"contrastkit/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextlib.contextmanager
def distributed_run(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Join torchrun's process group for the block (if launched by torchrun) and leave it after;
    yields True on the process that reports (rank 0, or the only one)."""
    joined = init_from_env(device)
    try:
        yield get_rank() == 0
        if joined:
            dist.barrier()  # leave together, so no rank tears down a connection another still uses
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def agree_on_value(value: Any, group: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a timestamped output folder); the value itself
    without a process group."""
    if not is_active(group):
        return value
    box = [value]
    dist.broadcast_object_list(
        box, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group
    )
    return box[0]


def job_value(key: str, make: Callable[[], str]) -> str:
    """A string fixed for a whole torchrun job, its restarts included (an output folder name, a
    job token): the first attempt's rank 0 makes it and keeps it in torchrun's rendezvous store;
    later attempts read it back. Outside torchrun, ``make()``. Without torchrun's shared store
    (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``) the value is rank 0's of this attempt only.
    """
    if not launched_by_torchrun():
        return make()
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return agree_on_value(make())
    store = dist.PrefixStore(
        "contrastkit/job",
        dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False),
    )
    if int(os.environ["RANK"]) == 0 and not store.check([key]):
        store.set(key, make())
    return store.get(key).decode()


def gather_objects(value: Any, group: Any = None) -> list[Any]:
    """Every rank's picklable ``value``, in rank order (``[value]`` without a process group).
    Only for values this job's own ranks produced: it unpickles what they send."""
    if not is_active(group):
        return [value]
    found: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(found, value, group=group)
    return found


def all_reduce_mean(value: float, group: Any = None) -> float:
    """The mean over ranks of a Python float (the global loss from the ranks' shares)."""
    if not is_active(group):
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=comm_device(group))
    dist.all_reduce(tensor, group=group)
    return float(tensor.item()) / dist.get_world_size(group)


def comm_device(group: Any) -> torch.device:
    """The device collectives of ``group`` run on (CUDA for NCCL, else CPU)."""
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
