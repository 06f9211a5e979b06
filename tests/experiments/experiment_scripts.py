"""Load or run an ``experiments/<name>.py`` script, for the experiments' smoke tests."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

FOLDER = Path(__file__).resolve().parents[2] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """The module of ``experiments/<name>.py`` (its ``main`` not run). The folder goes on
    ``sys.path``, as for a script run, so that the experiments' shared modules import; the module
    is registered in ``sys.modules`` (dataclasses look their module up there)."""
    if str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))
    key = f"experiment_{name}"
    spec = importlib.util.spec_from_file_location(key, FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


PAGE = "# page\n\nbefore\n"


def run_quick(name: str, tmp_path: Path, timeout: int = 180) -> tuple[str, str]:
    """Run ``experiments/<name>.py --quick --docs PAGE`` in a subprocess; check that it exits 0 and
    leaves the page's own text before its block alone. Returns (stdout, the page's text)."""
    docs = tmp_path / f"{name}.md"
    docs.write_text(PAGE, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(FOLDER / f"{name}.py"), "--quick", "--docs", str(docs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=FOLDER.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = docs.read_text(encoding="utf-8")
    assert text.startswith(PAGE)
    return done.stdout, text
