"""Hostile checkpoints: truncated, bit-flipped, structurally wrong and pickle-bearing files, given to
``contrastkit eval`` and ``contrastkit train --resume``. Each is refused with one line naming the
file; nothing is ever unpickled (a pickle that would run code on load does not run)."""

from __future__ import annotations

import ast
import json
import os
import pickle
from pathlib import Path

import pytest
from hostile_cli import one_line_error

from conftest import TINY_RUN
from contrastkit.cli import main
from contrastkit.train.checkpoint import CheckpointError, load_checkpoint

SETS = [arg for item in TINY_RUN for arg in ("--set", item)]
SRC = Path(__file__).resolve().parents[2] / "src" / "contrastkit"


class _RunsCodeOnLoad:
    """Unpickling this creates the file ``marker``: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-ckpt") / "run"
    assert main(["train", *SETS, "--set", "train.steps=3", "--out", str(out)]) == 0
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _newest(run: Path) -> Path:
    return sorted((run / "checkpoints").iterdir())[-1]


def _flip_a_byte_in_the_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated_weights": (
        lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:64]),
        "corrupt or truncated",
    ),
    "bit_flip_in_weights": (lambda c: _flip_a_byte_in_the_tensor_data(c / "model.safetensors"), "checksum"),
    "bit_flip_in_optimizer": (
        lambda c: _flip_a_byte_in_the_tensor_data(c / "optimizer.safetensors"),
        "checksum",
    ),
    "huge_header_length": (
        lambda c: (c / "model.safetensors").write_bytes(
            (2**62).to_bytes(8, "little") + (c / "model.safetensors").read_bytes()[8:]
        ),
        "corrupt or truncated",
    ),
    "state_is_a_list": (lambda c: (c / "state.json").write_text("[1, 2, 3]"), "state.json"),
    "state_without_config": (
        lambda c: (c / "state.json").write_text(
            json.dumps({k: v for k, v in json.loads((c / "state.json").read_text()).items() if k != "config"})
        ),
        "state.json",
    ),
    "state_with_a_broken_config": (
        lambda c: (c / "state.json").write_text(
            json.dumps({**json.loads((c / "state.json").read_text()), "config": {"train": {"steps": "x"}}})
        ),
        "train.steps",
    ),
    "empty_files": (
        lambda c: [(c / n).write_bytes(b"") for n in ("model.safetensors", "state.json")],
        "corrupt",
    ),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_for_eval_and_resume(name, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():  # every kept checkpoint is damaged
        DAMAGE[name][0](checkpoint)
    message = DAMAGE[name][1]
    err = one_line_error(["eval", str(run), "--data", "shapes", "--max-records", "8"], capsys)
    assert message in err and "checkpoint" in err
    err = one_line_error(["train", "--resume", "--out", str(run), "--set", "train.steps=4"], capsys)
    assert message in err


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_runs(trained, tmp_path, capsys):
    import torch

    run = _copy(trained, tmp_path)
    marker = tmp_path / "UNPICKLED"
    checkpoint = _newest(run)
    torch.save({"weights": _RunsCodeOnLoad(marker)}, checkpoint / "model.safetensors")
    assert "corrupt or truncated" in one_line_error(["eval", str(run), "--data", "shapes"], capsys)
    one_line_error(["train", "--resume", "--out", str(run), "--set", "train.steps=4"], capsys)
    with pytest.raises(CheckpointError):
        load_checkpoint(checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["truncated_weights", "huge_header_length", "empty_files"])
def test_a_damaged_file_without_checksums_is_refused_by_the_safetensors_reader(
    name, trained, tmp_path, capsys
):
    """The checksums catch every damage above first; a checkpoint written before them has none, so
    the safetensors reader's own refusal (never an unpickling fallback) must give the one line."""
    run = _copy(trained, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():
        DAMAGE[name][0](checkpoint)
        state = checkpoint / "state.json"
        if state.stat().st_size:
            state.write_text(
                json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "checksums"})
            )
    err = one_line_error(["eval", str(run), "--data", "shapes", "--max-records", "8"], capsys)
    assert DAMAGE[name][1] in err and "SHA-256" not in err


def test_a_pickle_without_checksums_is_refused_by_the_safetensors_reader(trained, tmp_path):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "UNPICKLED"
    checkpoint = _newest(run)
    torch = pytest.importorskip("torch")
    torch.save({"weights": _RunsCodeOnLoad(marker)}, checkpoint / "model.safetensors")
    state = json.loads((checkpoint / "state.json").read_text())
    del state["checksums"]
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint(checkpoint)
    assert "SHA-256" not in str(err.value) and not marker.exists()


def test_a_pickle_file_given_as_the_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_RunsCodeOnLoad(marker)))
    assert "no checkpoint at" in one_line_error(["eval", str(path), "--data", "shapes"], capsys)
    assert not marker.exists()


def test_the_library_never_unpickles():
    """No ``pickle.load(s)``/``torch.load`` without ``weights_only=True`` anywhere in the package."""
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            name = f"{owner}.{node.func.attr}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name in {"pickle.load", "pickle.loads", "dill.load", "cloudpickle.load"}:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
            if name == "torch.load":
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    offenders.append(
                        f"{path.relative_to(SRC)}:{node.lineno} torch.load without weights_only=True"
                    )
            if name in {"np.load", "numpy.load"}:
                allowed = keywords.get("allow_pickle")
                if not (isinstance(allowed, ast.Constant) and allowed.value is False):
                    offenders.append(
                        f"{path.relative_to(SRC)}:{node.lineno} np.load without allow_pickle=False"
                    )
    assert offenders == []


def test_checksums_are_recorded_and_a_checkpoint_from_before_them_still_loads(trained, tmp_path):
    run = _copy(trained, tmp_path)
    checkpoint = _newest(run)
    state = json.loads((checkpoint / "state.json").read_text())
    assert set(state["checksums"]) == {"model.safetensors", "optimizer.safetensors"}
    del state["checksums"]
    (checkpoint / "state.json").write_text(json.dumps(state))
    assert load_checkpoint(checkpoint)["state"]["step"] == 3
