"""Each example config trains for two steps and evaluates (a smoke test; the real runs are in
docs/results.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_DATA
from contrastkit.train.config import load_config
from contrastkit.train.trainer import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["train.steps=2", "train.progress=false", "data.eval_max_records=24", "train.log_every=1"]


def _needs(path: Path) -> str | None:
    text = path.read_text()
    if "shared/data" in text and not SHARED_DATA.is_dir():
        return f"{path.name} reads {SHARED_DATA}, which is absent"
    return None


@pytest.mark.parametrize("name", ["digits-clip", "cifar10-simclr", "cifar10-supcon", "flickr8k-clip"])
def test_example_config_trains_two_steps(name, tmp_path, monkeypatch):
    path = CONFIGS / f"{name}.yaml"
    if reason := _needs(path):
        pytest.skip(reason)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = {"cifar10": SHARED_DATA / "cifar10", "flickr8k": SHARED_DATA / "flickr8k"}
    overrides = [*SMALL]
    for key, folder in root.items():
        if key in name:
            overrides += [f"data.train.root={folder}", f"data.eval.root={folder}"]
    if "cifar10" in name:
        overrides += ["data.num_workers=0"]
    metrics = train(load_config(path, overrides), tmp_path)
    assert metrics["train/steps"] == 2
    assert any(key.startswith(("retrieval/", "probe/")) for key in metrics)


def test_tensorboard_events_are_written(tmp_path):
    from conftest import TINY_RUN

    train(load_config(None, [*TINY_RUN, "train.tensorboard=true", "train.steps=2"]), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
