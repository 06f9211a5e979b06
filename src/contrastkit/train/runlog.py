"""The run's training log: log.csv (kept up to the resumed step), TensorBoard and the console."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contrastkit.train.config import ConfigError
from contrastkit.train.progress import Progress

LOG_COLUMNS = ("step", "epoch", "loss", "scale", "bias", "lr", "samples_per_s", "elapsed_s")
SHOWN = ("loss", "scale", "bias", "lr", "samples_per_s")


class RunLog:
    """log.csv with ``LOG_COLUMNS`` plus ``extra_columns`` (e.g. ``aux_<name>``), mirrored to
    TensorBoard (``tensorboard=True``) and to the progress bar or, without a terminal, a printed
    line. Only the process that writes the run (rank 0) opens it.
    """

    def __init__(
        self, run_dir: Path, extra_columns: Sequence[str], steps: int, tensorboard: bool = False
    ) -> None:
        self.run_dir, self.steps, self.tensorboard = Path(run_dir), steps, tensorboard
        self.columns = (*LOG_COLUMNS, *extra_columns)
        self.extra = tuple(extra_columns)
        self.file: Any = None
        self.writer: Any = None
        self.board: Any = None

    def open(self, keep_until: int | None = None) -> None:
        """Start log.csv; a resumed run (``keep_until`` = its step) keeps its rows up to that step."""
        path = self.run_dir / "log.csv"
        rows = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self.file = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()
        self.board = self._open_tensorboard() if self.tensorboard else None

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard: needs the tensorboard package; pip install 'contrastkit[tensorboard]'."
            ) from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, row: dict[str, Any], step: int, progress: Progress) -> None:
        """One row to log.csv, TensorBoard, and the progress bar or the console."""
        self.writer.writerow(row)
        self.file.flush()
        shown = {k: row[k] for k in (*SHOWN, *self.extra) if row.get(k)}
        if self.board is not None:
            for key, value in shown.items():
                self.board.add_scalar(f"train/{key}", float(value), step)
        progress.set_postfix(shown)
        if not progress.interactive:
            values = "  ".join(f"{k} {shown[k]}" for k in ("loss", "scale", "bias") if k in shown)
            print(f"step {step}/{self.steps}  {values}  {row['samples_per_s']} samples/s", flush=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()
