"""``write_report``: one self-contained HTML page (inline CSS, base64 PNGs; nothing fetched online)."""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path

from contrastkit.report import sections
from contrastkit.report.load import load_run

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h3 { margin-bottom: .3em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .25em .7em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
table.kv th { background: #f6f6f6; }
.na, .note { color: #777; font-style: italic; }
img.plot { max-width: 100%; }
pre { background: #f6f6f6; padding: .7em; overflow-x: auto; white-space: pre-wrap; }
.example { margin: 1em 0; }
.query { font-weight: 600; margin: .3em 0; }
figure { display: inline-block; margin: 0 .5em .5em 0; text-align: center; font-size: .8em; }
figure img, .noimg { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
                     border: 4px solid; display: block; }
.noimg { line-height: 96px; background: #f6f6f6; }
figure.hit img, figure.hit .noimg { border-color: #2e7d32; }
figure.miss img, figure.miss .noimg { border-color: #c62828; }
figure.target img { border-style: dashed; }
"""


def render_html(run_dir: str | os.PathLike[str]) -> str:
    """The report page for ``run_dir`` as a string (see :func:`write_report`)."""
    run = load_run(run_dir)
    written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    body = [
        sections.header(run, written),
        sections.curves(run),
        sections.metrics(run),
        sections.similarity(run),
        sections.examples(run),
        sections.data_issues(run),
    ]
    title = sections.esc(f"contrastkit report — {run.run_dir.resolve().name}")
    head = f'<meta charset="utf-8">\n<title>{title}</title>\n<style>{_CSS}</style>'
    page = "\n".join(body)
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n<body>\n{page}\n</body>\n</html>\n'


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` then ``os.replace`` it (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of a training run and return its path.

    Args:
        run_dir: a run directory written by ``contrastkit train`` (``log.csv`` and ``metrics.json``
            required; ``config.yaml``, ``eval/similarity.npy``, ``eval/examples.json``,
            ``eval/thumbnails.npy`` and ``data_issues.txt`` shown when present).
        out: the file to write; default ``run_dir/report.html``. Written atomically.

    Returns:
        The path of the written report.

    Raises:
        InputError: the run directory or a required file is missing, or a file is corrupt
            (the message names it).

    Examples:
        >>> write_report("runs/flickr-clip")  # doctest: +SKIP
        PosixPath('runs/flickr-clip/report.html')
    """
    page = render_html(run_dir)
    path = Path(run_dir) / "report.html" if out is None else Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, page)
    return path
