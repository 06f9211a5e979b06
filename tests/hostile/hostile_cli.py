"""Run the ``contrastkit`` command in-process on hostile input and read its one-line error."""

from __future__ import annotations

from pathlib import Path

from contrastkit.cli import main


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``contrastkit argv``; check that it exits 2 with one stderr line and no traceback and
    return that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"contrastkit {argv[0]}: error: "), err
    return err


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``folder`` outside ``skip``."""
    found = {}
    for path in folder.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file():
            stat = path.stat()
            found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return found
