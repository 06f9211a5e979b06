"""``loss.name: sigrot`` / ``sigrot_hybrid`` from a config: teacher banks indexed by record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_RUN
from contrastkit.data import get_source
from contrastkit.losses import sigrot_hybrid_loss, sigrot_loss
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.objective import build_objective
from contrastkit.train.setup import build_run_model
from contrastkit.train.trainer import train

RECORDS = 96  # TINY_RUN's data.train.n


@pytest.fixture
def teacher(tmp_path):
    g = np.random.default_rng(0)
    paths = {}
    for key in ("image", "text"):
        bank = g.standard_normal((RECORDS, 8)).astype(np.float32)
        paths[key] = tmp_path / f"{key}.npy"
        np.save(paths[key], bank / np.linalg.norm(bank, axis=1, keepdims=True))
    return paths


def _overrides(teacher, *extra):
    return [*TINY_RUN, f"loss.teacher={{image: {teacher['image']}, text: {teacher['text']}}}", *extra]


@pytest.mark.parametrize(
    "extra",
    [
        ["loss.name=sigrot_hybrid"],
        ["loss.name=sigrot"],
        ["loss.name=sigrot_hybrid", "loss.options={base: siglip}", "model.init_bias=-10"],
    ],
)
def test_a_teacher_guided_run_trains(tmp_path, teacher, extra):
    config = load_config(None, _overrides(teacher, "train.steps=2", *extra))
    assert train(config, tmp_path / "run")["train/steps"] == 2


def test_the_objective_picks_the_teacher_rows_of_the_batch(teacher):
    config = load_config(None, _overrides(teacher, "loss.name=sigrot_hybrid"))
    model, _ = build_run_model(config, get_source("shapes", "train", n=32), None)
    objective = build_objective(config, model)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1) for _ in range(2))
    index = torch.tensor([5, 0, 17, 3, 95, 40])
    got = objective({"image": x, "text": y}, {"index": index})
    u, v = (torch.from_numpy(np.load(teacher[k]))[index] for k in ("image", "text"))
    torch.testing.assert_close(got, sigrot_hybrid_loss(x, y, model.scale(), u, v))
    config = load_config(None, _overrides(teacher, "loss.name=sigrot"))
    torch.testing.assert_close(
        build_objective(config, model)({"image": x, "text": y}, {"index": index}), sigrot_loss(x, y, u, v)
    )


def test_a_missing_or_bad_teacher_is_named(tmp_path, teacher):
    model, _ = build_run_model(load_config(None, TINY_RUN), get_source("shapes", "train", n=32), None)
    with pytest.raises(ConfigError, match="loss.teacher: sigrot needs frozen teacher embeddings"):
        build_objective(load_config(None, [*TINY_RUN, "loss.name=sigrot"]), model)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    bad = {"image": tmp_path / "bad.npy", "text": teacher["text"]}
    with pytest.raises(ConfigError, match="loss.teacher.image: cannot read"):
        build_objective(load_config(None, _overrides(bad, "loss.name=sigrot")), model)
    with pytest.raises(ConfigError, match="loss.teacher: expected"):
        load_config(None, [*TINY_RUN, "loss.teacher={image: a.npy}"])
