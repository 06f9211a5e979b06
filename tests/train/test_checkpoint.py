"""Checkpoints: a safetensors + JSON round trip, atomic writes, keep-last-K, clear failures."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore,
    save_checkpoint,
)


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_every_rng(tmp_path):
    model, optimizer = model_and_optimizer()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 7, model, optimizer, {"data_position": {"epoch": 1, "batch": 4}})
    want = (random.random(), np.random.rand(), torch.rand(1))

    fresh, fresh_optimizer = model_and_optimizer(seed=9)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["path"] == path and checkpoint["state"]["step"] == 7
    assert checkpoint["state"]["data_position"] == {"epoch": 1, "batch": 4}
    restore(checkpoint, fresh, fresh_optimizer)
    assert (random.random(), np.random.rand(), torch.rand(1)) == want
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the next optimiser step is identical
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):
        torch.manual_seed(0)
        m(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_keeps_only_the_newest_and_leaves_no_temporary_folders(tmp_path):
    model, optimizer = model_and_optimizer()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, optimizer, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert resolve_checkpoint(tmp_path).name == "step-000004"
    assert resolve_checkpoint(tmp_path / "checkpoints").name == "step-000004"


def test_checkpoints_are_ordered_by_step_and_carry_extra_files(tmp_path):
    model, optimizer = model_and_optimizer()
    for step in (999_999, 1_000_000):
        save_checkpoint(tmp_path, step, model, optimizer, {}, keep=1, files={"tokenizer.json": b"{}"})
    (only,) = list_checkpoints(tmp_path)
    assert only.name == "step-1000000" and (only / "tokenizer.json").read_bytes() == b"{}"


def test_nothing_is_pickled(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model, optimizer, {})
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    json.loads((path / "state.json").read_text())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]),
            "corrupt or truncated",
        ),
        (lambda p: (p / "optimizer.safetensors").unlink(), "has no optimizer.safetensors"),
        (lambda p: (p / "state.json").write_text('{"step": 3,'), "state.json is corrupt or truncated"),
        (lambda p: (p / "state.json").unlink(), "has no state.json"),
    ],
)
def test_damaged_checkpoints_are_named(tmp_path, damage, message):
    model, optimizer = model_and_optimizer()
    path = save_checkpoint(tmp_path, 3, model, optimizer, {})
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_checkpoint_and_wrong_model_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*contrastkit train"):
        load_checkpoint(tmp_path)
    model, optimizer = model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    other = nn.Linear(4, 2)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        restore(load_checkpoint(tmp_path), other)
