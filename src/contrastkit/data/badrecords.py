"""Records that cannot be loaded: the marker, the running log and its error.

A bad record (an unreadable image, a missing file, an empty caption, a NaN series) never stops
a run on its own: ``ContrastiveDataset`` returns a ``BadRecord`` in its place, the ``Collator``
drops it from the batch, and a ``BadRecordLog`` counts them and raises ``DataError`` only when
their share of the records seen exceeds ``max_fraction`` (config key ``data.max_bad_fraction``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from contrastkit.errors import InputError, check_range


class DataError(InputError):
    """The data cannot be used as given: too many bad records, or a malformed manifest or shard."""


@dataclass(frozen=True)
class BadRecord:
    """Stand-in for a record that could not be loaded.

    Attributes:
        index: the dataset index of the record.
        reason: one line saying what went wrong (e.g. "missing file /x/a.jpg").
    """

    index: int
    reason: str

    def __str__(self) -> str:
        return f"#{self.index}: {self.reason}"


class BadRecordLog:
    """Counts bad records against the records seen and raises when their share is too high.

    Args:
        max_fraction: largest tolerated bad / seen ratio, in [0, 1] (``data.max_bad_fraction``).
        min_seen: ``check`` passes until at least this many records were seen (0: always check),
            so that one bad record in the first small batch does not end a run.
        keep: how many example records to keep for the messages.

    Example:
        >>> log = BadRecordLog(max_fraction=0.01)
        >>> log.add(batch["bad"], seen=len(batch["index"]) + len(batch["bad"]))  # doctest: +SKIP
        >>> log.check()                                                          # doctest: +SKIP
    """

    def __init__(self, max_fraction: float = 0.01, *, min_seen: int = 0, keep: int = 20) -> None:
        self.max_fraction = check_range("BadRecordLog", "max_fraction", max_fraction, 0.0, 1.0)
        if isinstance(min_seen, bool) or not isinstance(min_seen, int) or min_seen < 0:
            raise InputError(f"BadRecordLog: argument 'min_seen' must be an int >= 0; got {min_seen!r}.")
        self.min_seen = min_seen
        self.keep = keep
        self.bad = 0
        self.seen = 0
        self.examples: list[BadRecord] = []

    def add(self, bad_records: Iterable[BadRecord], seen: int, elsewhere: int = 0) -> None:
        """Record a batch: ``bad_records`` found among ``seen`` records attempted (bad ones included),
        plus ``elsewhere`` bad records counted without examples (other ranks' share of the batch)."""
        bad_records = list(bad_records)
        if isinstance(elsewhere, bool) or not isinstance(elsewhere, int) or elsewhere < 0:
            raise InputError(
                f"BadRecordLog.add: argument 'elsewhere' must be an int >= 0; got {elsewhere!r}."
            )
        if isinstance(seen, bool) or not isinstance(seen, int) or seen < len(bad_records) + elsewhere:
            raise InputError(
                f"BadRecordLog.add: argument 'seen' must be an int >= the number of bad records "
                f"({len(bad_records) + elsewhere}): it counts every record attempted, bad ones "
                f"included; got {seen!r}."
            )
        self.bad += len(bad_records) + elsewhere
        self.seen += seen
        room = self.keep - len(self.examples)
        if room > 0:
            self.examples.extend(bad_records[:room])

    @property
    def fraction(self) -> float:
        """bad / seen so far (0.0 before anything was seen)."""
        return self.bad / self.seen if self.seen else 0.0

    def check(self) -> None:
        """Raise ``DataError`` if bad / seen > ``max_fraction`` (once ``min_seen`` records were seen)."""
        if self.seen == 0 or self.seen < self.min_seen or self.fraction <= self.max_fraction:
            return
        examples = "; ".join(str(r) for r in self.examples[:5])
        raise DataError(
            f"{self.bad} of {self.seen} records ({self.fraction:.2%}) could not be loaded, more than the "
            f"allowed {self.max_fraction:.2%}. Examples: {examples}. Fix or remove these records, or raise "
            f"the limit with data.max_bad_fraction (BadRecordLog(max_fraction=...))."
        )

    def summary(self) -> str:
        """A short text for the end of a run: the count and up to 5 examples."""
        if self.bad == 0:
            return f"no bad records among {self.seen} seen."
        lines = [f"{self.bad} bad record(s) skipped among {self.seen} seen ({self.fraction:.2%}):"]
        lines += [f"  {r}" for r in self.examples[:5]]
        if self.bad > 5:
            lines.append(f"  ... and {self.bad - 5} more")
        return "\n".join(lines)
