"""A full disk or a killed process while a checkpoint is written: the earlier checkpoint survives,
loads, and the run resumes from it; the failed write leaves nothing under a final name. A run
touches no file outside its run directory."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_cli import one_line_error, snapshot
from safetensors.torch import save_file as real_save_file

from conftest import TINY_RUN
from contrastkit.cli import main
from contrastkit.train import checkpoint as checkpoint_module
from contrastkit.train.checkpoint import list_checkpoints, load_checkpoint

SETS = [arg for item in TINY_RUN for arg in ("--set", item)]  # 6 steps, a checkpoint every 3


def _disk_full_at(step_name: str):
    def save_file(tensors, path, *args, **kwargs):
        if step_name in str(path):
            Path(path).write_bytes(b"\x00" * 10)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save_file(tensors, path, *args, **kwargs)

    return save_file


def test_a_full_disk_keeps_the_earlier_checkpoint_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module, "save_file", _disk_full_at("step-000006"))
    err = one_line_error(["train", *SETS, "--out", str(out)], capsys)
    assert "No space left on device" in err and "step-000003" in err and "--resume" in err
    assert [p.name for p in list_checkpoints(out)] == ["step-000003"]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial write is cleaned up
    assert load_checkpoint(out)["state"]["step"] == 3
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert load_checkpoint(out)["state"]["step"] == 6


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from contrastkit.train import checkpoint
    real_replace = os.replace

    def replace(src, dst):  # die the moment the step-6 checkpoint would be renamed into place
        if str(dst).endswith("step-000006"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    checkpoint.os.replace = replace
    from contrastkit.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_process_killed_mid_write_leaves_the_earlier_checkpoint_loadable(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", KILLER, "train", *SETS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-000003"]
    assert list((out / "checkpoints").glob(".tmp-step-000006-*"))  # the dead writer's folder
    assert load_checkpoint(out)["state"]["step"] == 3
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert not list((out / "checkpoints").glob(".tmp-*"))  # removed on resume
    assert load_checkpoint(out)["state"]["step"] == 6


@pytest.mark.parametrize("failing", [False, True])
def test_a_run_touches_nothing_outside_its_run_directory(failing, tmp_path):
    """``contrastkit train`` in a fresh working folder with HOME, TMPDIR and the caches redirected
    into it: afterwards only the run directory differs. (matplotlib builds its font cache once per
    machine in its config folder; that is done before the snapshot.)"""
    root = tmp_path / "world"
    for name in ("home", "tmp", "cwd"):
        (root / name).mkdir(parents=True)
    (root / "cwd" / "keep.txt").write_text("the user's own file")
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "XDG_CACHE_HOME": str(root / "home" / ".cache"),
        "MPLCONFIGDIR": str(root / "home" / ".mpl"),
    }
    run = root / "cwd" / "run"
    warm = [sys.executable, "-c", "import matplotlib.font_manager"]
    subprocess.run(warm, check=True, env=env, cwd=root / "cwd", timeout=120)
    before = snapshot(root)
    bad = ["--set", "optim.lr=.nan"] if failing else []
    done = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "train", *SETS, *bad, "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root / "cwd",
        env=env,
    )
    assert done.returncode == (2 if failing else 0), done.stderr[-2000:]
    after = snapshot(root, skip=run)
    assert after == before
    assert run.is_dir() != failing
