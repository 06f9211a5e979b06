"""Training on streamed WebDataset shards (``data.train.stream: true``): exact resume, and the
limits of resuming with loader workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import TINY_RUN, crash_at_step
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.trainer import train
from stream_shards import streamed_spec, write_shards


def streamed(urls: str, *extra: str) -> list[str]:
    return [*TINY_RUN, streamed_spec(urls), *extra]


def losses(run_dir: Path) -> list[str]:
    with open(run_dir / "log.csv", newline="") as f:
        return [row["loss"] for row in csv.DictReader(f)]


def test_a_streamed_run_resumes_exactly_mid_epoch(tmp_path):
    # 60 records in batches of 16: an epoch is 3 batches, so step 4 starts the second epoch
    config = load_config(None, streamed(write_shards(tmp_path), "train.checkpoint_every=2"))
    train(config, tmp_path / "full")
    with crash_at_step(2):
        train(config, tmp_path / "resumed")
    train(config, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    state = json.loads((tmp_path / "full" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["data_positions"] == [{"epoch": 1, "batch": 3}]  # the second epoch's three batches


def test_resuming_a_streamed_run_with_loader_workers_is_refused_with_the_way_out(tmp_path):
    config = load_config(None, streamed(write_shards(tmp_path), "train.checkpoint_every=2"))
    with crash_at_step(2):
        train(config, tmp_path / "run")
    with_workers = load_config(
        None, streamed(str(tmp_path / "part-{0..5}.tar"), "train.checkpoint_every=2", "data.num_workers=2")
    )
    with pytest.raises(ConfigError, match="resume with --set data.num_workers=0"):
        train(with_workers, tmp_path / "run", resume=True)


def test_a_stream_too_small_for_the_batch_is_named(tmp_path):
    config = load_config(None, streamed(write_shards(tmp_path, shards=1, per_shard=8)))
    with pytest.raises(Exception, match="gave no full batch of 16 records"):
        train(config, tmp_path / "run")
