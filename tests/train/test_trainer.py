"""The Trainer end to end on a tiny shapes run: files, exact resume, GradCache, failures."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, crash_at_step
from contrastkit.data import DataError
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.setup import learning_rate
from contrastkit.train.trainer import Trainer, TrainingError, train

RUN_FILES = ("config.yaml", "log.csv", "metrics.json", "report.html", "checkpoints")


def losses(run_dir) -> list[str]:
    with open(run_dir / "log.csv", newline="") as f:
        return [row["loss"] for row in csv.DictReader(f)]


def test_a_run_writes_every_file_and_flat_metrics(tmp_path):
    metrics = train(load_config(None, TINY_RUN), tmp_path)
    for name in RUN_FILES:
        assert (tmp_path / name).exists(), name
    for name in ("similarity.npy", "examples.json", "thumbnails.npy"):
        assert (tmp_path / "eval" / name).is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("retrieval/i2t_R@1", "retrieval/t2i_R@1", "zeroshot/top1", "geometry/modality_gap"):
        assert 0.0 <= saved[key] <= 2.0, key
    assert saved["train/steps"] == 6
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-000003", "step-000006"]
    assert len(losses(tmp_path)) == 6


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    config = load_config(None, [*TINY_RUN, "model.towers.text.dropout=0.1"])
    train(config, tmp_path / "full")

    with crash_at_step(3):
        train(config, tmp_path / "resumed")
    assert len(losses(tmp_path / "resumed")) == 3
    train(config, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")


def test_gradcache_micro_batches_train_like_the_full_batch(tmp_path):
    train(load_config(None, TINY_RUN), tmp_path / "full")
    train(load_config(None, [*TINY_RUN, "train.micro_batch_size=5"]), tmp_path / "cached")
    full, cached = losses(tmp_path / "full"), losses(tmp_path / "cached")
    assert [float(v) for v in cached] == pytest.approx([float(v) for v in full], abs=1e-4)


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(load_config(None, TINY_RUN), tmp_path)
    objective = trainer.objective
    trainer.objective = lambda reps, batch: (
        objective(reps, batch) * (float("nan") if trainer.step == 4 else 1.0)
    )
    with pytest.raises(TrainingError, match=r"step 5: the loss is nan.*step-000003.*--resume"):
        trainer.fit()


def test_resume_without_a_checkpoint_or_past_the_end_is_explained(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        Trainer(load_config(None, TINY_RUN), tmp_path / "empty", resume=True)
    train(load_config(None, TINY_RUN), tmp_path / "done")
    with pytest.raises(TrainingError, match="already at step 6.*raise train.steps"):
        train(load_config(None, TINY_RUN), tmp_path / "done", resume=True)


def test_a_run_directory_is_never_overwritten_and_resume_keeps_its_config(tmp_path):
    train(load_config(None, [*TINY_RUN, "train.steps=3"]), tmp_path)
    with pytest.raises(TrainingError, match="already holds a run .*step-000003.*--resume"):
        Trainer(load_config(None, TINY_RUN), tmp_path)
    with pytest.raises(ConfigError, match=r"config differs .*optim.lr: 0.002 -> 0.1"):
        train(load_config(None, [*TINY_RUN, "optim.lr=0.1"]), tmp_path, resume=True)
    metrics = train(load_config(None, TINY_RUN), tmp_path, resume=True)  # steps may grow
    assert metrics["train/steps"] == 6


def _manifest_with_bad_images(folder, n_good: int, n_bad: int):
    images = folder / "images"
    images.mkdir(parents=True)
    rows = ["image\ttext"]
    for i in range(n_good):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (i * 7 % 255, 40, 200)).save(buffer, "PNG")
        (images / f"good{i}.png").write_bytes(buffer.getvalue())
        rows.append(f"images/good{i}.png\ta picture number {i}.")
    for i in range(n_bad):
        (images / f"bad{i}.png").write_bytes(b"not an image")
        rows.append(f"images/bad{i}.png\ta broken picture {i}.")
    (folder / "pairs.tsv").write_text("\n".join(rows) + "\n")
    return str(folder / "pairs.tsv")


def test_bad_records_are_skipped_counted_and_listed(tmp_path):
    manifest = _manifest_with_bad_images(tmp_path / "data", 60, 40)
    overrides = [
        *TINY_RUN,
        f"data.train={{manifest: {manifest}}}",
        "data.eval=null",
        "data.max_bad_fraction=0.5",
    ]
    train(load_config(None, overrides), tmp_path / "run")
    issues = (tmp_path / "run" / "data_issues.txt").read_text()
    assert "bad" in issues.lower() and "png" in issues


def test_too_many_bad_records_stop_the_run_with_examples(tmp_path):
    manifest = _manifest_with_bad_images(tmp_path / "data", 700, 400)
    overrides = [*TINY_RUN, "train.steps=80", f"data.train={{manifest: {manifest}}}", "data.eval=null"]
    with pytest.raises(DataError, match=r"bad\d*\.png.*data.max_bad_fraction"):
        train(load_config(None, overrides), tmp_path / "run")


def test_bf16_autocast_trains(tmp_path):
    metrics = train(load_config(None, [*TINY_RUN, "train.precision=bf16", "train.steps=2"]), tmp_path)
    assert metrics["train/steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.name=rank_n_contrast"], "loss.name: 'rank_n_contrast' is not a training objective"),
        (["loss.name=margin_mse"], "loss: margin_mse and loss.guide train a retriever on mined rows"),
        (["loss.options={temprature: 0.1}"], "loss.options.temprature: not an option of clip"),
        (["loss.name=siglip"], "model.init_bias: siglip needs a learnable bias"),
        (["train.precision=fp16"], "fp16 needs a CUDA device"),
        (["model.towers={series: {type: series_cnn, in_channels: 3}}"], "model.towers: modalities"),
        (["data.train={name: nope}"], "data.train: get_source: unknown data set 'nope'"),
        (["train.batch_size=500"], "train.batch_size|data.sampler"),
        (["data.views=2"], "data.views: 2 views need an image-only model and data.augment: true"),
    ],
)
def test_bad_configs_fail_early_naming_the_key(tmp_path, overrides, message):
    with pytest.raises((ConfigError, TrainingError), match=message):
        Trainer(load_config(None, [*TINY_RUN, *overrides]), tmp_path)


def test_siglip_and_supcon_objectives_train(tmp_path):
    siglip = [
        *TINY_RUN,
        "loss.name=siglip",
        "model.init_bias=-10.0",
        "model.init_temperature=0.1",
        "train.steps=2",
    ]
    assert train(load_config(None, siglip), tmp_path / "siglip")["train/steps"] == 2
    supcon = [
        *TINY_RUN,
        "model.towers={image: {type: cnn, width: 8, depth: 2}}",
        "data.views=2",
        "data.augment=true",
        "loss.name=supcon",
        "data.sampler=class_balanced",
        "data.classes_per_batch=4",
        "data.samples_per_class=4",
        "train.steps=2",
    ]
    metrics = train(load_config(None, supcon), tmp_path / "supcon")
    assert 0.0 <= metrics["probe/knn_top1"] <= 1.0 and "probe/linear_top1" in metrics


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = load_config(
        None, ["optim.lr=1.0", "optim.warmup_steps=4", "train.steps=20", "optim.min_lr_ratio=0.1"]
    )
    rates = [learning_rate(config, s) for s in range(20)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))
    assert rates[-1] >= 0.1 and learning_rate(config, 20) == pytest.approx(0.1)


def test_no_weight_decay_on_scale_norms_and_biases(tmp_path):
    trainer = Trainer(load_config(None, TINY_RUN), tmp_path)
    groups = {g.get("name", i): g for i, g in enumerate(trainer.optimizer.param_groups)}
    no_decay = [g for g in groups.values() if g["weight_decay"] == 0.0]
    assert no_decay, "a group without weight decay"
    no_decay_ids = {id(p) for g in no_decay for p in g["params"]}
    assert id(trainer.model.logit_scale.log_scale) in no_decay_ids
    for name, p in trainer.model.named_parameters():
        if p.dim() == 1:
            assert id(p) in no_decay_ids, name
    assert torch.is_tensor(trainer.model.scale())
