"""The ``contrastkit`` command for the torchrun tests, with one fault injected by ``$FAULT``.

Run as ``torchrun ... tests/train/torchrun_entry.py train CONFIG ...``. Faults fire on the first
attempt only (``TORCHELASTIC_RESTART_COUNT == 0``), so a restarted worker group runs clean:

    kill_worker       rank 1 is SIGKILLed in the middle of step 5 (after checkpoint 3)
    kill_during_save  rank 0 is SIGKILLed while writing checkpoint 6, before its final rename
    bad_batch         rank 1 fails to load the batch of step 2 (a DataError)
    abort_after_fit   rank 1 aborts once training has finished (as a crash at teardown would)
"""

from __future__ import annotations

import os
import signal

from contrastkit.cli import main
from contrastkit.data import DataError
from contrastkit.train import checkpoint, pipeline, trainer

FAULT = os.environ.get("FAULT", "")
RANK = int(os.environ.get("RANK", "0"))
FIRST_ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if FIRST_ATTEMPT and FAULT == "kill_worker" and RANK == 1:
    original_step = trainer.Trainer.train_step

    def train_step(self):
        if self.step == 4:
            _die()
        return original_step(self)

    trainer.Trainer.train_step = train_step

if FIRST_ATTEMPT and FAULT == "kill_during_save" and RANK == 0:
    original_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("step-000006"):
            _die()
        return original_replace(src, dst)

    checkpoint.os.replace = replace

if FIRST_ATTEMPT and FAULT == "bad_batch" and RANK == 1:
    original_next = pipeline.BatchStream.next
    calls = []

    def next_batch(self):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("shard train-000007.tar is truncated (synthetic fault)")
        return original_next(self)

    pipeline.BatchStream.next = next_batch

if FIRST_ATTEMPT and FAULT == "abort_after_fit" and RANK == 1:
    original_fit = trainer.Trainer.fit

    def fit(self):
        original_fit(self)
        os.abort()

    trainer.Trainer.fit = fit

raise SystemExit(main())
