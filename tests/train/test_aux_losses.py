"""The trainer's ``aux_losses`` hook: terms that share the encoders, trained, logged, checkpointed."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from conftest import TINY_RUN, crash_at_step
from contrastkit.losses import clip_loss
from contrastkit.train.config import ConfigError, load_config
from contrastkit.train.trainer import Trainer, train


def log_rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


class ImageToText(nn.Module):
    """A small trainable head: predict the text embedding from the image embedding (MSE)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, embeddings: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        return (self.linear(embeddings["image"]) - embeddings["text"]).pow(2).mean()


def _same_clip_loss(model_of: dict):
    """The run's own CLIP loss again, as an auxiliary term (model_of["m"] is set after init)."""

    def loss(embeddings, batch):
        return clip_loss(embeddings["image"], embeddings["text"], model_of["m"].scale())

    return loss


def _trainer_with_clip_twice(run_dir, weight: float, extra: list[str]) -> Trainer:
    holder: dict = {}
    config = load_config(None, [*TINY_RUN, "optim.grad_clip=null", *extra])
    trainer = Trainer(config, run_dir, aux_losses={"again": (weight, _same_clip_loss(holder))})
    holder["m"] = trainer.model
    return trainer


@pytest.mark.parametrize("extra", [[], ["train.micro_batch_size=5"]], ids=["plain", "gradcache"])
def test_the_term_is_added_with_its_weight(tmp_path, extra):
    # the run's own loss L as the auxiliary term, weight 0.5: the step minimises 1.5 L
    config = load_config(None, [*TINY_RUN, "optim.grad_clip=null", *extra])
    plain = Trainer(config, tmp_path / "plain")
    doubled = _trainer_with_clip_twice(tmp_path / "aux", 0.5, extra)
    values = []
    for trainer in (plain, doubled):  # one step from the same weights and batch, gradients kept
        trainer.optimizer.step = lambda: None
        values.append(trainer.train_step()[0])
    for a, b in zip(doubled.model.parameters(), plain.model.parameters(), strict=True):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, 1.5 * b.grad, rtol=1e-4, atol=1e-6)
    plain_loss, doubled_loss = values
    assert plain_loss > 0
    # the term is the run's own loss L (logged unweighted), and the step's total is 1.5 L
    assert doubled.aux_values["again"] == pytest.approx(plain_loss, rel=1e-5)
    assert doubled_loss == pytest.approx(1.5 * plain_loss, rel=1e-5)


def test_log_rows_carry_the_total_and_each_term(tmp_path):
    train(load_config(None, TINY_RUN), tmp_path / "plain")
    trainer = _trainer_with_clip_twice(tmp_path / "aux", 0.5, [])
    trainer.fit()
    rows, base = log_rows(tmp_path / "aux"), log_rows(tmp_path / "plain")
    assert float(rows[0]["loss"]) == pytest.approx(1.5 * float(base[0]["loss"]), rel=1e-5)
    assert float(rows[0]["aux_again"]) == pytest.approx(float(base[0]["loss"]), rel=1e-5)
    assert all(float(r["loss"]) == pytest.approx(1.5 * float(r["aux_again"]), rel=1e-4) for r in rows)


def test_a_module_is_trained_checkpointed_and_resumed_exactly(tmp_path):
    config = load_config(None, TINY_RUN)
    torch.manual_seed(0)
    full = Trainer(config, tmp_path / "full", aux_losses={"predict": (0.3, ImageToText())})
    start = full.aux.modules["predict"].linear.weight.detach().clone()
    full.fit()
    trained = full.aux.modules["predict"].linear.weight.detach()
    assert not torch.equal(start, trained)  # its parameters are in the optimizer
    assert {g["name"] for g in full.optimizer.param_groups} >= {"aux_decay", "aux_no_decay"}

    torch.manual_seed(0)
    with crash_at_step(3):
        Trainer(config, tmp_path / "resumed", aux_losses={"predict": (0.3, ImageToText())}).fit()
    torch.manual_seed(1)  # a differently initialised head: the checkpoint must overwrite it
    resumed = Trainer(config, tmp_path / "resumed", resume=True, aux_losses={"predict": (0.3, ImageToText())})
    resumed.fit()
    torch.testing.assert_close(resumed.aux.modules["predict"].linear.weight, trained, rtol=0, atol=0)
    assert log_rows(tmp_path / "resumed") == [
        {**r, "samples_per_s": r2["samples_per_s"], "elapsed_s": r2["elapsed_s"]}
        for r, r2 in zip(log_rows(tmp_path / "full"), log_rows(tmp_path / "resumed"), strict=True)
    ]

    with pytest.raises(ConfigError, match=r"trained with auxiliary losses \['predict'\]"):
        Trainer(config, tmp_path / "resumed", resume=True).fit()


@pytest.mark.parametrize("extra", [[], ["train.micro_batch_size=5"]], ids=["plain", "gradcache"])
def test_a_module_trains_under_bf16_autocast(tmp_path, extra):
    # the encoders run under bf16 autocast but the losses outside it: a float32 head must get
    # float32 embeddings (the library's losses upcast half inputs the same way), not a dtype error
    head = ImageToText()
    trainer = Trainer(
        load_config(None, [*TINY_RUN, "train.precision=bf16", *extra]),
        tmp_path,
        aux_losses={"predict": (0.3, head)},
    )
    value, _ = trainer.train_step()
    assert torch.isfinite(torch.tensor(value)) and trainer.aux.last["predict"] > 0
    assert head.linear.weight.grad is not None and torch.isfinite(head.linear.weight.grad).all()


def test_train_passes_the_hook_through(tmp_path):
    metrics = train(load_config(None, TINY_RUN), tmp_path, aux_losses={"predict": (0.1, ImageToText())})
    assert metrics["train/steps"] == 6
    assert all(float(r["aux_predict"]) > 0 for r in log_rows(tmp_path))


@pytest.mark.parametrize(
    "aux, message",
    [
        ({"not a name": (1.0, ImageToText())}, "must be an identifier"),
        ({"x": ImageToText()}, r"expected \(weight, loss\)"),
        ({"x": (-1.0, ImageToText())}, "finite number >= 0"),
        ({"x": (float("nan"), ImageToText())}, "finite number >= 0"),
        ({"x": (1.0, "not callable")}, r"expected \(weight, loss\)"),
    ],
)
def test_bad_hooks_are_named(tmp_path, aux, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config(None, TINY_RUN), tmp_path, aux_losses=aux)


def test_a_loss_that_is_not_a_scalar_is_named(tmp_path):
    trainer = Trainer(
        load_config(None, TINY_RUN), tmp_path, aux_losses={"rows": (1.0, lambda e, b: e["image"].sum(1))}
    )
    with pytest.raises(ConfigError, match=r"aux_losses\['rows'\]: the loss must return a 0-d float tensor"):
        trainer.train_step()
