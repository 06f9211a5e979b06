"""The training progress bar: tqdm on a terminal, silent elsewhere (the trainer prints lines)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar on an interactive terminal; nothing otherwise (the trainer prints log lines)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, values: dict[str, Any], refresh: bool = False) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=refresh)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
