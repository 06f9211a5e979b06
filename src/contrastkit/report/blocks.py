"""Generated tables inside hand-written Markdown: rewrite the text between two marker lines."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path


def write_block(path: str | Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` of the Markdown file ``path``
    (appended with its markers when the file lacks them; the file is created if missing)."""
    path = Path(path)
    doc = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc.split(begin, 1)[1]:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc + ("\n" if doc and not doc.endswith("\n") else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")


def publish_result(
    docs: str | Path | None,
    begin: str,
    end: str,
    *,
    caption: str,
    table: str,
    summary: str,
    command: str,
) -> None:
    """Print an experiment's caption, table and one-line verdict; with ``docs``, also write them
    (and the ``command`` that made them) into the marked block of that Markdown file."""
    print(f"\n{caption}\n\n{table}\n\n{summary}")
    if docs is not None:
        text = f"{caption}\n\n{table}\n\n**Result:** {summary}\n\nCommand: `{command}`"
        write_block(docs, begin, end, text)
        print(f"wrote the table into {docs}")


def mean_std(values: list[float], digits: int = 3) -> str:
    """A table cell: "mean ± sample std" of the seeds' values ("mean" for one value; "–" when
    there is none or one is NaN)."""
    if not values or any(math.isnan(v) for v in values):
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def clear_gain(a: list[float], b: list[float], floor: float) -> tuple[float, bool]:
    """(mean(a) - mean(b), whether that gain is clear): above ``floor`` and, with several seeds,
    above 2 unpaired standard errors sqrt(var(a)/n_a + var(b)/n_b)."""
    gain = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return gain, gain > floor
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return gain, gain > max(2 * se, floor)


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``"name 0.123, other 4.560"``: an experiment's metrics of one run, three decimals."""
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def print_progress(
    start: float, label: str, metrics: Mapping[str, float], since: float | None = None, note: str = ""
) -> None:
    """One progress line of an experiment: ``[elapsed] label: metrics note (run time)``, with the
    elapsed time from ``start`` and, given ``since``, the time this run took."""
    took = "" if since is None else f" ({time.time() - since:.0f}s)"
    print(f"[{time.time() - start:6.1f}s] {label}: {format_metrics(metrics)}{note}{took}", flush=True)
