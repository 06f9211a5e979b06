"""Checkpoints as safetensors (weights, optimizer tensors, RNG) plus JSON (everything else).

A checkpoint is a folder ``checkpoints/step-000300/`` with ``model.safetensors``,
``optimizer.safetensors`` and ``state.json`` (step, resolved config, optimizer hyper-parameters,
Python/NumPy RNG, data position, extras, and the SHA-256 of each tensor file). It is written
into a hidden temporary folder and renamed into place, so a crash never leaves a half-written
checkpoint under its final name; a damaged file is found by its checksum when loaded; nothing is
ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contrastkit.errors import ContrastkitError
from contrastkit.train.config import Config, ConfigError, config_from_dict

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
PREFIX = "step-"


class CheckpointError(ContrastkitError, ValueError):
    """A checkpoint that is missing, truncated or does not fit the model; the message names it."""


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU, CUDA) generator states as tensors and the Python/NumPy ones as JSON."""
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.torch_cuda.{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    plain = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.torch_cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in plain["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives: ``run_dir/checkpoints/step-NNNNNN``."""
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
    files: dict[str, bytes] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically and keep only the newest ``keep``.

    ``state`` is JSON-serialisable (config, data position, scaler, extras); the step, the optimizer
    hyper-parameters and the RNG states are added here. ``files`` (name -> bytes, e.g. the
    tokenizer) are written into the checkpoint before it is renamed into place; ``tensors`` (e.g.
    other ranks' RNG states, ``rng.*`` names come back in ``load_checkpoint``'s ``"rng"``, the
    others in its ``"tensors"``; ``state.*`` names are the optimizer's) are stored beside the
    optimizer's.
    """
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_files(tmp, model, optimizer, state, step, files, tensors)
    except (OSError, SafetensorError) as err:  # disk full, quota: the earlier checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(run_dir)]
        raise CheckpointError(
            f"could not write checkpoint {final} ({err}). The earlier checkpoints are intact "
            f"({', '.join(kept) or 'none yet'}); free space and continue with --resume."
        ) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_folder(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(
    tmp: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    step: int,
    files: dict[str, bytes] | None,
    tensors: dict[str, torch.Tensor] | None,
) -> None:
    """Every file of a checkpoint into the folder ``tmp``, flushed to disk."""
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, tmp / MODEL_FILE)
    optim_tensors, optim_plain = _optimizer_tensors(optimizer)
    rng_tensors, rng_plain = rng_state()
    extra = {k: v.detach().contiguous().cpu() for k, v in (tensors or {}).items()}
    save_file({**optim_tensors, **rng_tensors, **extra}, tmp / OPTIMIZER_FILE)
    checksums = {name: _sha256(tmp / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}
    payload = {**state, "step": step, "optimizer": optim_plain, "rng": rng_plain, "checksums": checksums}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    for name, content in (files or {}).items():
        (tmp / name).write_bytes(content)
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_incomplete(run_dir: str | Path) -> list[Path]:
    """Delete the temporary folders of checkpoints whose writer died before the final rename;
    returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    stale = sorted(root.glob(f".tmp-{PREFIX}*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest (lowest step) first; temporary folders are ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(
        (p for p in found if p.name[len(PREFIX) :].isdigit()), key=lambda p: int(p.name[len(PREFIX) :])
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a run directory (its newest) or a ``checkpoints/`` folder."""
    path = Path(path)
    if (path / STATE_FILE).is_file() or (path / MODEL_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found and path.name == "checkpoints":
        found = list_checkpoints(path.parent)
    if not found:
        raise CheckpointError(
            f"no checkpoint at {path}: expected a checkpoint folder (with {MODEL_FILE} and {STATE_FILE}) "
            f"or a run directory with checkpoints/{PREFIX}NNNNNN inside. Train one with `contrastkit train`."
        )
    return found[-1]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint: ``{"path", "model": weights, "optimizer": state dict or None, "rng",
    "tensors": the other ``tensors`` given to ``save_checkpoint``, "state": the JSON payload}``.
    Every failure names the file and what to do."""
    path = resolve_checkpoint(path)
    way_out = (
        f"Evaluate an earlier checkpoint (they are kept under {path.parent}), or delete {path.name} "
        f"there to resume from the one before it."
    )
    try:
        payload = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {STATE_FILE}; it is incomplete. {way_out}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {path}/{STATE_FILE} is corrupt or truncated ({err}). {way_out}"
        ) from None
    _check_payload(path, payload, way_out)
    tensors = {}
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}; it is incomplete. {way_out}")
        expected = payload.get("checksums", {}).get(name)
        if expected is not None and _sha256(file) != expected:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt or truncated (its SHA-256 checksum differs from the "
                f"one {STATE_FILE} recorded when it was written). {way_out}"
            )
        try:
            tensors[name] = load_file(file)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"checkpoint file {file} is corrupt or truncated ({err}). {way_out}"
            ) from None
    extra = tensors[OPTIMIZER_FILE]
    rng = {k: v for k, v in extra.items() if k.startswith("rng.")}
    optimizer = _optimizer_state(extra, payload["optimizer"]) if "optimizer" in payload else None
    others = {k: v for k, v in extra.items() if not k.startswith(("rng.", "state."))}
    return {
        "path": path,
        "model": tensors[MODEL_FILE],
        "optimizer": optimizer,
        "rng": rng,
        "tensors": others,
        "state": payload,
    }


def _check_payload(path: Path, payload: Any, way_out: str) -> None:
    """The fields ``save_checkpoint`` writes must be there with their types."""
    problem = None
    if not isinstance(payload, dict):
        problem = f"holds a JSON {type(payload).__name__}, not an object"
    elif isinstance(payload.get("step"), bool) or not isinstance(payload.get("step"), int):
        problem = f"has no integer 'step' (got {payload.get('step')!r})"
    else:
        for key in ("optimizer", "rng", "checksums"):
            if key in payload and not isinstance(payload[key], dict):
                problem = f"has a {key!r} that is not an object"
    if problem:
        raise CheckpointError(f"checkpoint {path}/{STATE_FILE} {problem}; it is damaged. {way_out}")


def checkpoint_config(checkpoint: dict[str, Any]) -> Config:
    """The validated ``Config`` a checkpoint was trained with; a missing or no longer valid config
    raises ``CheckpointError`` naming the checkpoint."""
    path, saved = checkpoint["path"], checkpoint["state"].get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"checkpoint {path}/{STATE_FILE} holds no training config; it was not written by "
            f"`contrastkit train` or is damaged."
        )
    try:
        return config_from_dict(saved)
    except ConfigError as err:
        raise CheckpointError(
            f"checkpoint {path}/{STATE_FILE} holds a config that does not validate: {err}"
        ) from None


# Keys a resumed run may change: they do not alter what the finished steps computed.
RESUMABLE_CHANGES = (
    "loss.distributed",
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.tensorboard",
    "data.num_workers",
    "data.eval",
    "data.eval_max_records",
    "eval.",
)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "model":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(checkpoint: dict[str, Any], given: Config) -> None:
    """Raise if the ``given`` config changes a key of the checkpoint's config outside
    ``RESUMABLE_CHANGES`` (both compared in their validated, current form)."""
    path = checkpoint["path"]
    old, new = _flatten(checkpoint_config(checkpoint).to_dict()), _flatten(given.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    fixed = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
    if fixed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fixed[:4])
        raise ConfigError(
            f"--resume: the config differs from the one {path} was trained with ({details}). Resume with "
            f"the run's own config (omit CONFIG to use its config.yaml) and change only "
            f"{', '.join(RESUMABLE_CHANGES)}."
        )


def restore(
    checkpoint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> None:
    """Load weights (strictly: every key must match), optimizer state and RNG states."""
    missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint['path']} does not fit the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Was it written with another model config?"
        )
    if optimizer is not None and checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if restore_rng:
        set_rng_state(checkpoint["rng"], checkpoint["state"]["rng"])


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
