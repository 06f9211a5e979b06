"""A pool of real processes joined in a gloo process group on loopback, for distributed tests.

The processes are started once (spawn, ~2 s) and kept for the whole session; a test sends them a
task, an importable function ``task(rank, world, *args)``, and gets back one result per rank.
Every collective has a timeout, and a task that does not answer in time kills the pool (the next
test starts a fresh one), so a deadlock fails one test instead of hanging the suite.

    def task(rank, world, n):
        ...                                    # runs in each worker, process group initialised
        return value

    results = pool.run(task, 8)               # [value of rank 0, value of rank 1]
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

TASK_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tasks: Any, results: Any) -> None:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    while True:
        job = tasks.get()
        if job is None:
            break
        fn, args = job
        try:
            results.put((rank, True, fn(rank, world, *args)))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the test
            results.put((rank, False, (type(err).__name__, str(err), traceback.format_exc())))
    dist.destroy_process_group()


class TaskFailed(AssertionError):
    """A task raised on some rank; carries every rank's (type name, message)."""

    def __init__(self, errors: dict[int, tuple[str, str, str]]) -> None:
        self.errors = errors
        shown = "\n".join(f"--- rank {r}: {e[0]}: {e[1]}\n{e[2]}" for r, e in sorted(errors.items()))
        super().__init__(f"task failed on rank(s) {sorted(errors)}:\n{shown}")


class ProcessPool:
    """``world`` worker processes in one gloo group; ``run(task, *args)`` -> per-rank results."""

    def __init__(self, world: int = 2) -> None:
        self.world = world
        ctx = mp.get_context("spawn")
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        port = free_port()
        self.procs = [
            ctx.Process(target=_worker, args=(r, world, port, self.tasks[r], self.results), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()
        self.broken = False

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = TASK_TIMEOUT_S) -> list[Any]:
        """Run ``fn(rank, world, *args)`` on every worker; raise ``TaskFailed`` if any raised."""
        if self.broken:
            raise RuntimeError("the process pool was closed after a timeout")
        for q in self.tasks:
            q.put((fn, args))
        got: dict[int, tuple[bool, Any]] = {}
        while len(got) < self.world:
            try:
                rank, ok, value = self.results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                missing = sorted(set(range(self.world)) - set(got))
                raise TimeoutError(
                    f"ranks {missing} did not finish {fn.__name__} in {timeout} s (a collective hang?)"
                ) from None
            got[rank] = (ok, value)
        errors = {r: v for r, (ok, v) in got.items() if not ok}
        if errors:
            raise TaskFailed(errors)
        return [got[r][1] for r in range(self.world)]

    def close(self) -> None:
        self.broken = True
        for q in self.tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
