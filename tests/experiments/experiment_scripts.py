"""Load an ``experiments/<name>.py`` script as a module, for the experiments' smoke tests."""

from __future__ import annotations

import importlib.util
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
